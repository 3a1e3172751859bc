"""End to end on the real host: a full-size SD1.5-architecture checkpoint, LoraLabLoader, KSampler."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from testkit.workflows import txt2img

pytestmark = pytest.mark.e2e


def _image(server, prompt) -> tuple[np.ndarray, dict]:
    history = server.run_prompt(prompt)
    files = server.output_files(history)
    assert len(files) == 1
    return np.asarray(Image.open(files[0]).convert("RGB")), history


def _report(history) -> str:
    return history["outputs"]["lora"]["text"][0]


def test_lora_changes_the_image_and_nothing_leaks_into_the_shared_model(sd15_host):
    server, ckpt, loras, full = sd15_host
    plain, _ = _image(server, txt2img(ckpt, "e2e_plain"))
    with_lora, history = _image(server, txt2img(ckpt, "e2e_lora", lora=loras["kohya"], strength_model=1.0))
    assert np.abs(with_lora.astype(int) - plain.astype(int)).mean() > 1.0, "the LoRA did not change the image"
    report = _report(history)
    n = full["kohya"].meta["file_targets"]
    assert f"targets: {n} of {n} applied" in report, report
    again, _ = _image(server, txt2img(ckpt, "e2e_plain_again"))
    assert np.array_equal(again, plain), "the run after the LoRA run differs from the plain image"


def test_diffusers_format_file_is_applied_fully_where_core_is_not(sd15_host):
    server, ckpt, loras, full = sd15_host
    _, history = _image(server, txt2img(ckpt, "e2e_diffusers", lora=loras["diffusers"]))
    n = full["diffusers"].meta["file_targets"]
    assert f"targets: {n} of {n} applied" in _report(history)


def test_strength_change_and_core_loraloader_alongside(sd15_host):
    server, ckpt, loras, _ = sd15_host
    a, _ = _image(server, txt2img(ckpt, "e2e_s05", lora=loras["kohya"], strength_model=0.5))
    b, _ = _image(server, txt2img(ckpt, "e2e_s10", lora=loras["kohya"], strength_model=1.0))
    assert not np.array_equal(a, b)
    # the same file once through core LoraLoader and once through ours, at 0.5 each, equals ours at 1.0
    both, _ = _image(server, txt2img(ckpt, "e2e_core_and_ours", lora=loras["kohya"], core_lora=loras["kohya"],
                                     strength_model=0.5, strength_clip=1.0))
    ours_full, _ = _image(server, txt2img(ckpt, "e2e_ours_full", lora=loras["kohya"], strength_model=1.0,
                                          strength_clip=2.0))
    assert np.abs(both.astype(int) - ours_full.astype(int)).max() <= 2


def test_block_weights_change_the_image_and_all_equals_the_plain_load(sd15_host):
    server, ckpt, loras, _ = sd15_host
    plain_lora, _ = _image(server, txt2img(ckpt, "e2e_bw_plain", lora=loras["kohya"]))
    all_blocks, _ = _image(server, txt2img(ckpt, "e2e_bw_all", lora=loras["kohya"], block_weights="ALL"))
    assert np.array_equal(all_blocks, plain_lora)
    weighted, history = _image(server, txt2img(ckpt, "e2e_bw_outd", lora=loras["kohya"], block_weights="OUTD"))
    assert np.abs(weighted.astype(int) - plain_lora.astype(int)).mean() > 0.5
    assert "block weights:" in _report(history)
