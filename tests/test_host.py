"""The test host itself: ComfyUI imports in process, and a real server loads this pack."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from testkit.host import (
    PACK_NAME,
    ComfyServer,
    HostError,
    comfyui_path,
    import_comfy,
    import_pack,
    use_model_dirs,
)


def test_import_comfy_in_process_runs_on_cpu():
    import_comfy()  # idempotent: the session already did it
    import comfy.lora
    import comfy.model_management
    import comfy.model_patcher
    import comfy.sd
    import folder_paths
    import nodes

    assert comfy.model_management.get_torch_device().type == "cpu"
    assert hasattr(comfy.sd, "load_lora_for_models")
    assert hasattr(comfy.lora, "load_lora")
    assert hasattr(comfy.model_patcher, "ModelPatcher")
    assert "LoraLoader" in nodes.NODE_CLASS_MAPPINGS
    assert "CheckpointLoaderSimple" in nodes.NODE_CLASS_MAPPINGS
    assert callable(folder_paths.get_filename_list)
    # nodes.py puts <ComfyUI>/comfy first on sys.path; `utils` must still be ComfyUI's package.
    import utils

    assert hasattr(utils, "__path__") and Path(utils.__file__).parent.parent == comfyui_path()


def test_use_model_dirs_redirects_and_restores_folder_paths(tmp_path):
    import folder_paths
    import nodes

    loras, checkpoints, output = tmp_path / "loras", tmp_path / "checkpoints", tmp_path / "out"
    for folder in (loras, checkpoints, output):
        folder.mkdir()
    (loras / "style_a.safetensors").write_bytes(b"")
    (loras / "notes.txt").write_text("not a model")
    (checkpoints / "base.safetensors").write_bytes(b"")
    before = folder_paths.get_folder_paths("loras")

    with use_model_dirs(loras_dir=loras, checkpoints_dir=checkpoints, output_dir=output):
        assert folder_paths.get_filename_list("loras") == ["style_a.safetensors"]
        assert folder_paths.get_filename_list("checkpoints") == ["base.safetensors"]
        assert folder_paths.get_full_path("loras", "style_a.safetensors") == str(loras / "style_a.safetensors")
        assert folder_paths.get_output_directory() == str(output)
        # Core's loader lists what folder_paths lists.
        assert nodes.LoraLoader.INPUT_TYPES()["required"]["lora_name"][0] == ["style_a.safetensors"]
        # A file added later shows up (the cache is validated by folder mtime).
        (loras / "style_b.safetensors").write_bytes(b"")
        assert folder_paths.get_filename_list("loras") == ["style_a.safetensors", "style_b.safetensors"]

    assert folder_paths.get_folder_paths("loras") == before
    assert folder_paths.get_output_directory() != str(output)


def test_import_pack_as_lora_lab_package():
    pack = import_pack()
    assert sys.modules[PACK_NAME] is pack
    assert isinstance(pack.NODE_CLASS_MAPPINGS, dict)
    assert isinstance(pack.NODE_DISPLAY_NAME_MAPPINGS, dict)


@pytest.mark.e2e
@pytest.mark.slow
def test_server_starts_and_lists_core_and_pack_nodes(comfy_server):
    info = comfy_server.object_info()
    assert "CheckpointLoaderSimple" in info
    assert "LoraLoader" in info
    assert isinstance(info["LoraLoader"]["input"]["required"]["lora_name"][0], list)

    # start() already raises if the pack failed; check the log line ourselves as well.
    pack_line = [line for line in comfy_server.log_text().splitlines()
                 if line.rstrip().endswith(f"custom_nodes/{PACK_NAME}") and "seconds" in line]
    assert pack_line and "IMPORT FAILED" not in pack_line[0]

    pack = import_pack()
    if pack.NODE_CLASS_MAPPINGS:
        for node_id in pack.NODE_CLASS_MAPPINGS:
            assert node_id in info, f"{node_id} registered by the pack but missing from /object_info"
        assert any(node_id.startswith("LoraLab") for node_id in info)


@pytest.mark.e2e
def test_models_added_after_start_are_listed(comfy_server, tmp_path):
    lora = tmp_path / "late_lora.safetensors"
    lora.write_bytes(b"")
    name = comfy_server.add_lora(lora, name="sub/late_lora.safetensors")
    try:
        listed = comfy_server.object_info("LoraLoader")["LoraLoader"]["input"]["required"]["lora_name"][0]
        assert name in listed
    finally:
        (comfy_server.loras_dir / name).unlink()
        (comfy_server.loras_dir / "sub").rmdir()


@pytest.mark.e2e
def test_run_prompt_saves_images_and_resolves_paths(comfy_server):
    prompt = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 48, "batch_size": 2, "color": 0xFF8000}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "host_test"}},
    }
    history = comfy_server.run_prompt(prompt, timeout=120)
    files = comfy_server.output_files(history)
    assert len(files) == 2
    from PIL import Image

    for path in files:
        assert path.is_file() and path.is_relative_to(comfy_server.output_dir)
        with Image.open(path) as image:
            assert image.size == (64, 48)
            assert image.convert("RGB").getpixel((0, 0)) == (0xFF, 0x80, 0x00)


@pytest.mark.e2e
def test_run_prompt_reports_validation_errors_per_node(comfy_server):
    prompt = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": -5, "height": 48, "batch_size": 1, "color": 0}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "never"}},
    }
    with pytest.raises(HostError, match="rejected the graph") as raised:
        comfy_server.run_prompt(prompt, timeout=60)
    assert "node 1 (EmptyImage)" in str(raised.value)
    assert "width" in str(raised.value)


@pytest.mark.e2e
def test_run_prompt_reports_node_failures_with_traceback(comfy_server, tmp_path):
    bad = tmp_path / "broken.safetensors"
    bad.write_bytes(b"this is not a safetensors file")
    name = comfy_server.add_checkpoint(bad)
    prompt = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": name}},
        "2": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "3": {"class_type": "VAEDecode", "inputs": {"samples": ["2", 0], "vae": ["1", 2]}},
        "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "never"}},
    }
    try:
        with pytest.raises(HostError) as raised:
            comfy_server.run_prompt(prompt, timeout=120)
    finally:
        (comfy_server.checkpoints_dir / name).unlink()
    message = str(raised.value)
    assert "node 1 (CheckpointLoaderSimple) failed" in message
    assert "Traceback" in message or 'File "' in message


@pytest.mark.parametrize(
    ("pack_line", "expected"),
    [
        ("   0.0 seconds (IMPORT FAILED): {pack}", "failed to import the LoRA Lab pack"),
        ("   0.0 seconds: {other}", "did not import the pack"),
    ],
    ids=["import-failed", "not-imported"],
)
def test_pack_import_failure_in_log_is_an_error(tmp_path, pack_line, expected):
    server = ComfyServer(tmp_path / "host")
    pack = server.custom_nodes_dir / PACK_NAME
    server.log_path.write_text(
        f"Cannot import {pack} module for custom nodes: boom\n\nImport times for custom nodes:\n"
        + pack_line.format(pack=pack, other=server.custom_nodes_dir / "someone_else")
        + "\n"
    )
    with pytest.raises(HostError, match=expected):
        server._check_pack_imported()


def test_the_selected_host_is_the_one_imported_and_served(comfy_server):
    """``LORA_LAB_HOST`` (or ``COMFYUI_PATH``) picks the host; this process and the server run that one, the
    0.8.0 host with its own front end and templates from its site folder, never the 0.3.75 environment's."""
    import importlib.metadata

    import comfyui_version

    from testkit.host import comfyui_version as version_of
    from testkit.host import host_name, host_site_paths

    expected = version_of(comfyui_path())
    assert comfyui_version.__version__ == expected
    stats = comfy_server._request("GET", "/system_stats")
    assert stats["system"]["comfyui_version"] == expected
    if os.environ.get("COMFYUI_PATH") is None:
        assert expected == host_name()
    if expected == "0.8.0" and os.environ.get("COMFYUI_PATH") is None:
        import comfy_kitchen

        (site,) = host_site_paths()
        assert Path(comfy_kitchen.__file__).is_relative_to(site)
        assert importlib.metadata.version("comfyui-frontend-package") == "1.35.9"
        assert stats["system"]["installed_templates_version"] == stats["system"]["required_templates_version"]
        assert "Installed frontend version" not in comfy_server.log_text()  # no "older than required" warning
