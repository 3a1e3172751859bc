"""LoRA files and folders, for every node: reading a LoRA by name (parsed once per content), where a new
one may be written (checked against every loras folder), and where the user's presets live."""

from __future__ import annotations

import os
import re
from collections import OrderedDict
from pathlib import Path

import folder_paths

from ..lora_ops import LoadedLora, load_lora
from ..lora_ops.errors import LoraFileError, LoraLabError
from ..lora_ops.safeio import file_digest
from . import bridge

_CACHE_SIZE = 8
_cache: "OrderedDict[tuple, LoadedLora]" = OrderedDict()


def cached_lora(path: str) -> LoadedLora:
    """Read and parse a LoRA file once per content (real path, SHA-256 of its bytes), so a strength change
    re-reads nothing and a file replaced by another, even of the same size and mtime, is read again. The
    digest is remembered per version of the file (``safeio.file_digest``): one ``stat`` re-checks it."""
    real = os.path.realpath(path)
    try:
        digest = file_digest(real)
    except OSError:
        return load_lora(path, convert=bridge.convert_lora)  # gone or unreadable: the reader names it
    key = (real, digest)
    hit = _cache.get(key)
    if hit is not None:
        _cache.move_to_end(key)
        return hit
    lora = load_lora(path, convert=bridge.convert_lora)
    if file_digest(real) != digest:  # replaced while it was read: serve it, remember nothing
        return lora
    lora.sha256 = digest
    _cache[key] = lora
    while len(_cache) > _CACHE_SIZE:
        _cache.popitem(last=False)
    return lora


def resolve_lora_path(lora_name: str) -> str:
    path = folder_paths.get_full_path("loras", lora_name)
    if path is None:
        raise LoraFileError(f"LoRA '{lora_name}' is not in ComfyUI's loras folder(s).",
                            "put the file in models/loras (or a folder listed in extra_model_paths.yaml) and "
                            "refresh the page.")
    return path


def user_presets_path() -> Path:
    """User block-weight presets live in ComfyUI's user folder: ``<user>/lora_lab/block_presets.json``."""
    return Path(folder_paths.get_user_directory()) / "lora_lab" / "block_presets.json"


_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9 ._+-]{0,150}")
# Names Windows reserves for devices, with any extension: a file called NUL.safetensors cannot be written there.
_RESERVED_NAME = re.compile(r"(?:CON|PRN|AUX|NUL|COM[0-9]|LPT[0-9])(?:\..*)?", re.IGNORECASE)


def output_stem(name: str) -> str:
    """``name`` without ``.safetensors``, when it is a plain file name; :class:`LoraLabError` otherwise.

    Allowed: letters, digits, space, ``. _ + -``; starting with a letter or digit; at most 151 characters;
    no ``..``, no dot or space at the end, no control characters (a name ending in a newline included),
    no name Windows reserves for a device. Spaces around the whole name are dropped.
    """
    stem = name.strip(" ")
    if stem.endswith(".safetensors"):
        stem = stem[: -len(".safetensors")]
    if (not _SAFE_NAME.fullmatch(stem) or ".." in stem or stem.endswith((".", " "))
            or _RESERVED_NAME.fullmatch(stem)):
        raise LoraLabError(f"Output name {name[:200]!r} is not a plain file name (letters, digits, space, . _ + - "
                           "only; starting with a letter or digit; no folders, no '..', no dot or space at the end).",
                           "pick a simple name such as 'my_lora_baked'.")
    return stem


def existing_in_folders(kind: str, file_name: str) -> list[Path]:
    """Every file (or link, even a broken one) called ``file_name`` directly in a folder of ``kind``."""
    return [Path(folder) / file_name for folder in folder_paths.get_folder_paths(kind)
            if os.path.lexists(os.path.join(folder, file_name))]


def lora_output_path(name: str, *, overwrite: bool) -> Path:
    """Where a new LoRA called ``name`` goes: the first loras folder.

    The name is checked with :func:`output_stem` and against every loras folder (``extra_model_paths.yaml``
    may add several): a file of that name in the first folder is replaced only with ``overwrite``; one in
    any other folder is never shadowed (ComfyUI lists the first folder's file under that name).
    """
    stem = output_stem(name)
    folders = folder_paths.get_folder_paths("loras")
    if not folders:
        raise LoraLabError("ComfyUI has no loras folder to save into.",
                           "check the loras entries of extra_model_paths.yaml.")
    path = Path(folders[0]) / f"{stem}.safetensors"
    for found in existing_in_folders("loras", path.name):
        if os.path.realpath(found.parent) != os.path.realpath(path.parent):
            raise LoraLabError(f"'{path.name}' already exists in the loras folder {found.parent}; a new file in "
                               f"{path.parent} would hide it from every loader.",
                               "pick another output name (overwrite replaces only files in the first loras folder).")
        if not overwrite:
            raise LoraLabError(f"'{path.name}' already exists in the loras folder.",
                               "pick another output name, or enable overwrite.")
    return path
