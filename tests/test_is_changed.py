"""A LoRA or image file replaced on disk, even by one of the same size and mtime, is read again: the
loader's cache keys on content, and every node that reads a file by name has ``IS_CHANGED`` returning the
files' content digest, so ComfyUI re-runs an identical prompt after a file changed (and only then)."""

from __future__ import annotations

import os

import pytest
import torch
from safetensors.torch import save_file

from testkit.host import import_pack, use_model_dirs

import_pack()
from lora_lab.lora_ops.safeio import file_sha256  # noqa: E402
from lora_lab.nodes import NODE_CLASS_MAPPINGS  # noqa: E402
from lora_lab.nodes.lora_files import cached_lora  # noqa: E402

MODULE = "lora_unet_input_blocks_1_1_transformer_blocks_0_attn1_to_q"


def write_lora(path, alpha: float, seed: int = 0):
    """A one-layer kohya LoRA; files with different ``alpha`` have the same size."""
    gen = torch.Generator().manual_seed(seed)
    save_file({f"{MODULE}.lora_down.weight": torch.randn(4, 320, generator=gen),
               f"{MODULE}.lora_up.weight": torch.randn(320, 4, generator=gen),
               f"{MODULE}.alpha": torch.tensor(alpha)}, str(path))
    return path


def replace_keeping_size_and_mtime(path, alpha: float):
    before = path.stat()
    write_lora(path, alpha)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = path.stat()
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)


@pytest.fixture
def loras(tmp_path):
    folder = tmp_path / "loras"
    folder.mkdir()
    with use_model_dirs(loras_dir=folder, input_dir=tmp_path / "input"):
        yield folder


def test_cache_serves_the_new_content_of_a_same_size_same_mtime_file(loras):
    path = write_lora(loras / "a.safetensors", alpha=4.0)
    first = cached_lora(str(path))
    assert cached_lora(str(path)) is first  # unchanged: served from the cache
    replace_keeping_size_and_mtime(path, alpha=8.0)
    second = cached_lora(str(path))
    assert second is not first
    assert float(second.file.tensors[f"{MODULE}.alpha"]) == 8.0
    assert second.content_sha256() == file_sha256(path)


FILE_READERS = {  # node -> the widget inputs that name a LoRA file
    "LoraLabLoader": ["lora_name"], "LoraLabStack": ["lora_name"], "LoraLabInspect": ["lora_name"],
    "LoraLabBake": ["lora_name"], "LoraLabSweep": ["lora_name", "lora_name_b"], "LoraLabTrain": ["resume_from"],
}


@pytest.mark.parametrize("node,inputs", FILE_READERS.items())
def test_is_changed_follows_the_content_of_every_named_file(loras, node, inputs):
    cls = NODE_CLASS_MAPPINGS[node]
    for key in inputs:
        path = write_lora(loras / f"{key}.safetensors", alpha=4.0)
        widgets = {"block_weights": "", "strength_model": 1.0, key: path.name}
        first = cls.IS_CHANGED(**widgets)
        assert cls.IS_CHANGED(**widgets) == first
        replace_keeping_size_and_mtime(path, alpha=8.0)
        second = cls.IS_CHANGED(**widgets)
        assert second != first and file_sha256(path) in second


def test_every_node_reading_a_file_by_name_has_is_changed():
    for name, cls in NODE_CLASS_MAPPINGS.items():
        widgets = cls.INPUT_TYPES().get("required", {}) | cls.INPUT_TYPES().get("optional", {})
        if {"lora_name", "lora_name_b", "resume_from", "image_folder"} & set(widgets):
            assert hasattr(cls, "IS_CHANGED"), name


def test_missing_files_give_a_marker_not_an_error(loras):
    value = NODE_CLASS_MAPPINGS["LoraLabLoader"].IS_CHANGED(lora_name="nowhere.safetensors")
    assert "missing:nowhere.safetensors" in value


def test_user_presets_are_part_of_the_fingerprint(loras, tmp_path):
    import folder_paths

    from lora_lab.nodes.lora_files import user_presets_path

    old = folder_paths.get_user_directory()
    folder_paths.set_user_directory(str(tmp_path / "user"))
    try:
        cls = NODE_CLASS_MAPPINGS["LoraLabLoader"]
        write_lora(loras / "a.safetensors", alpha=4.0)
        before = cls.IS_CHANGED(lora_name="a.safetensors", block_weights="MINE")
        user_presets_path().parent.mkdir(parents=True)
        user_presets_path().write_text('{"MINE": "OUT*=0"}')
        assert cls.IS_CHANGED(lora_name="a.safetensors", block_weights="MINE") != before
    finally:
        folder_paths.set_user_directory(old)


def test_train_fingerprints_the_image_folder_inside_the_input_folder(loras, tmp_path):
    from PIL import Image

    cls = NODE_CLASS_MAPPINGS["LoraLabTrain"]
    folder = tmp_path / "input" / "set"
    folder.mkdir(parents=True)
    Image.new("RGB", (8, 8), (1, 2, 3)).save(folder / "0.png")
    (folder / "0.txt").write_text("a caption")
    first = cls.IS_CHANGED(image_folder="set", resume_from="none")
    assert cls.IS_CHANGED(image_folder="set", resume_from="none") == first
    (folder / "0.txt").write_text("b caption")
    assert cls.IS_CHANGED(image_folder="set", resume_from="none") != first
    # a folder training refuses is never listed: the same marker whether it exists or not
    outside = cls.IS_CHANGED(image_folder=str(tmp_path), resume_from="none")
    assert outside == cls.IS_CHANGED(image_folder=str(tmp_path / "nope"), resume_from="none")
    assert "refused" in outside


@pytest.mark.e2e
def test_identical_prompt_after_a_file_change_runs_again_on_the_server(comfy_server):
    path = write_lora(comfy_server.loras_dir / "swapped.safetensors", alpha=4.0)
    prompt = {"1": {"class_type": "LoraLabInspect", "inputs": {"lora_name": path.name}}}

    def report() -> str:
        history = comfy_server.run_prompt(prompt, timeout=120)
        return history["outputs"]["1"]["text"][0]

    first = report()
    assert "alpha: 4" in first
    replace_keeping_size_and_mtime(path, alpha=8.0)
    second = report()
    assert "alpha: 8" in second and "alpha: 4" not in second
    assert report() == second  # unchanged again: ComfyUI may serve its cache
