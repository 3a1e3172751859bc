"""Reading and writing LoRA files safely.

Only safetensors is read by default: a pickle (``.ckpt``/``.pt``/``.bin``) can run code when loaded,
so it is refused unless the caller asks for torch's weights-only loader.

A safetensors file is ``u64 header length | JSON header | tensor bytes``. The header is read and
checked here before the safetensors library sees the file (:func:`read_safetensors_header`): its
length is capped (:data:`MAX_HEADER_BYTES`, the library's own limit), the JSON must be an object of
tensor entries ``{"dtype": str, "shape": [int, ...], "data_offsets": [begin, end]}`` plus an optional
``"__metadata__"`` object of strings, every entry's byte range must match its dtype and shape, and the
ranges must tile the data area exactly. Anything else (a list instead of an object, numbers where
entries belong, ``1e400``, ``NaN``, JSON nested thousands deep, integers of thousands of digits) is a
:class:`LoraFileError` naming the file, the problem and the fix, never a raw Python exception.

Writes go to a temporary name beside the target and are renamed into place, so a crash never leaves
a half-written file. The temporary file is created with mode ``0o666`` minus the process umask, the
mode ``open()`` gives any new file (and ComfyUI's own outputs get), not ``mkstemp``'s owner-only 0600.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import secrets
import struct
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .errors import LoraFileError

PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")

MAX_HEADER_BYTES = 100_000_000
"""The largest safetensors header read (the safetensors library refuses larger ones too). Real LoRA and
checkpoint headers are well under 10 MB, metadata included."""

MAX_DIMS = 64
"""Most dimensions a tensor entry may have (torch's own limit is 64)."""

# Bits per element of the dtypes a LoRA file may hold (safetensors' names).
DTYPE_BITS = {
    "BOOL": 8, "U8": 8, "I8": 8, "F8_E4M3": 8, "F8_E5M2": 8, "F8_E8M0": 8,
    "I16": 16, "U16": 16, "F16": 16, "BF16": 16,
    "I32": 32, "U32": 32, "F32": 32,
    "I64": 64, "U64": 64, "F64": 64,
}

_REDOWNLOAD = "download or export the file again; if it is not a safetensors file, pick another."


@dataclass
class LoraFile:
    """The raw content of a LoRA file: tensors by key, string metadata, where it came from."""

    tensors: dict[str, torch.Tensor]
    metadata: dict[str, str] = field(default_factory=dict)
    path: Path | None = None
    size_bytes: int = 0


@dataclass(frozen=True)
class TensorInfo:
    """One tensor entry of a safetensors header: ``data_offsets`` are relative to the data area."""

    dtype: str
    shape: tuple[int, ...]
    data_offsets: tuple[int, int]


@dataclass
class SafetensorsHeader:
    """A checked safetensors header: tensor entries in file order, string metadata, header length."""

    tensors: dict[str, TensorInfo]
    metadata: dict[str, str]
    header_bytes: int
    file_bytes: int


class _HeaderProblem(Exception):
    """Internal: what is wrong with a header, turned into a :class:`LoraFileError` by the caller."""


class _Truncated(Exception):
    """Internal: the header is fine but describes more bytes (``args[0]``) than the file has."""


def _reject_constant(name: str):
    raise _HeaderProblem(f"its header holds the JSON constant {name}, which safetensors headers never contain")


def _plain_int(value, what: str) -> int:
    # bool is an int subclass, floats (1e400 is inf) and strings are not sizes or offsets
    if type(value) is not int:
        raise _HeaderProblem(f"{what} is {_short(value)}, not a whole number")
    if value < 0:
        raise _HeaderProblem(f"{what} is negative ({value})")
    return value


def _short(value) -> str:
    text = json.dumps(value) if isinstance(value, (str, int, float, bool, type(None))) else type(value).__name__
    if isinstance(value, list):
        text = "a list"
    elif isinstance(value, dict):
        text = "an object"
    return text if len(text) <= 40 else text[:37] + "..."


def _tensor_info(name: str, entry) -> TensorInfo:
    label = f"tensor '{name[:80]}'"
    if not isinstance(entry, dict):
        raise _HeaderProblem(f"its header entry for {label} is {_short(entry)}, not an object with dtype, shape "
                             "and data_offsets")
    missing = [k for k in ("dtype", "shape", "data_offsets") if k not in entry]
    if missing:
        raise _HeaderProblem(f"its header entry for {label} has no {' or '.join(missing)}")
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if not isinstance(dtype, str) or dtype not in DTYPE_BITS:
        raise _HeaderProblem(f"{label} has dtype {_short(dtype)}, which LoRA Lab does not read "
                             f"(known: {', '.join(DTYPE_BITS)})")
    if not isinstance(shape, list) or len(shape) > MAX_DIMS:
        raise _HeaderProblem(f"{label} has shape {_short(shape)}, not a list of at most {MAX_DIMS} sizes")
    dims = tuple(_plain_int(d, f"a size in the shape of {label}") for d in shape)
    if not isinstance(offsets, list) or len(offsets) != 2:
        raise _HeaderProblem(f"{label} has data_offsets {_short(offsets)}, not a pair [begin, end]")
    begin = _plain_int(offsets[0], f"the data begin of {label}")
    end = _plain_int(offsets[1], f"the data end of {label}")
    if end < begin:
        raise _HeaderProblem(f"{label} ends (byte {end}) before it begins (byte {begin})")
    expected_bits = math.prod(dims) * DTYPE_BITS[dtype]
    if (end - begin) * 8 != expected_bits:
        raise _HeaderProblem(f"{label} is {dtype} of shape {list(dims)}, which is {expected_bits // 8} bytes, "
                             f"but its data_offsets give {end - begin} bytes")
    return TensorInfo(dtype, dims, (begin, end))


def _parse_header(raw: bytes, header_len: int, file_bytes: int) -> SafetensorsHeader:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise _HeaderProblem("its header is not UTF-8 text") from None
    try:
        header = json.loads(text, parse_constant=_reject_constant)
    except RecursionError:
        raise _HeaderProblem("its header is JSON nested too deeply to be a safetensors header") from None
    except json.JSONDecodeError as exc:
        raise _HeaderProblem(f"its header is not valid JSON ({exc.msg} at character {exc.pos})") from None
    except ValueError as exc:  # e.g. an integer of more digits than Python converts
        raise _HeaderProblem(f"its header holds a value Python cannot read ({str(exc)[:80]})") from None
    if not isinstance(header, dict):
        raise _HeaderProblem(f"its header is {_short(header)}, not a JSON object of tensors")
    metadata_raw = header.pop("__metadata__", None)
    if metadata_raw is None:
        metadata: dict[str, str] = {}
    elif not isinstance(metadata_raw, dict):
        raise _HeaderProblem(f"its __metadata__ is {_short(metadata_raw)}, not an object of strings")
    else:
        bad = next((k for k, v in metadata_raw.items() if not isinstance(v, str)), None)
        if bad is not None:
            raise _HeaderProblem(f"its __metadata__ value for '{bad[:80]}' is {_short(metadata_raw[bad])}, "
                                 "not a string")
        metadata = metadata_raw
    tensors = {name: _tensor_info(name, entry) for name, entry in header.items()}
    # The tensors' byte ranges must tile the data area: no gap, no overlap, nothing after the last.
    data_bytes = file_bytes - 8 - header_len
    position = 0
    for name, info in sorted(tensors.items(), key=lambda item: item[1].data_offsets):
        begin, end = info.data_offsets
        if begin != position:
            what = "overlaps the tensor before it" if begin < position else f"leaves a gap of {begin - position} bytes"
            raise _HeaderProblem(f"tensor '{name[:80]}' {what} in the data area")
        position = end
    if position > data_bytes:
        raise _Truncated(8 + header_len + position)
    if position < data_bytes:
        raise _HeaderProblem(f"the file has {data_bytes - position} bytes after the last tensor its header "
                             "describes")
    return SafetensorsHeader(tensors, metadata, header_len, file_bytes)


def read_safetensors_header(path: str | os.PathLike, *, max_header_bytes: int = MAX_HEADER_BYTES
                            ) -> SafetensorsHeader:
    """Read and check the header of the safetensors file at ``path`` (see the module docstring).

    Reads at most ``8 + max_header_bytes`` bytes; never reads the tensors. Raises :class:`LoraFileError`
    for anything that is not a well-formed safetensors file.
    """
    path = Path(path)
    try:
        with path.open("rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            if size < 8:
                raise LoraFileError(f"'{path.name}' is {size} bytes long: too short to be a safetensors file "
                                    "(empty or truncated).", _REDOWNLOAD)
            (header_len,) = struct.unpack("<Q", fh.read(8))
            if header_len < 2 or header_len > max_header_bytes:
                # The number comes from the file's first bytes; not echoed (they may not be a header at all).
                raise LoraFileError(f"'{path.name}' is not a safetensors file: its first 8 bytes do not give a "
                                    f"header length between 2 bytes and {max_header_bytes // 1_000_000} MB.",
                                    _REDOWNLOAD)
            if 8 + header_len > size:
                raise LoraFileError(f"'{path.name}' is truncated or not safetensors: the header length in its "
                                    f"first 8 bytes is more than the file's {size} bytes.", _REDOWNLOAD)
            raw = fh.read(header_len)
    except OSError as exc:
        raise LoraFileError(f"'{path.name}' could not be read ({exc.strerror or exc}).",
                            "check that the file exists and is readable.") from None
    try:
        return _parse_header(raw, header_len, size)
    except _HeaderProblem as problem:
        raise LoraFileError(f"'{path.name}' has a corrupt safetensors header: {problem}.", _REDOWNLOAD) from None
    except _Truncated as cut:
        raise LoraFileError(f"'{path.name}' is truncated: its header describes {cut.args[0]} bytes, the file has "
                            f"{size}.", "the download or copy was cut short; fetch the file again.") from None


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
        if not isinstance(loaded, dict):
            raise LoraFileError(f"'{path.name}' holds a {type(loaded).__name__}, not a dictionary of tensors.",
                                "this is not a LoRA file; pick another.")
        tensors = {str(k): v for k, v in loaded.items() if isinstance(v, torch.Tensor)}
        return LoraFile(tensors=tensors, metadata={}, path=path, size_bytes=size)

    header = read_safetensors_header(path)
    if not header.tensors:
        raise LoraFileError(f"'{path.name}' holds no tensors.", "this is not a LoRA file; pick another.")
    try:
        tensors = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError, TypeError, KeyError, RuntimeError) as exc:
        # The header was checked above; this is the library finding something else (or the file changed).
        raise LoraFileError(f"'{path.name}' could not be read as safetensors ({exc}).", _REDOWNLOAD) from None
    return LoraFile(tensors=tensors, metadata=dict(header.metadata), path=path, size_bytes=size)


# --- content digests -------------------------------------------------------------------------------

_RACY_SECONDS = 2.0
"""A file changed less than this long ago is re-hashed on every call: file timestamps come from a
coarse clock, so a second write within the same tick can leave size, mtime and ctime unchanged (git's
"racy clean" problem)."""

_digests: dict[str, tuple[tuple[int, ...], str]] = {}
_digests_lock = threading.Lock()
_MAX_DIGESTS = 4096


def _stat_key(st: os.stat_result) -> tuple[int, ...]:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of the file's bytes, hex. Reads the whole file."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def file_digest(path: str | os.PathLike) -> str:
    """SHA-256 of the file's content, hashed once per version of the file and re-checked with one ``stat``.

    A version is (device, inode, size, mtime, ctime) of the real path: replacing the file (a rename gives
    a new inode; writing in place sets ctime, which no user can set back) makes a new version, so a file
    swapped for another of the same size and mtime is hashed again. Files changed in the last
    :data:`_RACY_SECONDS` are always hashed. Raises ``OSError`` when the file cannot be read.
    """
    real = os.path.realpath(path)
    before = os.stat(real)
    key = _stat_key(before)
    with _digests_lock:
        known = _digests.get(real)
    if known is not None and known[0] == key and time.time() - max(before.st_mtime, before.st_ctime) > _RACY_SECONDS:
        return known[1]
    digest = file_sha256(real)
    if _stat_key(os.stat(real)) != key:  # changed while it was read: do not remember a mixed version
        return digest
    with _digests_lock:
        _digests.pop(real, None)
        _digests[real] = (key, digest)
        while len(_digests) > _MAX_DIGESTS:
            _digests.pop(next(iter(_digests)))
    return digest


# --- writing ---------------------------------------------------------------------------------------

def _create_temporary(folder: Path, name: str) -> Path:
    """Create an empty, new file beside ``name`` in ``folder`` with the mode new files get (0o666 & ~umask)."""
    for _ in range(100):
        candidate = folder / f".{name}.{secrets.token_hex(6)}.tmp"
        try:
            fd = os.open(candidate, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)
        except FileExistsError:
            continue
        os.close(fd)
        return candidate
    raise FileExistsError(f"no free temporary name for {name} in {folder}")


@contextmanager
def atomic_target(path: str | os.PathLike) -> Iterator[str]:
    """A temporary name in ``path``'s folder to write to; renamed to ``path`` when the block succeeds,
    removed when it fails, so ``path`` is never half-written. The file ends up with the permissions any
    new file gets (``0o666`` minus the umask, 0644 with the usual umask 022)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = str(_create_temporary(path.parent, path.name))
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
