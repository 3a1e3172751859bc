"""ComfyUI nodes of LoRA Lab: thin adapters between ComfyUI objects and ``lora_ops``."""

from . import bake, inspect, loader, merge, multi, stack, sweep, train

_FEATURES = (loader, multi, stack, merge, bake, inspect, sweep, train)

NODE_CLASS_MAPPINGS = {k: v for m in _FEATURES for k, v in m.NODE_CLASS_MAPPINGS.items()}
NODE_DISPLAY_NAME_MAPPINGS = {k: v for m in _FEATURES for k, v in m.NODE_DISPLAY_NAME_MAPPINGS.items()}
