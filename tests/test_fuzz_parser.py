"""Fuzzing the LoRA parser and planner: any tensors under any keys give a parsed LoRA or LoRA Lab's own
error, never another exception; whatever parses plans against a model, or is refused with our error.

Keys are drawn from the suffixes real files use (every kind's tensors, alphas, DoRA magnitudes, bias
deltas) on a few module names, with tensors of random rank and size (empty, 1-D, mismatched ranks),
random values (NaN, Inf, huge), so the malformed cases the reliability issue found (ranks that disagree,
rank 0, a zero-element or NaN alpha, factors that fit no weight) come up among many others.
"""

from __future__ import annotations

import math

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from testkit.host import import_pack

import_pack()  # one identity for the pack's modules: lora_lab.*, as ComfyUI loads it
from lora_lab.lora_ops.errors import LoraLabError  # noqa: E402
from lora_lab.lora_ops.formats import parse_lora  # noqa: E402
from lora_lab.lora_ops.keymap import KeyIndex  # noqa: E402
from lora_lab.lora_ops.patching import apply_patches, restore_weights  # noqa: E402
from lora_lab.lora_ops.plan import LoadedLora, plan_lora  # noqa: E402
from lora_lab.lora_ops.families import detect_family  # noqa: E402
from lora_lab.lora_ops.safeio import LoraFile  # noqa: E402

SUFFIXES = [
    ".lora_up.weight", ".lora_down.weight", ".lora_mid.weight", ".lora_A.weight", ".lora_B.weight", ".alpha",
    ".dora_scale", ".lora_magnitude_vector", ".hada_w1_a", ".hada_w1_b", ".hada_w2_a", ".hada_w2_b", ".hada_t1",
    ".lokr_w1", ".lokr_w2", ".lokr_w1_a", ".lokr_w1_b", ".lokr_w2_a", ".lokr_w2_b", ".lokr_t2", ".oft_blocks",
    ".rescale", ".a1.weight", ".a2.weight", ".b1.weight", ".b2.weight", ".diff", ".diff_b", ".w_norm", ".b_norm",
    ".set_weight", ".reshape_weight", ".on_input", ".weight", "",
]
MODULES = ["lora_unet_a", "lora_unet_b", "diffusion_model.c", "x"]
# the "model": four weights the key map reaches
SHAPES = {"diffusion_model.a.weight": torch.Size([8, 6]), "diffusion_model.b.weight": torch.Size([8, 4, 3, 3]),
          "diffusion_model.c.weight": torch.Size([4, 4]), "diffusion_model.c.bias": torch.Size([4])}
KEY_MAP = {"lora_unet_a": "diffusion_model.a.weight", "lora_unet_b": "diffusion_model.b.weight",
           "diffusion_model.c": "diffusion_model.c.weight"}

values = st.sampled_from([0.0, 1.0, -2.0, 1e-3, 1e30, math.nan, math.inf])
dims = st.lists(st.sampled_from([0, 1, 2, 3, 4, 6, 8]), min_size=0, max_size=4)
# shapes near the ones that fit the model's weights (factors of rank 1-3, rotations, vectors), so that
# the fuzzer reaches planning and merging with factors that almost fit
rank = st.sampled_from([0, 1, 2, 3])
near = st.one_of(
    st.builds(lambda r: (8, r), rank), st.builds(lambda r: (r, 6), rank), st.builds(lambda r: (r, 4, 3, 3), rank),
    st.builds(lambda r: (8, r, 1, 1), rank), st.builds(lambda r: (4, r), rank), st.builds(lambda r: (r, 4), rank),
    st.sampled_from([(8,), (6,), (4,), (1,), (), (2, 4, 4), (1, 2, 4, 4), (8, 6), (4, 4), (8, 4, 3, 3), (2,)]))


@st.composite
def tensor(draw) -> torch.Tensor:
    shape = draw(st.one_of(near, dims))
    t = torch.randn(shape, generator=torch.Generator().manual_seed(draw(st.integers(0, 2**16))))
    if t.numel() and draw(st.booleans()):
        t.view(-1)[0] = draw(values)
    return t


