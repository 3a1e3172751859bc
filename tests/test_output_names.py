"""Names of the LoRA files LoRA Lab writes (Save, Bake, Train all go through ``lora_output_path``): plain
names only, and never one that exists in any loras folder (a new file in the first folder would hide
a file of the same name in a second one from every loader)."""

from __future__ import annotations

import os
import stat

import pytest

from testkit import fixtures
from testkit.host import import_pack, use_model_dirs

import_pack()
import folder_paths  # noqa: E402

from lora_lab.lora_ops.errors import LoraLabError  # noqa: E402
from lora_lab.lora_ops.plan import load_lora  # noqa: E402
from lora_lab.nodes.lora_files import lora_output_path, output_stem  # noqa: E402
from lora_lab.nodes.merge import LoraLabSave  # noqa: E402


@pytest.fixture
def two_folders(tmp_path):
    first, second = tmp_path / "loras", tmp_path / "extra_loras"
    first.mkdir(), second.mkdir()
    with use_model_dirs(loras_dir=[first, second]):
        yield first, second


@pytest.mark.parametrize("name", [
    "evil\n.safetensors", "evil\n", "evil\r", "ev\til", "a\x00b", "../escape", "sub/name", "sub\\name", "/abs",
    "", "   ", ".hidden", "-dash", "name.", "name .safetensors", "a..b", "x" * 152, "CON", "nul.safetensors",
    "Com1", "LPT9.backup", "é", "name?", "name*", "a:b",
])
def test_odd_names_are_refused(name):
    with pytest.raises(LoraLabError, match="is not a plain file name"):
        output_stem(name)


@pytest.mark.parametrize("name,stem", [
    ("my_lora", "my_lora"), ("my_lora.safetensors", "my_lora"), ("  spaced name  ", "spaced name"),
    ("v1.2+final-3", "v1.2+final-3"), ("x" * 151, "x" * 151), ("CONSOLE", "CONSOLE"), ("console", "console"),
])
def test_plain_names_are_kept(name, stem):
    assert output_stem(name) == stem


def test_new_names_go_to_the_first_folder(two_folders):
    first, _ = two_folders
    assert lora_output_path("fresh", overwrite=False) == first.resolve() / "fresh.safetensors"


def test_a_name_in_the_second_folder_is_refused_even_with_overwrite(two_folders):
    first, second = two_folders
    (second / "shared.safetensors").write_bytes(b"theirs")
    assert folder_paths.get_full_path("loras", "shared.safetensors") == str(second.resolve() / "shared.safetensors")
    for overwrite in (False, True):
        with pytest.raises(LoraLabError, match=f"already exists in the loras folder {second.resolve()}.*hide it"):
            lora_output_path("shared", overwrite=overwrite)
    assert list(first.iterdir()) == []


def test_a_broken_link_in_the_second_folder_counts_as_taken(two_folders):
    _, second = two_folders
    (second / "dangling.safetensors").symlink_to(second / "gone.safetensors")
    with pytest.raises(LoraLabError, match="already exists"):
        lora_output_path("dangling", overwrite=False)


def test_a_name_in_the_first_folder_needs_overwrite(two_folders):
    first, _ = two_folders
    (first / "mine.safetensors").write_bytes(b"mine")
    with pytest.raises(LoraLabError, match="already exists in the loras folder.*enable overwrite"):
        lora_output_path("mine", overwrite=False)
    assert lora_output_path("mine", overwrite=True) == first.resolve() / "mine.safetensors"


def test_save_node_refuses_the_second_folders_name_and_writes_0644(two_folders):
    first, second = two_folders
    lora = load_lora(fixtures.build("sd15")["kohya"].path)
    (second / "taken.safetensors").write_bytes(b"theirs")
    with pytest.raises(LoraLabError, match="would hide it"):
        LoraLabSave().save(lora, "taken", overwrite=True)
    with pytest.raises(LoraLabError, match="not a plain file name"):
        LoraLabSave().save(lora, "evil\n.safetensors")
    assert list(first.iterdir()) == [] and (second / "taken.safetensors").read_bytes() == b"theirs"
    out = LoraLabSave().save(lora, "saved")["result"][0]
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o666 & ~umask
