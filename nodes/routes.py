"""HTTP routes for the front end (``web/``): block lists and presets per family, and a model file's family.

The block-weight editor shows one slider per block of the connected model's family. The blocks, their
grouping, the presets (built-in and the user's) with their resolved per-block values and the vector
dialects all come from :mod:`lora_ops.blocks`, so the JavaScript never carries a copy of them.

- ``GET /lora_lab/blocks?family=sdxl``: the family's blocks in order, grouped (BASE, IN / MID / OUT for
  the UNet families; BASE, IN / OUT, DOUBLE, SINGLE for Flux; BASE, JOINT for SD3), its text encoders,
  its presets and vector dialects. Unknown family names resolve to ``general``, which has no fixed
  block list (``groups`` is empty).
- ``GET /lora_lab/family?kind=checkpoints&name=x.safetensors`` (``kind`` also ``diffusion_models``):
  the family of a model file, read from its safetensors header only (names and shapes, never the
  tensors): ComfyUI's own model detection first, then LoRA Lab's key rules for files ComfyUI does not
  recognise. ``{"family": null, "reason": ...}`` when it cannot tell.

Both answer ``{"error", "fix"}`` JSON for bad queries (400) and never HTML; ``/lora_lab/family`` answers
every file it finds with a family or a reason (never HTTP 500, never the file's bytes). Work is bounded
(queries up to 1024 characters, headers up to :data:`MAX_HEADER_BYTES`) and runs in worker threads, at
most :data:`MAX_CONCURRENT_WORK` at once, so the server's event loop never waits on a parse.

Routes are registered once, at import, on the running ``PromptServer``. Imported without a server
(in-process tests) the module registers nothing and imports nothing of the server.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import re
import sys
from pathlib import Path
from types import SimpleNamespace

import folder_paths
from aiohttp import web

from ..lora_ops.blocks import (
    ENCODER_NAMES,
    FAMILY_LABELS,
    BlockWeightsError,
    family_spec,
    list_presets,
    load_user_presets,
    normalize_family,
    parse_block_weights,
)
from ..lora_ops.errors import LoraLabError
from ..lora_ops.families import family_from_model_keys, family_key
from ..lora_ops.safeio import read_safetensors_header as read_safetensors_header_checked
from .lora_files import user_presets_path

log = logging.getLogger(__name__)

ROUTE_BLOCKS = "/lora_lab/blocks"
ROUTE_FAMILY = "/lora_lab/family"
MODEL_KINDS = ("checkpoints", "diffusion_models")
MAX_HEADER_BYTES = 16 * 1024 * 1024
"""A model header larger than this is not read (real checkpoints have headers of well under 1 MB)."""
MAX_QUERY_CHARS = 1024
MAX_CONCURRENT_WORK = 2
"""Requests whose work (file headers, presets) runs at once, in worker threads; more wait their turn."""


# --- blocks and presets ----------------------------------------------------------------------------

def _prefix(name: str) -> str:
    m = re.match(r"^([A-Z]+)\d+$", name)
    return m.group(1) if m else name


def block_groups(family: str) -> list[dict]:
    """The family's model blocks in slider groups, in block order (BASE first, alone)."""
    spec = family_spec(family, None)
    if not spec.closed:
        return []
    blocks = list(spec.blocks)
    groups: list[dict] = [{"name": "BASE", "blocks": ["BASE"]}]
    if spec.key == "flux":
        named = (("IN / OUT", lambda b: b in ("IN", "OUT")), ("DOUBLE", lambda b: _prefix(b) == "D"),
                 ("SINGLE", lambda b: _prefix(b) == "S"))
    elif spec.key == "sd3":
        named = (("JOINT", lambda b: _prefix(b) == "J"),)
    else:
        named = (("IN", lambda b: _prefix(b) == "IN"), ("MID", lambda b: _prefix(b) == "M"),
                 ("OUT", lambda b: _prefix(b) == "OUT"))
    for title, member in named:
        groups.append({"name": title, "blocks": [b for b in blocks if member(b)]})
    grouped = {b for g in groups for b in g["blocks"]}
    rest = [b for b in blocks if b not in grouped]
    if rest:
        groups.append({"name": "OTHER", "blocks": rest})
    return groups


def _resolved(text: str, family: str, user: dict[str, str], **kw) -> dict[str, float]:
    return parse_block_weights(text, family, user_presets=user, **kw).vector


