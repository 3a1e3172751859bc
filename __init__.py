"""LoRA Lab: a ComfyUI node pack to load, combine, train and debug LoRAs.

Registration only: the node list, the front-end folder and its HTTP routes (nodes/routes.py). No work
happens at import time.
"""

from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS
from .nodes import page_routes as _page_routes  # noqa: F401 - the page's LoRA info route
from .nodes import routes as _routes  # noqa: F401 - adds the front end's HTTP routes to the running server

WEB_DIRECTORY = "./web"

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
