"""End to end on the real host: a stack applied in one pass, and its concat merge saved and reloaded."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from testkit.workflows import merge_and_save, stack_txt2img, txt2img

pytestmark = pytest.mark.e2e


def _image(server, prompt):
    history = server.run_prompt(prompt)
    (path,) = server.output_files(history)
    return np.asarray(Image.open(path).convert("RGB")).astype(int), history


def test_stack_samples_and_its_concat_merge_gives_the_same_image(sd15_host):
    server, ckpt, loras, _ = sd15_host
    rows = [(loras["kohya"], 0.7, 0.5), (loras["diffusers"], -0.4, 0.8)]
    plain, _ = _image(server, txt2img(ckpt, "e2e_stack_plain"))
    stacked, history = _image(server, stack_txt2img(ckpt, "e2e_stack", rows))
    assert np.abs(stacked - plain).mean() > 0.5
    assert history["outputs"]["apply"]["text"][0].count("targets:") == 2
    saved = server.run_prompt(merge_and_save(ckpt, rows, "e2e_merged_concat"))
    assert "e2e_merged_concat.safetensors" in saved["outputs"]["save"]["text"][0]
    merged, _ = _image(server, txt2img(ckpt, "e2e_stack_merged", lora="e2e_merged_concat.safetensors"))
    assert np.abs(merged - stacked).max() <= 2, "the saved concat merge renders differently from the stack"
