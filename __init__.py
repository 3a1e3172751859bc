"""LoRA Lab: a ComfyUI node pack to load, combine, train and debug LoRAs.

Registration only: the node list, the front-end folder, and the HTTP routes of the page (``nodes.routes``,
``nodes.page_routes``), added to the running server by the two calls below. No other work at import time.
"""

from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS, page_routes, routes

# The front end's HTTP routes, added to the running server (nothing happens when there is none).
routes.register_routes()
page_routes.register_routes()

WEB_DIRECTORY = "./web"

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
