"""HTTP route for what the page shows about a LoRA file: its trigger words and the blocks it touches.

``GET /lora_lab/lora_info?name=x.safetensors`` answers ``{"name", "triggers": [{"text", "source"}]}`` from the
file's header and the files next to it (cheap: what the loaders ask for to show trigger words);
``&blocks=1`` adds ``"family", "family_label", "blocks": {"IN04": {"targets": 16, "energy": 0.42}, ...},
"block_family"}``, which reads the whole file (what the block editor asks for):

- ``triggers``: the words the LoRA was trained to respond to, in the order users trust them: a sidecar file
  next to the LoRA (``<name>.civitai.info`` of Civitai Helper and ``<name>.metadata.json`` of LoRA Manager:
  ``trainedWords``; ``<name>.json`` of the A1111 web UI: ``activation text``), the file's own
  ``modelspec.trigger_phrase``, then the most frequent caption tags of ``ss_tag_frequency`` (source
  ``caption tags``), which for kohya-trained files start with the trigger word.
- ``blocks``: per block of the LoRA's own family (``lora_ops.inspection.file_block``), how many of its layers
  fall in it and the block's share of the LoRA's delta energy, ``||dW_block||_F / max_b ||dW_b||_F``, from the
  low-rank factors (``||s U D||_F^2 = s^2 sum((U^T U) * (D D^T))``, no full matrix formed); ``null`` for
  layers of other kinds, which count as touched without an energy.

The file is read once per content (``nodes.loader.cached_lora``); answers are remembered per file version
(path, size, modification time).
Errors answer ``{"error", "fix"}`` JSON like the other routes (``nodes.routes``).
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections import OrderedDict
from pathlib import Path

import folder_paths
from aiohttp import web

from ..lora_ops.families import family_label
from ..lora_ops.inspection import file_block, training_info
from ..lora_ops.safeio import read_safetensors_header
from .lora_files import cached_lora
from .routes import MAX_QUERY_CHARS, error_response, json_errors, prompt_server, run_off_loop

log = logging.getLogger(__name__)

ROUTE_LORA_INFO = "/lora_lab/lora_info"
MAX_TRIGGERS = 8
MAX_SIDECAR_BYTES = 4 * 1024 * 1024
_cache: OrderedDict[tuple[str, str], dict] = OrderedDict()
_CACHE_SIZE = 64


def _words(value) -> list[str]:
    """Trigger words from a sidecar value: a list of strings, or one comma-separated string."""
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        return []
    return [w.strip() for item in value if isinstance(item, str) for w in item.split(",") if w.strip()]


def _read_json(path: Path):
    try:
        if not path.is_file() or path.stat().st_size > MAX_SIDECAR_BYTES:
            return None
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        log.info("LoRA Lab: %s is not readable JSON; its trigger words are skipped", path.name)
        return None


def sidecar_triggers(lora_path: str | os.PathLike) -> list[dict]:
    """Trigger words from the files other tools keep next to a LoRA (see the module docstring)."""
    path = Path(lora_path)
    stem = path.with_suffix("")
    found: list[dict] = []
    civitai = _read_json(stem.with_name(stem.name + ".civitai.info"))
    if isinstance(civitai, dict):
        found += [{"text": w, "source": "Civitai"} for w in _words(civitai.get("trainedWords"))]
    manager = _read_json(stem.with_name(stem.name + ".metadata.json"))
    if isinstance(manager, dict):
        words = _words(manager.get("trainedWords"))
        if isinstance(manager.get("civitai"), dict):
            words += _words(manager["civitai"].get("trainedWords"))
        found += [{"text": w, "source": "LoRA Manager"} for w in words]
    webui = _read_json(stem.with_name(stem.name + ".json"))
    if isinstance(webui, dict):
        found += [{"text": w, "source": "activation text"} for w in _words(webui.get("activation text"))]
    return found


def trigger_words(lora_path, metadata: dict) -> list[dict]:
    """Sidecar words, then ``modelspec.trigger_phrase``, then the top caption tags; unique, at most 8."""
    found = sidecar_triggers(lora_path)
    found += [{"text": w, "source": "file metadata"} for w in _words(metadata.get("modelspec.trigger_phrase", ""))]
    found += [{"text": tag, "source": "caption tags"} for tag, _ in training_info(metadata).top_tags]
    out, seen = [], set()
    for item in found:
        key = item["text"].lower()
        if key not in seen:
            seen.add(key)
            out.append(item)
    return out[:MAX_TRIGGERS]


def _energy_sq(adapter) -> float | None:
    """``||dW||_F^2`` of a low-rank adapter from its factors; None for other kinds."""
    low_rank = getattr(adapter, "low_rank", None)
    lr = low_rank() if callable(low_rank) else None
    if lr is None or getattr(adapter, "magnitude", None) is not None:
        return None
    up, down, scale = lr
    u, d = up.float().reshape(up.shape[0], -1), down.float().reshape(down.shape[0], -1)
    value = float(((u.T @ u) * (d @ d.T)).sum()) * scale * scale
    return value if math.isfinite(value) else None


def touched_blocks(parsed, family: str | None) -> dict[str, dict]:
    """Per block: ``targets`` (layers of the file in it) and ``energy`` relative to the strongest block."""
    sums: dict[str, list] = {}
    for name, adapter in parsed.modules.items():
        slot = sums.setdefault(file_block(name, family), [0, 0.0, True])
        slot[0] += 1
        e = _energy_sq(adapter)
        if e is None:
            slot[2] = False
        else:
            slot[1] += e
    for name in parsed.bias_diffs:
        sums.setdefault(file_block(name, family), [0, 0.0, False])[0] += 1
    top = max((math.sqrt(s[1]) for s in sums.values() if s[2]), default=0.0)
    return {block: {"targets": n, "energy": (math.sqrt(e) / top if top > 0 else 0.0) if exact else None}
            for block, (n, e, exact) in sums.items()}


def lora_info(name: str, blocks: bool = False) -> dict:
    """The answer of :data:`ROUTE_LORA_INFO` for the LoRA ``name`` (see the module docstring)."""
    path = folder_paths.get_full_path("loras", name)
    if path is None:
        return {"name": name, "error": f"{name} is not in the loras folder", "triggers": [], "blocks": {}}
    stat = os.stat(path)
    key = (os.path.realpath(path), stat.st_size, stat.st_mtime_ns, blocks)
    if key in _cache:
        _cache.move_to_end(key)
        return _cache[key]
    if not blocks:
        info = {"name": name, "triggers": trigger_words(path, read_safetensors_header(path).metadata)}
    else:
        lora = cached_lora(path)
        family = lora.family.family
        info = {"name": name, "family": family, "family_label": family_label(family) if family else None,
                "triggers": trigger_words(path, dict(lora.file.metadata)), "block_family": family,
                "blocks": touched_blocks(lora.parsed, family)}
    _cache[key] = info
    while len(_cache) > _CACHE_SIZE:
        _cache.popitem(last=False)
    return info


@json_errors
async def get_lora_info(request: web.Request) -> web.Response:
    name = request.query.get("name", "")
    if not name or len(name) > MAX_QUERY_CHARS:
        return error_response(f"name is required (at most {MAX_QUERY_CHARS} characters).", "give a LoRA file's name.")
    return web.json_response(await run_off_loop(lora_info, name, request.query.get("blocks") == "1"))


def register_routes(server=None) -> bool:
    """Add the route to ``server`` (default: the running one) once; False when there is none."""
    server = server if server is not None else prompt_server()
    if server is None or getattr(server, "_lora_lab_page_routes", False):
        return False
    server.routes.get(ROUTE_LORA_INFO)(get_lora_info)
    server._lora_lab_page_routes = True
    return True
