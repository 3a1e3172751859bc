"""Reading and writing LoRA files safely.

Only safetensors is read by default: a pickle (``.ckpt``/``.pt``/``.bin``) can run code when loaded,
so it is refused unless the caller asks for torch's weights-only loader. Writes go to a temporary
name beside the target and are renamed into place, so a crash never leaves a half-written file.
"""

from __future__ import annotations

import json
import os
import struct
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .errors import LoraFileError

PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")


@dataclass
class LoraFile:
    """The raw content of a LoRA file: tensors by key, string metadata, where it came from."""

    tensors: dict[str, torch.Tensor]
    metadata: dict[str, str] = field(default_factory=dict)
    path: Path | None = None
    size_bytes: int = 0


def _read_safetensors_header(path: Path) -> dict:
    """Parse the JSON header, turning a short or garbled file into a clear error."""
    size = path.stat().st_size
    if size < 8:
        raise LoraFileError(
            f"'{path.name}' is {size} bytes long: too short to be a safetensors file (empty or truncated).",
            "download or export the LoRA again.",
        )
    with path.open("rb") as fh:
        (header_len,) = struct.unpack("<Q", fh.read(8))
        if header_len <= 0 or 8 + header_len > size:
            raise LoraFileError(
                f"'{path.name}' is not a valid safetensors file (its header claims {header_len} bytes, "
                f"the file has {size}).",
                "the file is truncated or not safetensors; download or export it again.",
            )
        raw = fh.read(header_len)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise LoraFileError(
            f"'{path.name}' has a corrupt safetensors header ({exc}).",
            "download or export the LoRA again.",
        ) from None
    data_len = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
    if 8 + header_len + data_len > size:
        raise LoraFileError(
            f"'{path.name}' is truncated: its header describes {8 + header_len + data_len} bytes, "
            f"the file has {size}.",
            "the download or copy was cut short; fetch the file again.",
        )
    return header


def read_lora_file(path: str | os.PathLike, *, allow_pickle: bool = False) -> LoraFile:
    """Read a LoRA file into CPU tensors.

    ``allow_pickle`` lets ``.ckpt``/``.pt``/``.bin`` files through torch's weights-only loader,
    which refuses anything but tensors and plain containers.
    """
    path = Path(path)
    if not path.is_file():
        raise LoraFileError(f"LoRA file '{path}' does not exist.", "check the name, or put the file in ComfyUI's loras folder.")
    size = path.stat().st_size
    if path.suffix.lower() in PICKLE_SUFFIXES:
        if not allow_pickle:
            raise LoraFileError(
                f"'{path.name}' is a pickle file, which can run code when it is loaded.",
                "use the .safetensors version of this LoRA, or convert it to safetensors.",
            )
        try:
            loaded = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises many types for bad pickles
            raise LoraFileError(f"'{path.name}' could not be read as weights only ({exc}).", "convert it to safetensors.") from None
        tensors = {k: v for k, v in loaded.items() if isinstance(v, torch.Tensor)}
        return LoraFile(tensors=tensors, metadata={}, path=path, size_bytes=size)

    header = _read_safetensors_header(path)
    try:
        tensors = load_file(str(path), device="cpu")
    except SafetensorError as exc:
        raise LoraFileError(f"'{path.name}' could not be read as safetensors ({exc}).", "download or export it again.") from None
    metadata = {str(k): str(v) for k, v in (header.get("__metadata__") or {}).items()}
    if not tensors:
        raise LoraFileError(f"'{path.name}' holds no tensors.", "this is not a LoRA file; pick another.")
    return LoraFile(tensors=tensors, metadata=metadata, path=path, size_bytes=size)


@contextmanager
def atomic_target(path: str | os.PathLike) -> Iterator[str]:
    """A temporary name in ``path``'s folder to write to; renamed to ``path`` when the block succeeds,
    removed when it fails, so ``path`` is never half-written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_safetensors_atomic(tensors: dict[str, torch.Tensor], path: str | os.PathLike,
                             metadata: dict[str, str] | None = None) -> Path:
    """Write ``tensors`` to ``path`` through a temporary file in the same folder, then rename."""
    path = Path(path)
    with atomic_target(path) as tmp:
        save_file({k: v.contiguous() for k, v in tensors.items()}, tmp, metadata=metadata or {})
    return path
