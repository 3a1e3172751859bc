"""``IS_CHANGED`` for nodes that read files by name: a fingerprint of the files' content.

ComfyUI re-runs a node only when its inputs or its ``IS_CHANGED`` value differ from the last run. A node
that reads ``lora_name`` from disk would otherwise return its cached result after the file was replaced.
:func:`inputs_fingerprint` takes the node's widget inputs (``IS_CHANGED`` gets no linked inputs) and
returns the SHA-256 of every file they name: LoRA files (``lora_name``, ``lora_name_b``, ``resume_from``),
the images and captions of ``image_folder``, and the user's block presets file. Digests are remembered
per version of a file (``safeio.file_digest``), so an unchanged file costs one ``stat``.

It never raises: a name that does not resolve gives a marker string, and the node's own run reports the
problem with LoRA Lab's error.
"""

from __future__ import annotations

import hashlib
import logging
import os

import folder_paths

from ..lora_ops.errors import LoraLabError
from ..lora_ops.safeio import file_digest

log = logging.getLogger(__name__)

LORA_INPUTS = ("lora_name", "lora_name_b", "resume_from")
FOLDER_INPUTS = ("image_folder",)
NO_FILE = ("", "none", "(none)")


def _digest_or_marker(path: str | None, label: str) -> str:
    if path is None:
        return f"missing:{label}"
    try:
        return file_digest(path)
    except OSError as exc:
        return f"unreadable:{label}:{exc.errno}"


def lora_fingerprint(name: str) -> str:
    """SHA-256 of the LoRA file ``name`` in the loras folders (a marker when there is none)."""
    return _digest_or_marker(folder_paths.get_full_path("loras", name), name)


def folder_fingerprint(text: str) -> str:
    """One SHA-256 over the names and digests of the images and captions in ``image_folder``.

    The folder is resolved exactly as training resolves it (inside ComfyUI's input folder): a folder that
    training would refuse is never listed here either.
    """
    from ..train.data import IMAGE_SUFFIXES  # noqa: PLC0415
    from .train import resolve_image_folder  # noqa: PLC0415 - train imports this module's users

    try:
        folder, _ = resolve_image_folder(text)
        names = sorted(n for n in os.listdir(folder) if n.lower().endswith(IMAGE_SUFFIXES + (".txt",)))
    except (LoraLabError, OSError) as exc:
        return f"refused:{type(exc).__name__}"
    h = hashlib.sha256()
    for name in names:
        h.update(f"{name}\0{_digest_or_marker(str(folder / name), name)}\0".encode())
    return h.hexdigest()


def presets_fingerprint() -> str:
    """SHA-256 of the user's block presets file (``""`` when there is none)."""
    from .lora_files import user_presets_path  # noqa: PLC0415

    path = user_presets_path()
    return _digest_or_marker(str(path), "presets") if path.is_file() else ""


def inputs_fingerprint(inputs: dict) -> str | float:
    """The fingerprint of every file the widget ``inputs`` name (see the module docstring)."""
    parts = []
    try:
        for key in LORA_INPUTS:
            value = inputs.get(key)
            if isinstance(value, str) and value not in NO_FILE:
                parts.append(f"{key}={lora_fingerprint(value)}")
        for key in FOLDER_INPUTS:
            value = inputs.get(key)
            if isinstance(value, str) and value.strip():
                parts.append(f"{key}={folder_fingerprint(value)}")
        parts.append(f"presets={presets_fingerprint()}")
    except Exception as exc:  # noqa: BLE001 - IS_CHANGED must not fail a prompt; the node's run reports problems
        log.warning("LoRA Lab: could not fingerprint the files of a node's inputs: %s", exc)
        return float("nan")  # never equal to itself: ComfyUI runs the node again
    return ";".join(parts)
