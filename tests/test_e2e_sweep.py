"""LoraLabSweep through the real server's ``/prompt``: the grid is saved with the workflow and a JSON
report, its reference cell is the plain image pixel for pixel, the shared model is unchanged after it,
and the cancel button stops it without writing a grid."""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest
from PIL import Image

from testkit.host import HostError
from testkit.workflows import Sampling, sweep, txt2img

pytestmark = pytest.mark.e2e

FAST = Sampling(steps=1)


def _plain(server, ckpt, prefix):
    files = server.output_files(server.run_prompt(txt2img(ckpt, prefix, sampling=FAST)))
    return np.asarray(Image.open(files[0]).convert("RGB"))


def test_sweep_grid_report_and_no_leak(sd15_host):
    server, ckpt, loras, _ = sd15_host
    plain = _plain(server, ckpt, "sweep_plain_before")
    history = server.run_prompt(sweep(ckpt, loras["kohya"], "lora_lab/e2e_sweep", sampling=FAST))
    ui = history["outputs"]["sweep"]
    payload = ui["lora_lab_sweep"][0]
    saved = ui["images"][0]
    grid_path = server.output_dir / saved["subfolder"] / saved["filename"]
    assert grid_path.exists() and saved["type"] == "output"
    with Image.open(grid_path) as im:
        workflow = json.loads(im.text["prompt"])
        assert workflow["sweep"]["class_type"] == "LoraLabSweep"
        grid = np.asarray(im.convert("RGB"))
    report = json.loads(grid_path.with_suffix(".json").read_text())
    assert report["weights"] == [0.5, 1.0] and report["mode"].startswith("batched")
    assert [c["label"] for c in payload["columns"]] == ["no LoRA", "0.5", "1"]
    lay = payload["layout"]
    assert (lay["width"], lay["height"]) == (grid.shape[1], grid.shape[0])
    ref_cell = grid[lay["top"]:lay["top"] + lay["cell_h"], lay["left"]:lay["left"] + lay["cell_w"]]
    assert np.array_equal(ref_cell, plain), "the grid's reference cell is not the plain image"
    x = lay["left"] + 2 * (lay["cell_w"] + lay["gap"])
    lora_cell = grid[lay["top"]:lay["top"] + lay["cell_h"], x:x + lay["cell_w"]]
    assert np.abs(lora_cell.astype(int) - plain.astype(int)).mean() > 1.0
    assert np.array_equal(_plain(server, ckpt, "sweep_plain_after"), plain), "the sweep leaked into the shared model"


def test_cancel_stops_the_sweep_without_writing_a_grid(sd15_host):
    server, ckpt, loras, _ = sd15_host
    plain = _plain(server, ckpt, "sweep_cancel_plain")
    before = set((server.output_dir / "lora_lab").glob("cancelled*")) if (server.output_dir / "lora_lab").exists() \
        else set()
    outcome: dict = {}

    def run():
        try:
            server.run_prompt(sweep(ckpt, loras["kohya"], "lora_lab/cancelled", weight_count=4,
                                    sampling=Sampling(steps=200)))
            outcome["result"] = "finished"
        except HostError as exc:
            outcome["result"] = str(exc)

    thread = threading.Thread(target=run)
    thread.start()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not server._request("GET", "/queue")["queue_running"]:
        time.sleep(0.2)
    time.sleep(3.0)  # into the sampling steps
    started = time.monotonic()
    server._request("POST", "/interrupt", {})
    thread.join(timeout=120)
    assert not thread.is_alive()
    assert "interrupted" in outcome["result"], outcome["result"]
    assert time.monotonic() - started < 60, "the sweep did not stop at the next step"
    after = set((server.output_dir / "lora_lab").glob("cancelled*")) if (server.output_dir / "lora_lab").exists() \
        else set()
    assert after == before, "a cancelled sweep wrote files"
    assert np.array_equal(_plain(server, ckpt, "sweep_cancel_plain_after"), plain)
