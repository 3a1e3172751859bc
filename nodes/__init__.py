"""ComfyUI nodes of LoRA Lab: thin adapters between ComfyUI objects and ``lora_ops``."""

from . import bake, loader

NODE_CLASS_MAPPINGS = {**loader.NODE_CLASS_MAPPINGS, **bake.NODE_CLASS_MAPPINGS}
NODE_DISPLAY_NAME_MAPPINGS = {**loader.NODE_DISPLAY_NAME_MAPPINGS, **bake.NODE_DISPLAY_NAME_MAPPINGS}
