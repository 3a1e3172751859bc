"""The front end's HTTP routes (nodes/routes.py): in process against ``lora_ops.blocks``, and over HTTP on
the real server, where the pack registers them at import."""

from __future__ import annotations

import json
import struct
import urllib.error
import urllib.parse
import urllib.request

import pytest

from testkit import models
from testkit import web_workflows as ww
from testkit.host import import_pack

import_pack()
from lora_lab.lora_ops.blocks import family_blocks, parse_block_weights
from lora_lab.lora_ops.presets import BUILTIN_PRESETS
from lora_lab.nodes import routes

_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def get(server, path: str):
    with _OPENER.open(server.url + path, timeout=60) as response:
        return response.status, json.loads(response.read())


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl", "flux", "sd3"])
def test_groups_cover_every_block_once_in_order(family):
    payload = routes.blocks_payload(family)
    grouped = [b for g in payload["groups"] for b in g["blocks"]]
    expected = [b for b in family_blocks(family) if b not in payload["encoders"]]
    assert sorted(grouped) == sorted(expected) and len(set(grouped)) == len(grouped)
    for group in payload["groups"]:  # in block order inside a group (Flux puts IN and OUT together)
        assert group["blocks"] == sorted(group["blocks"], key=expected.index)
    if family != "flux":
        assert grouped == expected
    assert payload["order"] == family_blocks(family)
    assert payload["closed"] is True


def test_group_names_follow_the_architecture():
    assert [g["name"] for g in routes.blocks_payload("sdxl")["groups"]] == ["BASE", "IN", "MID", "OUT"]
    flux = {g["name"]: g["blocks"] for g in routes.blocks_payload("flux")["groups"]}
    assert list(flux) == ["BASE", "IN / OUT", "DOUBLE", "SINGLE"]
    assert flux["IN / OUT"] == ["IN", "OUT"] and len(flux["DOUBLE"]) == 19 and len(flux["SINGLE"]) == 38
    assert [g["name"] for g in routes.blocks_payload("sd3")["groups"]] == ["BASE", "JOINT"]


def test_unknown_family_is_the_general_rule_without_groups():
    payload = routes.blocks_payload("no-such-family")
    assert payload["family"] == "general" and payload["closed"] is False and payload["groups"] == []


def test_presets_carry_their_resolved_values(tmp_path):
    presets_path = ww.write_user_presets(tmp_path)
    payload = routes.blocks_payload("sd1", presets_path)
    by_name = {p["name"]: p for p in payload["presets"]}
    assert [p["name"] for p in payload["presets"] if p["source"] == "built-in"] == [
        p.name for p in BUILTIN_PRESETS if "sd1" in p.families]
    for name, preset in by_name.items():
        if not preset["exact"]:
            continue
        vector = parse_block_weights(name, "sd1", user_presets={k.upper(): v for k, v in ww.USER_PRESETS.items()}).vector
        assert preset["values"] == {k: vector[k] for k in preset["values"]}, name
        assert set(preset["values"]) == {"BASE", *family_blocks("sd1")} - {"CLIP_L"}, name
    assert by_name["MYOUT"]["source"] == "user" and by_name["MYOUT"]["exact"]
    assert by_name["HALFA"]["exact"] is False  # depends on A
    assert by_name["ATTNOFF"]["exact"] is False and by_name["ATTNOFF"]["values"] == {}  # a selector only
    assert payload["user_presets_error"] is None


def test_a_broken_user_presets_file_is_reported_not_fatal(tmp_path):
    path = tmp_path / "block_presets.json"
    path.write_text("{not json")
    payload = routes.blocks_payload("sd1", path)
    assert "not valid JSON" in payload["user_presets_error"]
    assert all(p["source"] in ("built-in", "Inspire Pack") for p in payload["presets"])


def test_dialects_match_the_vector_lengths():
    from lora_lab.lora_ops.blocks import accepted_vector_lengths

    for family in ("sd1", "sdxl", "flux"):
        dialects = routes.blocks_payload(family)["dialects"]
        assert sorted(int(n) for n in dialects) == accepted_vector_lengths(family)
        assert all(len(positions) == int(n) for n, positions in dialects.items())


