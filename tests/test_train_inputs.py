"""Bad training inputs get LoraLabTrain's own error before anything runs or is written: image folders
outside ComfyUI's input folder, oversized images, non-finite settings, resume files whose metadata is
not what LoraLabTrain writes, names an earlier run left in another loras folder."""

from __future__ import annotations

import json
import os
import struct
import zlib

import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from testkit import models
from testkit.host import import_pack, use_model_dirs

import_pack()
from lora_lab.lora_ops.errors import LoraLabError  # noqa: E402
from lora_lab.nodes import train as train_node  # noqa: E402
from lora_lab.train.checkpoint import ResumeError, read_checkpoint  # noqa: E402
from lora_lab.train.data import MAX_IMAGE_PIXELS, TrainDataError, images_from_folder, read_image  # noqa: E402
from lora_lab.train.settings import TrainSettings, TrainSettingsError  # noqa: E402


@pytest.fixture
def dirs(tmp_path):
    """``(input folder, loras folder, a folder outside both)``, with ComfyUI pointed at the first two."""
    input_dir, loras, outside = tmp_path / "input", tmp_path / "loras", tmp_path / "outside"
    for folder in (input_dir, loras, outside):
        folder.mkdir()
    with use_model_dirs(loras_dir=loras, input_dir=input_dir):
        yield input_dir, loras, outside


def dataset(folder, count=2, size=(64, 64)):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        Image.new("RGB", size, (50 * i, 90, 200)).save(folder / f"{i}.png")
        (folder / f"{i}.txt").write_text(f"zxq, image {i}")
    return folder


