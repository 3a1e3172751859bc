"""Stacks on real ComfyUI models: order independence, one pass, normalisation, bad input."""

from __future__ import annotations

import comfy.model_management as mm
import comfy.sd
import pytest
import torch

from testkit import fixtures, models
from testkit.host import import_pack, use_model_dirs

import_pack()
from lora_lab.lora_ops import errors  # noqa: E402
from lora_lab.nodes import bridge  # noqa: E402
from lora_lab.nodes.stack import LoraLabApplyStack, LoraLabStack  # noqa: E402

NAMES = ["kohya", "locon", "loha", "lokr", "dora"]


@pytest.fixture(scope="module")
def fx():
    return {"sd15": fixtures.build("sd15"), "sdxl": fixtures.build("sdxl")}


@pytest.fixture
def loras(fx, tmp_path):
    for fam in ("sd15", "sdxl"):
        for name, f in fx[fam].items():
            (tmp_path / f"{fam}_{name}.safetensors").write_bytes(f.path.read_bytes())
    with use_model_dirs(loras_dir=tmp_path):
        yield tmp_path


def _stack(rows):
    stack = None
    for name, sm, sc in rows:
        (stack,) = LoraLabStack().add(name, sm, sc, "", True, lora_stack=stack)
    return stack


def _loaded(patcher):
    mm.load_models_gpu([patcher])
    return {k: v.detach().clone() for k, v in patcher.model.state_dict().items()}


def _apply(model, clip, stack, normalization="none", target=1.0):
    return LoraLabApplyStack().apply(model, stack, normalization, target, clip=clip)["result"]


def test_stack_is_order_independent_dora_included(loras):
    model, clip = models.small_sd15()
    rows = [(f"sd15_{n}.safetensors", 0.3 + 0.1 * i, 0.5) for i, n in enumerate(NAMES)]
    results = []
    for order in (rows, rows[::-1], rows[2:] + rows[:2]):
        new_model, _, report = _apply(model, clip, _stack(order))
        results.append(_loaded(new_model))
    for other in results[1:]:
        for k in results[0]:
            torch.testing.assert_close(other[k], results[0][k], rtol=1e-6, atol=1e-6)
    assert report.count("targets:") == len(NAMES)


def test_stack_equals_chained_core_loraloaders_for_plain_loras(loras, fx):
    model, clip = models.small_sd15()
    rows = [("sd15_kohya.safetensors", 0.7, 0.4), ("sd15_loha.safetensors", -0.5, 1.0), ("sd15_lokr.safetensors", 1.2, 0.0)]
    new_model, new_clip, _ = _apply(model, clip, _stack(rows))
    ours = {**_loaded(new_model), **_loaded(new_clip.patcher)}
    m, c = model, clip
    for name, sm, sc in rows:
        m, c = comfy.sd.load_lora_for_models(m, c, fx["sd15"][name.split("_", 1)[1].split(".")[0]].state_dict(), sm, sc)
    core = {**_loaded(m), **_loaded(c.patcher)}
    for k in ours:
        torch.testing.assert_close(ours[k], core[k], rtol=1e-4, atol=1e-6)


def test_stack_is_one_clone_with_one_application(loras):
    model, clip = models.small_sd15()
    new_model, _, _ = _apply(model, clip, _stack([("sd15_kohya.safetensors", 1, 1), ("sd15_locon.safetensors", 1, 1)]))
    assert new_model.parent is model
    assert len(new_model.get_injections(bridge.INJECTION_KEY)) == 1


def test_disabled_rows_are_skipped_and_empty_stack_is_refused(loras):
    model, clip = models.small_sd15()
    (stack,) = LoraLabStack().add("sd15_kohya.safetensors", 1.0, 1.0, "", False)
    with pytest.raises(errors.LoraLabError, match="no enabled rows"):
        _apply(model, clip, stack)