def preset_entry(name: str, syntax: str, source: str, doc: str, family: str, user: dict[str, str]) -> dict:
    """A preset with the blocks it sets and their values; ``exact`` when those values are the whole story.

    A preset is not exact when it holds sub-block selectors, ``A``/``B`` (its values change with the
    inputs) or ``R``/``U`` (random): the editor then shows it but keeps the text as written.
    """
    weights = parse_block_weights(name, family, a=1.0, b=1.0, seed=0, user_presets=user)
    covered = [n for n in weights.vector if any(not r.selector and r.covers(n) for r in weights.rules)]
    values = {n: weights.vector[n] for n in covered}
    exact = (not weights.part_entries()
             and _resolved(name, family, user, a=2.0, b=3.0, seed=1) == weights.vector)
    return {"name": name, "syntax": syntax, "source": source, "doc": doc, "values": values, "exact": exact}


def blocks_payload(family: str | None, presets_path: Path | None = None) -> dict:
    """Everything the block-weight editor needs for ``family`` (see the module docstring)."""
    key = normalize_family(family)
    spec = family_spec(key, None)
    user: dict[str, str] = {}
    user_error = None
    if presets_path is not None:
        try:
            user = load_user_presets(presets_path)
        except LoraLabError as exc:
            user_error = str(exc)
    presets = []
    for info in list_presets(key, user):
        try:
            presets.append(preset_entry(info.name, info.syntax, info.source, info.doc, key, user))
        except BlockWeightsError as exc:  # a user preset that parses only with other inputs
            presets.append({"name": info.name, "syntax": info.syntax, "source": info.source, "doc": info.doc,
                            "values": {}, "exact": False, "error": str(exc)})
    dialects = {str(n): [list(entries) for entries in d.positions] for n, d in sorted(spec.dialects.items())}
    return {
        "family": key,
        "label": FAMILY_LABELS.get(key, "general rule"),
        "closed": spec.closed,
        "order": list(spec.order) if spec.closed else ["BASE", *spec.encoders],
        "encoders": [e for e in spec.encoders if e in ENCODER_NAMES],
        "groups": block_groups(key),
        "presets": presets,
        "dialects": dialects,
        "user_presets_path": str(presets_path) if presets_path is not None else None,
        "user_presets_error": user_error,
    }


# --- a model file's family -------------------------------------------------------------------------

def read_safetensors_header(path: str | os.PathLike) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape of a safetensors file, from its checked header only (``safeio``), capped at
    :data:`MAX_HEADER_BYTES`. Raises :class:`LoraFileError` for anything that is not a safetensors file."""
    header = read_safetensors_header_checked(path, max_header_bytes=MAX_HEADER_BYTES)
    return {name: info.shape for name, info in header.tensors.items()}


def _comfy_detection(shapes: dict[str, SimpleNamespace], kind: str) -> str | None:
    """Family by ComfyUI's own detection (``comfy.model_detection``), run on names and shapes only."""
    import comfy.model_detection as detection  # the host's module, imported only when asked

    if kind == "checkpoints":
        prefix = detection.unet_prefix_from_state_dict(shapes)
        config = detection.model_config_from_unet(shapes, prefix)
    else:
        prefix = detection.unet_prefix_from_state_dict(shapes)
        stripped = {k[len(prefix):]: v for k, v in shapes.items() if k.startswith(prefix)}
        config = detection.model_config_from_unet(stripped or shapes, "")
    if config is None:
        return None
    # the config class and its ancestors, as for a loaded model (bridge.model_lineage)
    return family_key([c.__name__ for c in type(config).__mro__ if c.__name__ not in ("BASE", "object")])


