"""Messages from a running node to the page, beyond ComfyUI's own: ``lora_lab.notice`` over the websocket.

ComfyUI reports a cancelled prompt as failed and nothing more; a node that saved something on the way out
(training's resumable checkpoint) says what and where with :func:`send`. The page (``web/notices.js``)
shows the text as a toast and on the node, and refreshes the LoRA lists when ``saved`` names files.
"""

from __future__ import annotations

import logging
import sys

log = logging.getLogger(__name__)

EVENT = "lora_lab.notice"


def executing_node_id() -> str | None:
    """The id of the node ComfyUI is running now (None outside a prompt)."""
    try:
        from comfy_execution.utils import get_executing_context
    except ImportError:
        return None
    context = get_executing_context()
    return None if context is None else str(context.node_id)


def send(kind: str, text: str, *, saved: list[str] | None = None, node: str | None = None) -> bool:
    """Send ``{kind, text, node, saved}`` to the page that queued the prompt; False when no server runs."""
    server = getattr(getattr(sys.modules.get("server"), "PromptServer", None), "instance", None)
    if server is None:
        return False
    payload = {"kind": kind, "text": text, "node": node or executing_node_id(), "saved": list(saved or [])}
    try:
        server.send_sync(EVENT, payload, getattr(server, "client_id", None))
    except Exception:
        log.exception("LoRA Lab: could not send a notice to the page")
        return False
    return True