# the key sets each kind writes for one module; the fuzzer takes one, then drops and adds keys at random
KINDS = [
    [".lora_up.weight", ".lora_down.weight", ".alpha"], [".lora_B.weight", ".lora_A.weight"],
    [".lora_up.weight", ".lora_down.weight", ".lora_mid.weight", ".alpha"],
    [".lora_up.weight", ".lora_down.weight", ".dora_scale"],
    [".hada_w1_a", ".hada_w1_b", ".hada_w2_a", ".hada_w2_b", ".alpha"], [".lokr_w1", ".lokr_w2_a", ".lokr_w2_b"],
    [".lokr_w1", ".lokr_w2"], [".oft_blocks", ".alpha", ".rescale"], [".a1.weight", ".a2.weight", ".b1.weight",
                                                                      ".b2.weight", ".alpha"],
    [".diff", ".diff_b"], [".w_norm", ".b_norm"], [".set_weight"], [".lora_up.weight", ".lora_down.weight",
                                                                    ".reshape_weight"],
]


@st.composite
def lora_dict(draw) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for module in draw(st.lists(st.sampled_from(MODULES), min_size=1, max_size=3, unique=True)):
        suffixes = list(draw(st.sampled_from(KINDS)))
        if draw(st.booleans()):
            suffixes.remove(draw(st.sampled_from(suffixes)))
        suffixes += draw(st.lists(st.sampled_from(SUFFIXES), max_size=2))
        for suffix in suffixes:
            out[module + suffix] = draw(tensor())
    return out or {"x": torch.zeros(1)}


FUZZ = settings(max_examples=400, deadline=2000, derandomize=True, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(lora_dict())
def test_any_tensors_parse_or_get_our_error(sd):
    try:
        parsed = parse_lora(sd, source="'fuzz'")
    except LoraLabError:
        return
    for adapter in parsed.modules.values():
        assert adapter.describe()  # every parsed adapter answers the protocol's questions
    lora = LoadedLora(file=LoraFile(tensors=sd), parsed=parsed, family=detect_family(parsed, {}))
    try:
        plan = plan_lora(lora, model_keys=KeyIndex(KEY_MAP), model_shapes=SHAPES, model_family="Fuzz",
                         strength_model=0.7)
    except LoraLabError:
        return
    for entry in plan.model_entries:  # what planned must form its delta or be refused with our error
        shape = SHAPES[entry.weight_key]
        base = torch.randn(shape)
        try:
            delta = entry.delta(shape, base=base)
        except LoraLabError:
            continue
        assert delta.shape == shape or getattr(entry.adapter, "reshape", None) is not None
    weights = {k: torch.randn(v).half() for k, v in SHAPES.items()}  # and merge into fp16 weights, restored
    before = {k: v.clone() for k, v in weights.items()}
    try:
        backup = apply_patches(weights, plan.model_entries, in_place=False)
    except LoraLabError:
        assert all(torch.equal(weights[k], before[k]) for k in weights)
        return
    restore_weights(weights, backup)
    assert all(torch.equal(weights[k], before[k]) for k in weights)


@FUZZ
@given(st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from(["nan", "1e400", None]))
def test_strengths_that_are_not_finite_numbers_are_refused(strength):
    sd = {"lora_unet_a.lora_up.weight": torch.randn(8, 2), "lora_unet_a.lora_down.weight": torch.randn(2, 6)}
    parsed = parse_lora(sd)
    lora = LoadedLora(file=LoraFile(tensors=sd), parsed=parsed, family=detect_family(parsed, {}))
    try:
        finite = strength is not None and math.isfinite(float(strength))
    except (TypeError, ValueError):
        finite = False
    try:
        plan = plan_lora(lora, model_keys=KeyIndex(KEY_MAP), model_shapes=SHAPES, model_family="Fuzz",
                         strength_model=strength)
    except LoraLabError as err:
        assert not finite and "strength_model" in str(err)
        return
    assert finite and plan.model_entries[0].strength == float(strength)
