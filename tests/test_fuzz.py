"""Fuzz tests (hypothesis): parsers and routes given random and mutated input answer with LoRA Lab's own
error or a result, never another exception and never a hang.

Every test here uses the ``FUZZ`` settings: a modest, fixed number of examples (150) drawn
deterministically (``derandomize``), so a CI run is reproducible and takes seconds; ``LORA_LAB_FUZZ=long``
draws 5,000 random examples per test instead (about 12 minutes here), for a search on a developer's machine. Sections: the
safetensors reader (lora_ops/safeio.py), the front end's routes (nodes/routes.py).
"""

from __future__ import annotations

import asyncio
import json
import os
import struct
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from safetensors.torch import save

from testkit.host import import_pack

import_pack()
from lora_lab.lora_ops import safeio  # noqa: E402
from lora_lab.lora_ops.errors import LoraFileError  # noqa: E402
from lora_lab.nodes import routes  # noqa: E402

FUZZ = settings(max_examples=150, derandomize=True, deadline=5000, database=None,
               suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
if os.environ.get("LORA_LAB_FUZZ") == "long":
    FUZZ = settings(FUZZ, max_examples=5000, derandomize=False)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


def as_file(folder: Path, content: bytes, name: str = "fuzz.safetensors") -> Path:
    path = folder / name
    path.write_bytes(content)
    return path


def with_header(header: bytes, data: bytes = b"", length: int | None = None) -> bytes:
    return struct.pack("<Q", len(header) if length is None else length) + header + data


def valid_file() -> bytes:
    return save({"lora_unet_x.lora_down.weight": torch.arange(8, dtype=torch.float16).reshape(2, 4),
                 "lora_unet_x.lora_up.weight": torch.ones(4, 2), "lora_unet_x.alpha": torch.tensor(2.0)},
                metadata={"ss_network_dim": "2"})


VALID = valid_file()

# JSON values of every kind, nested, with the numbers that broke the reader before (huge, inf, negative)
json_scalars = (st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
                | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=12)
                | st.sampled_from(["F32", "F16", "BF16", "I64", "Q7", "dtype", "shape", "data_offsets"]))
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=20)
entry_values = st.fixed_dictionaries(
    {}, optional={"dtype": json_values | st.sampled_from(list(safeio.DTYPE_BITS)),
                  "shape": json_values | st.lists(st.integers(0, 6), max_size=3),
                  "data_offsets": json_values | st.lists(st.integers(-2, 64), min_size=2, max_size=2)})
headers = st.dictionaries(st.text(max_size=10), entry_values | json_values, max_size=5)


def read_or_refuse(folder: Path, content: bytes) -> None:
    """The property: reading ``content`` either succeeds with tensors or raises LoraFileError naming the file."""
    path = as_file(folder, content)
    try:
        lora = safeio.read_lora_file(path)
    except LoraFileError as exc:
        assert path.name in str(exc) and exc.fix
        return
    assert lora.tensors and all(isinstance(v, torch.Tensor) for v in lora.tensors.values())
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in lora.metadata.items())


# --- the safetensors reader -------------------------------------------------------------------------------

@FUZZ
@given(st.binary(max_size=600))
def test_random_bytes(workdir, content):
    read_or_refuse(workdir, content)


@FUZZ
@given(json_values, st.binary(max_size=64), st.none() | st.integers(0, 2**64 - 1))
def test_any_json_as_header(workdir, header, data, length):
    read_or_refuse(workdir, with_header(json.dumps(header).encode(), data, length))


@FUZZ
@given(headers, st.binary(max_size=96), st.none() | st.dictionaries(st.text(max_size=6), json_values, max_size=3))
def test_header_shaped_objects(workdir, tensors, data, metadata):
    header = dict(tensors)
    if metadata is not None:
        header["__metadata__"] = metadata
    read_or_refuse(workdir, with_header(json.dumps(header).encode(), data))


@FUZZ
@given(st.lists(st.tuples(st.integers(0, len(VALID) - 1), st.integers(0, 255)), min_size=1, max_size=8))
def test_byte_flips_of_a_valid_file(workdir, flips):
    content = bytearray(VALID)
    for position, value in flips:
        content[position] = value
    read_or_refuse(workdir, bytes(content))


@FUZZ
@given(st.integers(0, len(VALID)), st.integers(0, len(VALID)), st.binary(max_size=40))
def test_cuts_and_insertions_in_a_valid_file(workdir, start, stop, inserted):
    assume(start <= stop)
    read_or_refuse(workdir, VALID[:start] + inserted + VALID[stop:])


@FUZZ
@given(st.integers(1, 200_000), st.sampled_from(["[", "{\"a\":", "[{\"x\":"]))
def test_deep_nesting(workdir, depth, opener):
    closer = {"[": "]", "{\"a\":": "}", "[{\"x\":": "}]"}[opener]
    read_or_refuse(workdir, with_header((opener * depth + "1" + closer * depth).encode()))


@FUZZ
@given(st.text(alphabet="0123456789eE.-+", min_size=1, max_size=6000))
def test_numbers_of_any_size_as_offsets(workdir, number):
    header = f'{{"a": {{"dtype": "F32", "shape": [1], "data_offsets": [0, {number}]}}}}'.encode()
    read_or_refuse(workdir, with_header(header, b"\0" * 4))


# --- the routes -----------------------------------------------------------------------------------------------

@FUZZ
@given(st.binary(max_size=300) | headers.map(lambda h: with_header(json.dumps(h).encode(), b"\0" * 16)),
       st.sampled_from(routes.MODEL_KINDS))
def test_family_of_any_file_is_a_family_or_a_reason(workdir, content, kind):
    info = routes.model_file_family(as_file(workdir, content, "model.safetensors"), kind)
    assert (info["family"] is None) == ("reason" in info)
    assert json.dumps(info)


@pytest.fixture(scope="module")
def mocked_requests():
    from aiohttp.test_utils import make_mocked_request

    return make_mocked_request


@FUZZ
@given(st.text(max_size=40), st.text(max_size=40), st.text(max_size=20))
def test_route_handlers_answer_any_query_with_json(mocked_requests, kind, name, family):
    from urllib.parse import urlencode

    async def call():
        routes._work_slots = None
        family_answer = await routes.get_family(mocked_requests("GET", "/lora_lab/family?" + urlencode(
            {"kind": kind, "name": name})))
        blocks_answer = await routes.get_blocks(mocked_requests("GET", "/lora_lab/blocks?" + urlencode(
            {"family": family})))
        return family_answer, blocks_answer

    for answer in asyncio.run(call()):
        assert answer.status in (200, 400) and answer.content_type == "application/json"
        json.loads(answer.text)
    routes._work_slots = None