def test_mixed_families_and_missing_files_are_refused(loras):
    model, clip = models.small_sd15()
    with pytest.raises(errors.LoraLabError, match="different base models") as err:
        _apply(model, clip, _stack([("sd15_kohya.safetensors", 1, 1), ("sdxl_kohya.safetensors", 1, 1)]))
    assert "SDXL" in str(err.value) and "SD1.x" in str(err.value)
    with pytest.raises(errors.LoraFileError, match="not in ComfyUI's loras folder"):
        _apply(model, clip, _stack([("missing.safetensors", 1, 1)]))


def test_normalisation_sum_and_norm(loras):
    model, clip = models.small_sd15()
    base = _loaded(model)
    rows = [("sd15_kohya.safetensors", 1.0, 1.0), ("sd15_locon.safetensors", 1.0, 1.0)]
    plain = _loaded(_apply(model, clip, _stack(rows))[0])
    summed_model, _, report = _apply(model, clip, _stack(rows), "sum", 1.0)
    summed = _loaded(summed_model)
    assert "scaled by 0.5" in report
    for k in base:
        torch.testing.assert_close(summed[k] - base[k], 0.5 * (plain[k] - base[k]), rtol=1e-4, atol=1e-6)
    normed_model, _, report = _apply(model, clip, _stack(rows), "norm", 1.0)
    normed = _loaded(normed_model)
    single = _loaded(_apply(model, clip, _stack(rows[:1]))[0])
    single_norm = sum(((single[k] - base[k]).double() ** 2).sum() for k in base) ** 0.5
    locon = _loaded(_apply(model, clip, _stack(rows[1:]))[0])
    locon_norm = sum(((locon[k] - base[k]).double() ** 2).sum() for k in base) ** 0.5
    normed_norm = sum(((normed[k] - base[k]).double() ** 2).sum() for k in base) ** 0.5
    assert abs(normed_norm - max(single_norm, locon_norm)) / normed_norm < 1e-3
    with pytest.raises(errors.LoraLabError, match="Unknown normalisation"):
        _apply(model, clip, _stack(rows), "loudest", 1.0)


def test_conflict_report_finds_a_lora_fighting_its_negative(loras, fx, tmp_path):

    from lora_lab.nodes.stack import LoraLabConflicts

    # the same LoRA at -1 fights itself everywhere: cosine -1 and every sign opposite; at +1 it agrees
    model, _ = models.small_sd15()
    report, chart = LoraLabConflicts().analyse(
        model, _stack([("sd15_kohya.safetensors", 1.0, 1.0), ("sd15_kohya.safetensors", -0.5, 1.0)]))["result"]
    cos = [float(line.split("cos ")[1].split()[0]) for line in report.splitlines() if " cos " in line]
    assert cos and all(abs(c + 1) < 1e-4 for c in cos)
    assert all("opposite signs 100.0%" in line for line in report.splitlines() if " cos " in line)
    assert "fight" in report
    assert chart.ndim == 4 and chart.shape[0] == 1 and chart.shape[-1] == 3 and 0 <= chart.min() and chart.max() <= 1
    # two unrelated LoRAs: cosines match an independent computation on the dense deltas
    report, _ = LoraLabConflicts().analyse(
        model, _stack([("sd15_kohya.safetensors", 1.0, 1.0), ("sd15_locon.safetensors", 1.0, 1.0)]))["result"]
    ref_a, ref_b = fx["sd15"]["kohya"].reference(), fx["sd15"]["locon"].reference()
    from lora_lab.lora_ops.blocks import block_of

    acc = {}
    for k in set(ref_a) & set(ref_b):
        a, b = ref_a[k].double(), ref_b[k].double()
        s = acc.setdefault(block_of("sd1", k), [0.0, 0.0, 0.0])
        s[0] += float((a * b).sum()); s[1] += float((a * a).sum()); s[2] += float((b * b).sum())
    rows = {line.split()[0]: float(line.split("cos ")[1].split()[0]) for line in report.splitlines() if " cos " in line}
    for block, (ab, aa, bb) in acc.items():
        assert abs(rows[block] - ab / (aa * bb) ** 0.5) < 2e-3, block
