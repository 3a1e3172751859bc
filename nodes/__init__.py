"""ComfyUI nodes of LoRA Lab: thin adapters between ComfyUI objects and ``lora_ops``."""

from .loader import NODE_CLASS_MAPPINGS as _LOADER, NODE_DISPLAY_NAME_MAPPINGS as _LOADER_NAMES

NODE_CLASS_MAPPINGS = {**_LOADER}
NODE_DISPLAY_NAME_MAPPINGS = {**_LOADER_NAMES}
