"""The front end's routes under odd input (nodes/routes.py): /lora_lab/family answers every model file
with a family or a reason, never HTTP 500 and never the file's bytes; bad queries get JSON errors; the
parsing runs in worker threads, off the server's event loop."""

from __future__ import annotations

import asyncio
import json
import struct
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest

from testkit.host import import_pack

import_pack()
from lora_lab.nodes import routes  # noqa: E402

_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))

# The number the first 8 bytes of "AAAAAAAA..." read as: an old version answered it in its reason.
AAAA = struct.unpack("<Q", b"AAAAAAAA")[0]


def with_header(header: bytes | str, data: bytes = b"") -> bytes:
    raw = header.encode() if isinstance(header, str) else header
    return struct.pack("<Q", len(raw)) + raw + data


ODD_FILES = {
    "text.safetensors": b"AAAAAAAA this is a text file, not a model" * 4,
    "list.safetensors": with_header("[1, 2, 3]"),
    "ints.safetensors": with_header('{"a": 1, "b": 2}'),
    "shape_int.safetensors": with_header('{"a": {"dtype": "F32", "shape": 5, "data_offsets": [0, 20]}}', b"\0" * 20),
    "no_offsets.safetensors": with_header('{"a": {"dtype": "F32", "shape": [1]}}', b"\0" * 4),
    "inf.safetensors": with_header('{"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 1e400]}}', b"\0" * 4),
    "deep.safetensors": with_header("[" * 100_000 + "]" * 100_000),
    "metadata_list.safetensors": with_header('{"__metadata__": [1]}'),
    "shape_strings.safetensors": with_header(
        '{"input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": '
        '{"dtype": "F32", "shape": ["a", "b"], "data_offsets": [0, 4]}}', b"\0" * 4),
    "empty.safetensors": b"",
    "short.safetensors": b"\x01\x02",
    "header_too_big.safetensors": struct.pack("<Q", routes.MAX_HEADER_BYTES + 1) + b"{}",
    "non_utf8.safetensors": with_header(b'{"\xff\xfe": 1}'),
}


@pytest.mark.parametrize("name", list(ODD_FILES))
def test_odd_model_files_get_a_reason_in_process(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(ODD_FILES[name])
    info = routes.model_file_family(path)
    assert info["family"] is None and name in info["reason"]
    assert str(AAAA) not in info["reason"] and "AAAA" not in info["reason"]


def test_work_runs_in_a_worker_thread_at_most_two_at_once():
    loop_thread = threading.get_ident()
    running, peak = [0], [0]
    lock = threading.Lock()

    def work():
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(0.05)
        with lock:
            running[0] -= 1
        return threading.get_ident()

    async def many():
        routes._work_slots = None  # a fresh semaphore for this event loop
        return await asyncio.gather(*(routes.run_off_loop(work) for _ in range(6)))

    idents = asyncio.run(many())
    assert loop_thread not in idents and peak[0] == routes.MAX_CONCURRENT_WORK
    routes._work_slots = None


def test_handlers_parse_off_the_loop(tmp_path, monkeypatch):
    from aiohttp.test_utils import make_mocked_request

    seen = {}

    def payload(family, presets_path):
        seen["blocks"] = threading.get_ident()
        return {"family": family}

    def family(path, kind):
        seen["family"] = threading.get_ident()
        return {"family": None, "reason": "test"}

    monkeypatch.setattr(routes, "blocks_payload", payload)
    monkeypatch.setattr(routes, "model_file_family", family)
    monkeypatch.setattr(routes.folder_paths, "get_full_path", lambda kind, name: str(tmp_path / name))

    async def call():
        routes._work_slots = None
        await routes.get_blocks(make_mocked_request("GET", "/lora_lab/blocks?family=sd1"))
        await routes.get_family(make_mocked_request("GET", "/lora_lab/family?kind=checkpoints&name=x.safetensors"))
        return threading.get_ident()

    loop_thread = asyncio.run(call())
    routes._work_slots = None
    assert seen["blocks"] != loop_thread and seen["family"] != loop_thread


def test_an_unexpected_failure_is_json_not_a_traceback(monkeypatch):
    from aiohttp.test_utils import make_mocked_request

    def broken(family, presets_path):
        raise RuntimeError("secret detail")

    monkeypatch.setattr(routes, "blocks_payload", broken)

    async def call():
        routes._work_slots = None
        return await routes.get_blocks(make_mocked_request("GET", "/lora_lab/blocks?family=sd1"))

    response = asyncio.run(call())
    routes._work_slots = None
    body = json.loads(response.body)
    assert response.status == 500 and "could not answer" in body["error"] and "secret" not in response.text


# --- through the real server ---------------------------------------------------------------------------------

def get(server, path: str) -> tuple[int, dict]:
    try:
        with _OPENER.open(server.url + path, timeout=120) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


@pytest.fixture(scope="module")
def odd_server(comfy_server):
    for name, content in ODD_FILES.items():
        (comfy_server.checkpoints_dir / name).write_bytes(content)
    return comfy_server


@pytest.mark.e2e
@pytest.mark.parametrize("name", list(ODD_FILES))
def test_family_route_never_answers_500_or_file_bytes(odd_server, name):
    for kind in ("checkpoints", "diffusion_models"):
        status, info = get(odd_server, f"/lora_lab/family?kind={kind}&name={urllib.parse.quote(name)}")
        assert status == 200 and info["family"] is None, info
        assert str(AAAA) not in json.dumps(info) and "this is a text file" not in json.dumps(info)


@pytest.mark.e2e
@pytest.mark.parametrize("query,words", [
    ("/lora_lab/family?kind=../../etc&name=passwd", "kind must be one of"),
    ("/lora_lab/family?kind=checkpoints", "name is required"),
    ("/lora_lab/family?kind=checkpoints&name=" + "a" * 5000, "name is required"),
    ("/lora_lab/blocks?family=" + "x" * 5000, "longer than 1024"),
])
def test_bad_queries_get_json_errors(odd_server, query, words):
    status, body = get(odd_server, query)
    assert status == 400 and words in body["error"] and body["fix"]
