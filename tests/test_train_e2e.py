"""LoraLabTrain end to end: a real ComfyUI server, the full-size SD1.5-architecture checkpoint, one /prompt
that trains (1 step at 64x64), saves into the loras folder, checks parity and samples with the trained MODEL."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image
from safetensors import safe_open

from testkit import models
from testkit.train_workflows import train_graph


def test_train_through_prompt(comfy_server):
    ckpt = comfy_server.add_checkpoint(models.sd15_checkpoint())
    pixels = np.zeros((64, 64, 3), dtype=np.uint8)
    pixels[:, :32] = (220, 30, 30)
    pixels[:, 32:] = (30, 30, 220)
    Image.fromarray(pixels).save(comfy_server.input_dir / "train_e2e.png")

    history = comfy_server.run_prompt(train_graph(ckpt, "train_e2e.png", "zxq style, red, blue", "train_e2e",
                                                  output_name="e2e_trained", overwrite=True, steps=1,
                                                  preview_every=1, preview_steps=1), timeout=900)

    lora = comfy_server.loras_dir / "e2e_trained.safetensors"
    assert lora.is_file() and (comfy_server.loras_dir / "e2e_trained.lora_lab_state").is_file()
    assert not list(comfy_server.loras_dir.glob(".*.tmp"))
    with safe_open(str(lora), framework="pt") as f:
        meta = f.metadata()
        keys = list(f.keys())
    assert meta["ss_steps"] == "1" and meta["modelspec.architecture"] == "stable-diffusion-v1/lora"
    assert json.loads(meta["lora_lab.train.settings"])["resolution"] == 64
    # attention+mlp on SD1.5: 16 transformer blocks x (8 attention + 2 feed-forward + 2 proj) = 192 layers
    assert sum(k.endswith(".lora_up.weight") for k in keys) == 192

    report = "\n".join(history["outputs"]["train"]["text"])
    assert "saved file through LoraLabLoader" in report and "192 weights patched" in report
    names = [p.name for p in comfy_server.output_files(history)]
    assert any(n.startswith("train_e2e_sample") for n in names)
    assert any(n.startswith("train_e2e_loss") for n in names)
    assert any(n.startswith("train_e2e_previews") for n in names)
