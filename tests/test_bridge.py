"""What the bridge keeps between loads so that a strength change re-plans cheaply, and that what it
keeps never goes stale."""

from __future__ import annotations

import pytest
import torch

from testkit import fixtures, models
from testkit.host import import_pack, use_model_dirs

import_pack()
from lora_lab.lora_ops import keymap  # noqa: E402
from lora_lab.nodes import bridge  # noqa: E402
from lora_lab.nodes.loader import LoraLabLoader  # noqa: E402


@pytest.fixture(scope="module")
def fx():
    return fixtures.build("sd15")


def test_key_index_is_built_once_per_model_and_rebuilt_when_its_keys_change(fx, tmp_path, monkeypatch):
    (tmp_path / "k.safetensors").write_bytes(fx["kohya"].path.read_bytes())
    built = []
    real_init = keymap.KeyIndex.__init__

    def counting_init(self, key_map):
        built.append(len(key_map))
        real_init(self, key_map)

    monkeypatch.setattr(keymap.KeyIndex, "__init__", counting_init)
    model, clip = models.small_sd15()
    with use_model_dirs(loras_dir=tmp_path):
        reports = [LoraLabLoader().load(model, "k.safetensors", s, s, clip=clip)["result"][2] for s in (1.0, 0.5)]
        assert len(built) == 2  # the UNet's and the text encoders' indexes, once, for both strengths
        assert "targets: 354 of 354 applied (model 282 at strength 1," in reports[0]
        assert "targets: 354 of 354 applied (model 282 at strength 0.5" in reports[1]
        # a model whose parameter keys differ (another structure) gets its own index
        model.model.diffusion_model.register_parameter("extra", torch.nn.Parameter(torch.zeros(1)))
        LoraLabLoader().load(model, "k.safetensors", 1.0, 1.0, clip=clip)
        assert len(built) == 3


def test_parameter_walk_finds_what_get_parameter_finds():
    model, _ = models.small_sd15()
    root = model.model
    for key, param in root.named_parameters():
        assert bridge._parameter(root, key) is param is root.get_parameter(key)
    with pytest.raises(AttributeError):
        bridge._parameter(root, "diffusion_model.no_such_module.weight")