def png_header_only(path, width, height):
    """A PNG whose header claims ``width x height`` (a few dozen bytes; decoding it would fail)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16))
                     + chunk(b"IEND", b""))
    return path


# --- image_folder stays inside ComfyUI's input folder ---------------------------------------------

def test_relative_and_absolute_folders_inside_the_input_folder_are_read(dirs):
    input_dir, _, _ = dirs
    dataset(input_dir / "set")
    for text in ("set", str(input_dir / "set"), "  set/  "):
        folder, roots = train_node.resolve_image_folder(text)
        assert folder == (input_dir / "set").resolve()
        assert [im.source for im in images_from_folder(folder, allowed_roots=roots)] == ["0.png", "1.png"]


@pytest.mark.parametrize("text,words", [
    ("../outside", "no '..'"),
    ("set/../../outside", "no '..'"),
    ("..", "no '..'"),
    ("~", "no '~'"),
    ("~/data", "no '~'"),
    ("~root", "no '~'"),
    ("set\n", None),  # stripped: a trailing newline is only whitespace around the name
    ("se\x00t", "not a plain folder path"),
    ("/etc", "outside ComfyUI's input folder"),
    ("OUTSIDE_ABS", "outside ComfyUI's input folder"),
    ("link_out", "outside ComfyUI's input folder"),
])
def test_folders_outside_the_input_folder_are_refused(dirs, text, words):
    input_dir, _, outside = dirs
    dataset(input_dir / "set")
    dataset(outside)
    (input_dir / "link_out").symlink_to(outside, target_is_directory=True)
    text = text.replace("OUTSIDE_ABS", str(outside))
    if words is None:
        assert train_node.resolve_image_folder(text)[0] == (input_dir / "set").resolve()
        return
    with pytest.raises(TrainDataError, match=words) as err:
        train_node.resolve_image_folder(text)
    assert str(input_dir) in err.value.fix


def test_refusal_does_not_tell_whether_the_path_exists(dirs):
    _, _, outside = dirs
    messages = set()
    for target in (outside, outside / "no_such_folder"):
        with pytest.raises(TrainDataError) as err:
            train_node.resolve_image_folder(str(target))
        messages.add(str(err.value).replace(str(target), "PATH"))
    assert len(messages) == 1


def test_an_admin_allow_list_is_an_explicit_setting(dirs, monkeypatch):
    _, _, outside = dirs
    dataset(outside)
    with pytest.raises(TrainDataError, match="outside"):
        train_node.resolve_image_folder(str(outside))
    monkeypatch.setenv(train_node.IMAGE_FOLDERS_ENV, os.pathsep.join(["relative/ignored", str(outside)]))
    folder, roots = train_node.resolve_image_folder(str(outside))
    assert folder == outside.resolve() and len(images_from_folder(folder, allowed_roots=roots)) == 2


def test_image_and_caption_links_leaving_the_folder_are_refused(dirs):
    input_dir, _, outside = dirs
    folder = dataset(input_dir / "set")
    (outside / "secret.txt").write_text("a caption from outside")
    (folder / "1.txt").unlink()
    (folder / "1.txt").symlink_to(outside / "secret.txt")
    folder, roots = train_node.resolve_image_folder("set")
    with pytest.raises(TrainDataError, match="links to a file outside the allowed folders"):
        images_from_folder(folder, allowed_roots=roots)


def test_prepare_refuses_a_folder_outside_before_writing(dirs):
    _, loras, outside = dirs
    dataset(outside)
    with torch.inference_mode():
        patcher, _ = models.small_sd15()
    with pytest.raises(TrainDataError, match="outside ComfyUI's input folder"):
        train_node.prepare(patcher, TrainSettings(resolution=64, steps=1), image_folder=str(outside))
    assert list(loras.iterdir()) == []


# --- oversized and damaged images ---------------------------------------------------------------------

def test_a_20000_square_image_gets_our_error_not_pils(dirs):
    input_dir, _, _ = dirs
    folder = dataset(input_dir / "set", count=1)
    png_header_only(folder / "0.png", 20000, 20000)  # PIL itself raises DecompressionBombError for this
    with pytest.raises(Image.DecompressionBombError):
        Image.open(folder / "0.png")
    folder, roots = train_node.resolve_image_folder("set")
    with pytest.raises(TrainDataError, match="'0.png' is too large") as err:
        images_from_folder(folder, allowed_roots=roots)
    assert "downscale" in err.value.fix


def test_size_is_checked_before_decoding(tmp_path):
    # 9000 x 9000 is below PIL's own limit and above ours; the file's data is not a real image, so only a
    # check made from the header before decoding can name the size
    path = png_header_only(tmp_path / "big.png", 9000, 9000)
    assert 9000 * 9000 > MAX_IMAGE_PIXELS
    with pytest.raises(TrainDataError, match=r"'big.png' is too large \(9000x9000\)"):
        read_image(path)


@pytest.mark.parametrize("content", [b"", b"not an image", b"\x89PNG\r\n\x1a\n" + b"\0" * 40,
                                     b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n"])
def test_damaged_or_foreign_files_get_our_error(tmp_path, content):
    path = tmp_path / "x.png"
    path.write_bytes(content)
    with pytest.raises(TrainDataError, match="could not be read as a PNG, JPEG, WebP or BMP image"):
        read_image(path)


# --- non-finite settings ------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["noise_offset", "min_snr_gamma", "alpha", "learning_rate", "caption_dropout"])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_settings_are_refused(name, value):
    with pytest.raises(TrainSettingsError, match=f"{name} is {value}, not a finite number"):
        TrainSettings(**{name: value}).validate()


def test_prepare_refuses_nan_before_anything_runs(dirs):
    _, loras, _ = dirs
    with torch.inference_mode():
        patcher, _ = models.small_sd15()
    for name in ("noise_offset", "min_snr_gamma"):
        with pytest.raises(TrainSettingsError, match=f"{name} is nan, not a finite number"):
            train_node.prepare(patcher, TrainSettings(resolution=64, steps=1, **{name: float("nan")}),
                               images=torch.zeros(1, 64, 64, 3), captions="a")
    assert list(loras.iterdir()) == []


# --- resume files ------------------------------------------------------------------------------------------

def fake_checkpoint(folder, name="ckpt.safetensors", **meta):
    metadata = {"lora_lab.train.settings": TrainSettings().to_json(), "lora_lab.train.state_file": "ckpt.lora_lab_state",
                "lora_lab.train.step": "3"}
    metadata.update(meta)
    path = folder / name
    save_file({"lora_unet_x.lora_up.weight": torch.zeros(2, 1)}, str(path), metadata=metadata)
    return path


@pytest.mark.parametrize("state_file", ["../x", "../x.lora_lab_state", "/etc/passwd", "sub/a.lora_lab_state",
                                        "..lora_lab_state", "a\\..\\b.lora_lab_state", "", ".lora_lab_state",
                                        "ckpt.safetensors", "a.lora_lab_state\n"])
def test_resume_metadata_naming_a_path_is_refused(dirs, state_file):
    _, loras, _ = dirs
    path = fake_checkpoint(loras, **{"lora_lab.train.state_file": state_file})
    with pytest.raises(ResumeError, match="not a plain '\\*.lora_lab_state' file name beside it"):
        read_checkpoint(path)


def test_resume_through_prepare_names_the_problem(dirs):
    _, loras, _ = dirs
    fake_checkpoint(loras, **{"lora_lab.train.state_file": "../x"})
    with torch.inference_mode():
        patcher, _ = models.small_sd15()
    with pytest.raises(ResumeError, match="'ckpt.safetensors' names its training state '../x'"):
        train_node.prepare(patcher, TrainSettings(resolution=64, steps=5), images=torch.zeros(1, 64, 64, 3),
                           captions="a", resume_from="ckpt.safetensors")


@pytest.mark.parametrize("settings,words", [
    ("{not json", "not valid JSON"),
    ("[1, 2]", "not a JSON object"),
    (json.dumps({"rank": "8"}), "rank is \"8\", not a int"),
    (json.dumps({"buckets": 1}), "buckets is 1, not a bool"),
    ('{"noise_offset": NaN}', None),  # parsed; validate() refuses it on resume
    ("[" * 100_000, "not valid JSON"),
])
def test_resume_settings_of_the_wrong_shape_are_refused(settings, words):
    if words is None:
        with pytest.raises(TrainSettingsError, match="noise_offset is nan"):
            TrainSettings.from_json(settings).validate()
        return
    with pytest.raises(TrainSettingsError, match=words):
        TrainSettings.from_json(settings)


@pytest.mark.parametrize("step", ["x", "-1", "1e3", "", "99999999999999"])
def test_resume_step_that_is_not_a_number_is_refused(dirs, step):
    _, loras, _ = dirs
    path = fake_checkpoint(loras, **{"lora_lab.train.step": step})
    save_file({"master.x": torch.zeros(1)}, str(loras / "ckpt.lora_lab_state"), metadata={"lora_lab.train.step": step})
    from lora_lab.lora_ops.safeio import file_sha256

    path = fake_checkpoint(loras, **{"lora_lab.train.step": step,
                                     "lora_lab.train.state_sha256": file_sha256(loras / "ckpt.lora_lab_state")})
    with pytest.raises(ResumeError, match="not a whole number"):
        read_checkpoint(path)


# --- names an earlier run left in any loras folder -----------------------------------------------------------

def test_checkpoints_of_an_earlier_run_in_a_second_loras_folder_are_found(tmp_path):
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir(), second.mkdir()
    (second / "run-step000010.safetensors").write_bytes(b"x")
    with use_model_dirs(loras_dir=[first, second]):
        with torch.inference_mode():
            patcher, _ = models.small_sd15()
        for overwrite in (False, True):
            with pytest.raises(LoraLabError, match=f"earlier run named 'run' are in the loras folder.*{second.name}"):
                train_node.prepare(patcher, TrainSettings(output_name="run", resolution=64, steps=1),
                                   images=torch.zeros(1, 64, 64, 3), captions="a", overwrite=overwrite)
    assert list(first.iterdir()) == []
