"""LoRA Lab: a ComfyUI node pack to load, combine, train and debug LoRAs.

Registration only: the node list and the front-end folder. No work happens at import time.
"""

from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

WEB_DIRECTORY = "./web"

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