def model_file_family(path: str | os.PathLike, kind: str = "checkpoints") -> dict:
    """``{"family", "label", "evidence"}`` of a model file; ``family`` None with a ``reason`` if unknown.

    Never raises, and the reason never quotes the file's bytes (a non-safetensors file's first bytes read
    as a header length, its text read as JSON): only its name and what kind of problem it has.
    """
    name = Path(path).name
    if not name.lower().endswith((".safetensors", ".sft")):
        return {"family": None, "reason": f"{name} is not a safetensors file; only their headers are read"}
    try:
        shapes = read_safetensors_header(path)
    except LoraLabError as exc:
        log.info("LoRA Lab: family of %s: %s", name, exc)
        return {"family": None, "reason": f"cannot read the header of {name}: it is not a complete, well-formed "
                                          "safetensors file (or its header is over "
                                          f"{MAX_HEADER_BYTES // 2**20} MiB)"}
    except Exception as exc:  # noqa: BLE001 - a route answers with a reason, never a 500
        log.warning("LoRA Lab: reading the header of %s failed: %r", name, exc)
        return {"family": None, "reason": f"cannot read the header of {name}"}
    family = evidence = None
    try:
        family = _comfy_detection({k: SimpleNamespace(shape=s) for k, s in shapes.items()}, kind)
        evidence = "ComfyUI's model detection"
    except Exception as exc:  # noqa: BLE001 - detection code written for real tensors; fall back to key rules
        log.debug("ComfyUI detection failed on the header of %s: %s", name, exc)
        family = None
    if family is None:
        try:
            family = family_from_model_keys(shapes)
        except Exception as exc:  # noqa: BLE001 - a route answers with a reason, never a 500
            log.warning("LoRA Lab: key rules failed on the header of %s: %r", name, exc)
            family = None
        evidence = "the file's block layout"
    if family is None:
        return {"family": None, "reason": f"{name}: no known model layout in its weight names"}
    key = normalize_family(family)
    return {"family": key, "label": FAMILY_LABELS.get(key, family), "evidence": evidence, "host_family": family}


# --- aiohttp handlers and registration ------------------------------------------------------------

_work_slots: asyncio.Semaphore | None = None


async def run_off_loop(fn, *args):
    """Run ``fn(*args)`` in a worker thread, at most :data:`MAX_CONCURRENT_WORK` at a time, so parsing never
    blocks the server's event loop (every other request, the queue, the websocket)."""
    global _work_slots
    if _work_slots is None:
        _work_slots = asyncio.Semaphore(MAX_CONCURRENT_WORK)
    async with _work_slots:
        return await asyncio.to_thread(fn, *args)


def error_response(problem: str, fix: str = "", status: int = 400) -> web.Response:
    return web.json_response({"error": problem, "fix": fix}, status=status)


def json_errors(handler):
    """Answer LoRA Lab errors as JSON ``{"error", "fix"}`` (400), anything unexpected as JSON (500) with the
    details in the server log, never as aiohttp's HTML error page."""
    @functools.wraps(handler)
    async def wrapped(request: web.Request) -> web.Response:
        try:
            return await handler(request)
        except web.HTTPException:
            raise
        except LoraLabError as exc:
            return error_response(exc.problem, exc.fix)
        except Exception:  # noqa: BLE001 - logged with its traceback; the page gets JSON
            log.exception("LoRA Lab: %s failed", request.path)
            return error_response(f"LoRA Lab could not answer {request.path}.", "see the ComfyUI server log.",
                                  status=500)
    return wrapped


def _query(request: web.Request, key: str, default: str = "") -> str | None:
    value = request.query.get(key, default)
    return value if len(value) <= MAX_QUERY_CHARS else None


@json_errors
async def get_blocks(request: web.Request) -> web.Response:
    family = _query(request, "family")
    if family is None:
        return error_response(f"family is longer than {MAX_QUERY_CHARS} characters.", "use sd1, sdxl, flux, ...")
    return web.json_response(await run_off_loop(blocks_payload, family, user_presets_path()))


@json_errors
async def get_family(request: web.Request) -> web.Response:
    kind = _query(request, "kind", "checkpoints")
    name = _query(request, "name")
    if kind not in MODEL_KINDS:
        return error_response(f"kind must be one of {', '.join(MODEL_KINDS)}.", "use kind=checkpoints.")
    if not name:
        return error_response("name is required (at most 1024 characters).", "give a model file's name.")
    path = folder_paths.get_full_path(kind, name)
    if path is None:
        return web.json_response({"family": None, "reason": f"{name} is not in the {kind} folder"})
    return web.json_response({"name": name, "kind": kind, **await run_off_loop(model_file_family, path, kind)})


def prompt_server():
    """The running ``PromptServer``, or None (no server module imported, or none constructed)."""
    module = sys.modules.get("server")
    return getattr(getattr(module, "PromptServer", None), "instance", None)


def register_routes(server=None) -> bool:
    """Add the routes to ``server`` (default: the running one) once; False when there is none."""
    server = server if server is not None else prompt_server()
    if server is None or getattr(server, "_lora_lab_routes", False):
        return False
    server.routes.get(ROUTE_BLOCKS)(get_blocks)
    server.routes.get(ROUTE_FAMILY)(get_family)
    server._lora_lab_routes = True
    return True
