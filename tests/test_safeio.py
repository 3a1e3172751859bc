"""The safetensors reader and the atomic writer (lora_ops/safeio.py): malformed headers get LoraFileError
naming the file, the problem and the fix; written files get the umask's permissions; the content digest
sees a file swapped for another of the same size and mtime."""

from __future__ import annotations

import json
import os
import stat
import struct
import time

import pytest
import torch
from safetensors.torch import save_file

from testkit.host import import_pack

import_pack()
from lora_lab.lora_ops import safeio  # noqa: E402
from lora_lab.lora_ops.errors import LoraFileError  # noqa: E402

GOOD_ENTRY = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}


def write_raw(path, header: bytes | str, data: bytes = b"\0" * 8):
    raw = header.encode() if isinstance(header, str) else header
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    return path


def header_of(**entries) -> str:
    return json.dumps(entries)


# Each case: a header (text or bytes), the data after it, and words the error must contain.
MALFORMED = {
    "header is a list": ("[1, 2, 3]", b"", "not a JSON object"),
    "entry is an int": (header_of(a=5), b"", "not an object with dtype"),
    "entry is a list": (header_of(a=[1]), b"", "not an object with dtype"),
    "no data_offsets": (header_of(a={"dtype": "F32", "shape": [2]}), b"\0" * 8, "has no data_offsets"),
    "no dtype": (header_of(a={"shape": [2], "data_offsets": [0, 8]}), b"\0" * 8, "has no dtype"),
    "offset 1e400": ('{"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 1e400]}}', b"\0" * 8,
                     "not a whole number"),
    "offset float": ('{"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8.0]}}', b"\0" * 8,
                     "not a whole number"),
    "offset NaN": ('{"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, NaN]}}', b"\0" * 8, "NaN"),
    "offset string": (header_of(a={"dtype": "F32", "shape": [2], "data_offsets": ["0", "8"]}), b"\0" * 8,
                      "not a whole number"),
    "offset bool": (header_of(a={"dtype": "F32", "shape": [2], "data_offsets": [False, 8]}), b"\0" * 8,
                    "not a whole number"),
    "negative offset": (header_of(a={"dtype": "F32", "shape": [2], "data_offsets": [-8, 0]}), b"\0" * 8, "negative"),
    "three offsets": (header_of(a={"dtype": "F32", "shape": [2], "data_offsets": [0, 4, 8]}), b"\0" * 8,
                      "not a pair"),
    "end before begin": (header_of(a={"dtype": "F32", "shape": [0], "data_offsets": [8, 0]}), b"\0" * 8,
                         "before it begins"),
    "shape is an int": (header_of(a={"dtype": "F32", "shape": 2, "data_offsets": [0, 8]}), b"\0" * 8,
                        "not a list"),
    "shape of strings": (header_of(a={"dtype": "F32", "shape": ["2"], "data_offsets": [0, 8]}), b"\0" * 8,
                         "not a whole number"),
    "huge shape": ('{"a": {"dtype": "F32", "shape": [' + "9" * 5000 + '], "data_offsets": [0, 8]}}', b"\0" * 8,
                   "cannot read"),
    "size mismatch": (header_of(a={"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}), b"\0" * 8,
                      "12 bytes"),
    "unknown dtype": (header_of(a={"dtype": "Q7", "shape": [2], "data_offsets": [0, 8]}), b"\0" * 8,
                      "does not read"),
    "overlap": (header_of(a={"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                          b={"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}), b"\0" * 8, "overlaps"),
    "gap": (header_of(a={"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}), b"\0" * 8, "gap"),
    "trailing bytes": (header_of(a=GOOD_ENTRY), b"\0" * 12, "after the last tensor"),
    "metadata is a list": (header_of(__metadata__=[1], a=GOOD_ENTRY), b"\0" * 8, "not an object of strings"),
    "metadata value int": (header_of(__metadata__={"k": 1}, a=GOOD_ENTRY), b"\0" * 8, "not a string"),
    "nested 100000 deep": ("[" * 100_000 + "]" * 100_000, b"", "nested too deeply"),
    "nested objects": ('{"a":' * 50_000 + "1" + "}" * 50_000, b"", "nested too deeply"),
    "not utf-8": (b'{"\xff": 1}', b"", "not UTF-8"),
    "not json": ("not json at all!", b"", "not valid JSON"),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_headers_get_our_error(tmp_path, case):
    header, data, words = MALFORMED[case]
    path = write_raw(tmp_path / "bad_lora.safetensors", header, data)
    with pytest.raises(LoraFileError) as err:
        safeio.read_lora_file(path)
    message = str(err.value)
    assert "bad_lora.safetensors" in message and words in message, message
    assert err.value.fix


@pytest.mark.parametrize("claimed", [0, 1, safeio.MAX_HEADER_BYTES + 1, 2**64 - 1])
def test_header_lengths_out_of_range_are_refused_without_echoing_them(tmp_path, claimed):
    path = tmp_path / "weird.safetensors"
    path.write_bytes(struct.pack("<Q", claimed) + b"{}" * 8)
    with pytest.raises(LoraFileError, match="not a safetensors file") as err:
        safeio.read_lora_file(path)
    assert str(claimed) not in str(err.value) or claimed in (0, 1)


def test_header_over_the_cap_is_refused_before_it_is_read(tmp_path):
    path = write_raw(tmp_path / "big.safetensors", "{}" + " " * 5000, b"")
    with pytest.raises(LoraFileError, match="not a safetensors file"):
        safeio.read_safetensors_header(path, max_header_bytes=4096)
    assert safeio.read_safetensors_header(path).tensors == {}


def test_a_header_describing_more_than_the_file_is_truncated(tmp_path):
    path = write_raw(tmp_path / "cut.safetensors", header_of(a=GOOD_ENTRY), b"\0" * 4)
    with pytest.raises(LoraFileError, match=r"'cut.safetensors' is truncated.*describes \d+ bytes"):
        safeio.read_lora_file(path)


def test_a_good_file_reads_with_its_header_checked(tmp_path):
    path = tmp_path / "ok.safetensors"
    tensors = {"b": torch.arange(6, dtype=torch.float16).reshape(2, 3), "a": torch.ones(4, dtype=torch.bfloat16),
               "e": torch.zeros(0, 3)}
    save_file(tensors, str(path), metadata={"ss_network_dim": "4"})
    header = safeio.read_safetensors_header(path)
    assert header.metadata == {"ss_network_dim": "4"}
    assert header.tensors["b"].shape == (2, 3) and header.tensors["b"].dtype == "F16"
    loaded = safeio.read_lora_file(path)
    assert all(torch.equal(loaded.tensors[k], v) for k, v in tensors.items())


def test_a_pickle_that_is_not_a_dict_is_refused(tmp_path):
    path = tmp_path / "list.pt"
    torch.save([torch.ones(2)], path)
    with pytest.raises(LoraFileError, match="holds a list, not a dictionary"):
        safeio.read_lora_file(path, allow_pickle=True)


# --- permissions of what we write ------------------------------------------------------------------

@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_written_files_get_the_umask_permissions(tmp_path, umask):
    old = os.umask(umask)
    try:
        path = safeio.write_safetensors_atomic({"a": torch.ones(2)}, tmp_path / "out.safetensors")
        with safeio.atomic_target(tmp_path / "grid.png") as tmp:
            with open(tmp, "wb") as fh:
                fh.write(b"png")
    finally:
        os.umask(old)
    expected = 0o666 & ~umask
    assert stat.S_IMODE(path.stat().st_mode) == expected
    assert stat.S_IMODE((tmp_path / "grid.png").stat().st_mode) == expected
    assert sorted(p.name for p in tmp_path.iterdir()) == ["grid.png", "out.safetensors"]


def test_a_failed_write_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError):
        with safeio.atomic_target(tmp_path / "x.safetensors") as tmp:
            open(tmp, "wb").write(b"half")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


# --- content digests -------------------------------------------------------------------------------

def test_digest_sees_a_same_size_same_mtime_replacement(tmp_path):
    path = tmp_path / "a.safetensors"
    path.write_bytes(b"A" * 1000)
    first = safeio.file_digest(path)
    st = path.stat()
    path.write_bytes(b"B" * 1000)  # in place: same inode, same size
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_size == st.st_size and path.stat().st_mtime_ns == st.st_mtime_ns
    assert safeio.file_digest(path) == safeio.file_sha256(path) != first
    other = tmp_path / "b.tmp"
    other.write_bytes(b"C" * 1000)
    os.utime(other, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.replace(other, path)  # by rename: a new inode
    assert safeio.file_digest(path) == safeio.file_sha256(path)


def test_digest_is_remembered_for_an_unchanged_file(tmp_path, monkeypatch):
    path = tmp_path / "old.safetensors"
    path.write_bytes(b"x" * 100)
    past = time.time() - 60
    os.utime(path, (past, past))
    calls = []
    real = safeio.file_sha256
    monkeypatch.setattr(safeio, "file_sha256", lambda p: calls.append(p) or real(p))
    monkeypatch.setattr(safeio, "_RACY_SECONDS", 0.0)  # ctime was just set by utime
    first = safeio.file_digest(path)
    assert safeio.file_digest(path) == first and len(calls) == 1