def test_family_of_model_files_from_their_headers(tmp_path):
    assert routes.model_file_family(models.sd15_checkpoint())["family"] == "sd1"
    # reduced-width test models: ComfyUI's detection does not know them; the block layout does
    small = models.models_dir()
    sdxl = routes.model_file_family(small / "small_sdxl.safetensors", "diffusion_models")
    assert sdxl["family"] == "sdxl" and sdxl["evidence"] == "the file's block layout"
    assert routes.model_file_family(small / "small_sd15.safetensors", "diffusion_models")["family"] == "sd1"


def test_family_of_files_it_cannot_read(tmp_path):
    pickle = tmp_path / "model.ckpt"
    pickle.write_bytes(b"\x80\x02")
    assert "not a safetensors file" in routes.model_file_family(pickle)["reason"]
    short = tmp_path / "short.safetensors"
    short.write_bytes(b"\x01\x02")
    assert "not a complete, well-formed safetensors file" in routes.model_file_family(short)["reason"]
    huge = tmp_path / "huge.safetensors"
    huge.write_bytes(struct.pack("<Q", 1 << 40) + b"{}")
    reason = routes.model_file_family(huge)["reason"]
    assert "not a complete, well-formed safetensors file" in reason and str(1 << 40) not in reason
    flux_like = tmp_path / "flux_like.safetensors"
    header = json.dumps({"double_blocks.0.img_attn.qkv.weight": {"dtype": "F16", "shape": [9, 3],
                                                                "data_offsets": [0, 54]}}).encode()
    flux_like.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 54)
    assert routes.model_file_family(flux_like, "diffusion_models")["family"] == "flux"
    unknown = tmp_path / "vae.safetensors"
    header = json.dumps({"decoder.conv_in.weight": {"dtype": "F16", "shape": [1], "data_offsets": [0, 2]}}).encode()
    unknown.write_bytes(struct.pack("<Q", len(header)) + header + b"\0\0")
    assert routes.model_file_family(unknown)["family"] is None


def test_without_a_server_nothing_is_registered():
    assert routes.prompt_server() is None or routes.register_routes() is False


class _FakeRoutes:
    def __init__(self):
        self.paths = []

    def get(self, path):
        def add(handler):
            self.paths.append((path, handler))
            return handler
        return add


def test_registration_happens_once_per_server():
    server = type("Server", (), {})()
    server.routes = _FakeRoutes()
    assert routes.register_routes(server) is True
    assert routes.register_routes(server) is False
    assert [p for p, _ in server.routes.paths] == [routes.ROUTE_BLOCKS, routes.ROUTE_FAMILY]


@pytest.mark.e2e
def test_routes_on_the_real_server(sd15_host):
    server, ckpt, _, _ = sd15_host
    for prefix in ("", "/api"):
        status, payload = get(server, f"{prefix}/lora_lab/blocks?family=sdxl")
        assert status == 200 and payload["family"] == "sdxl"
        assert [g["name"] for g in payload["groups"]] == ["BASE", "IN", "MID", "OUT"]
    status, info = get(server, f"/lora_lab/family?kind=checkpoints&name={urllib.parse.quote(ckpt)}")
    assert status == 200 and info["family"] == "sd1" and info["evidence"] == "ComfyUI's model detection"
    status, info = get(server, "/lora_lab/family?kind=checkpoints&name=missing.safetensors")
    assert info["family"] is None and "not in the checkpoints folder" in info["reason"]
    status, info = get(server, f"/lora_lab/family?kind=checkpoints&name={urllib.parse.quote('../' + ckpt)}")
    assert info["family"] in (None, "sd1")  # normalised inside the folder, never outside it
    with pytest.raises(urllib.error.HTTPError) as err:
        get(server, "/lora_lab/family?kind=../../etc&name=passwd")
    assert err.value.code == 400
