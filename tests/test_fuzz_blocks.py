"""Fuzz tests of the block-weight syntax and the user presets file: any text, preset set or file
gives a result or LoRA Lab's own error (``BlockWeightsError``, a ``LoraLabError`` with a fix), never another
exception, and within a time bound. Hypothesis runs derandomized (the same examples every run) and small,
so the file takes a few seconds.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from testkit.host import import_pack

import_pack()
from lora_lab.lora_ops import blocks  # noqa: E402
from lora_lab.lora_ops.errors import LoraLabError  # noqa: E402

BlockWeightsError = blocks.BlockWeightsError

SECONDS_PER_TEXT = 1.0
"""Bound on parsing one text (and reading it for a LoRA's targets, describing it, tabling it)."""

FUZZ = settings(max_examples=150, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])

FAMILIES = ["sd1", "sdxl", "flux", "sd3", "new_dit", None]

SD_KEYS = ([f"diffusion_model.input_blocks.{i}.{j}.{p}.weight" for i in range(12) for j in range(2)
            for p in ("in_layers.2", "proj_in", "transformer_blocks.0.attn1.to_q", "transformer_blocks.0.ff.net.2")]
           + [f"diffusion_model.middle_block.{j}.{p}.weight" for j in range(3) for p in ("in_layers.2", "proj_in")]
           + [f"diffusion_model.output_blocks.{i}.{j}.{p}.weight" for i in range(12) for j in range(3)
              for p in ("in_layers.2", "proj_in", "transformer_blocks.0.attn2.to_k", "conv")]
           + ["diffusion_model.input_blocks.0.0.weight", "diffusion_model.time_embed.0.weight"]
           + [f"clip_l.transformer.text_model.encoder.layers.{i}.mlp.fc1.weight" for i in range(3)]
           + [f"clip_g.transformer.text_model.encoder.layers.{i}.self_attn.q_proj.weight" for i in range(3)])
FLUX_KEYS = ([f"diffusion_model.double_blocks.{i}.{p}.weight" for i in range(19) for p in ("img_attn.qkv", "txt_mlp.0")]
             + [f"diffusion_model.single_blocks.{i}.linear1.weight" for i in range(38)]
             + ["diffusion_model.img_in.weight", "diffusion_model.final_layer.linear.weight", "t5xxl.encoder.weight"])
DIT_KEYS = [f"diffusion_model.blocks.{i}.{p}.weight" for i in range(30) for p in ("self_attn.q", "ffn.0")]
SDXL_KEYS = [k for k in SD_KEYS if not any(f"_blocks.{n}." in k for n in (9, 10, 11))]
KEYS = {"sd1": SD_KEYS, "sdxl": SDXL_KEYS, "flux": FLUX_KEYS, "sd3": DIT_KEYS, "new_dit": DIT_KEYS, None: DIT_KEYS}

TOKENS = ["IN04", "in4", "OUT*", "*", "M00", "M00.0", "D03", "S12", "J01", "B02", "B00-B9999", "B00-B999", "TB3",
          "BASE", "CLIP", "CLIP_L", "T5", "IN", "OUT", "ALL", "OUTALL", "INS", "DOUBLE", "MIDALL", "SD-INALL",
          "SDXL-OUTALL", "SD-LyC-ALL", "FLUX-DBL-TAIL", "SD-ROUT", "SD-AB", "P0", "P1", "LOOP", "inspire:",
          "INSPIRE :", "NAME:", "%default=0", "=", "-", ",", "\n", ".", ":", " ", "#", "attn", "img", "txt", "mlp",
          "res", "0", "1", "2", "0.5", "-1", "1e3", "1e999", "9" * 400, "0000001", "A", "B", "a", "b", "R", "U",
          "-R", "IN08-IN04", "IN05-OUT06", "D00-S37", "1 0.5", ";", "\u00a0", "\ufeff", "ǅ", "Ⅻ", "٣"]

USER_PRESETS = {"P0": "P1, P1, P1, IN04=0.5", "P1": "P2, P2, OUT*=0", "P2": "P0", "LOOP": "LOOP",
                "VEC": ",".join(["1"] * 17), "VEC25": ",".join(["0.5"] * 25), "LATE": "inspire: 1,0,1"}

texts = st.one_of(
    st.text(max_size=120),
    st.lists(st.sampled_from(TOKENS), max_size=40).map("".join),
    st.lists(st.sampled_from(TOKENS), max_size=12).map(", ".join),
    st.tuples(st.sampled_from(["inspire: ", "", "# c\ninspire:"]),
              st.lists(st.sampled_from(["1", "0", "0.5", "R", "U", "A", "b", "-1", "1e999", "x", "1 2"]),
                       max_size=70).map(",".join),
              st.sampled_from(["", ", IN04=1", ", OUT*=R", ", D03.img=0", ", SD-ALL", ", B00-B9999=1"])).map("".join),
)


def _bounded(fn):
    start = time.perf_counter()
    try:
        result = fn()
    except BlockWeightsError as exc:
        assert isinstance(exc, LoraLabError) and exc.problem and exc.fix is not None
        result = exc
    seconds = time.perf_counter() - start
    assert seconds < SECONDS_PER_TEXT, seconds
    return result


def _use(weights: blocks.BlockWeights, keys: list[str]) -> None:
    """Everything a node does with parsed weights: read for the targets, factor, table, describe."""
    bound = weights.for_targets(keys)
    for key in keys:
        assert math.isfinite(bound.factor(key))
    assert all(math.isfinite(v) for v in bound.vector.values())
    blocks.block_table(weights, [(k, True) for k in keys])
    weights.describe()


@FUZZ
@given(text=texts, fam=st.sampled_from(FAMILIES), a=st.one_of(st.none(), st.floats(-10, 10)),
       seed=st.integers(0, 2**64 - 1), with_keys=st.booleans())
def test_any_text_gives_weights_or_our_error_quickly(text, fam, a, seed, with_keys):
    keys = KEYS[fam]

    def work():
        weights = blocks.parse_block_weights(text, fam, a=a, b=0.5, seed=seed, user_presets=USER_PRESETS,
                                             model_keys=keys if with_keys else None)
        assert isinstance(weights, blocks.BlockWeights)
        _use(weights, keys)
        return weights

    _bounded(work)


@FUZZ
@given(text=st.lists(st.sampled_from(TOKENS[:40] + ["=0.5", "=R", ".attn=0"]), max_size=30).map("".join),
       fam=st.sampled_from(["sd1", "sdxl", "flux"]))
def test_what_parses_describes_itself(text, fam):
    """A text that parses describes itself as text that parses back to the same factors."""
    try:
        weights = blocks.parse_block_weights(text, fam, a=1.0, b=1.0, seed=3, user_presets=USER_PRESETS)
    except BlockWeightsError:
        return
    keys = KEYS[fam]
    bound = weights.for_targets(keys)
    again = blocks.parse_block_weights(weights.describe(), fam, a=1.0, b=1.0, seed=3, user_presets=USER_PRESETS)
    again = again.for_targets(keys)
    assert [bound.factor(k) for k in keys] == [again.factor(k) for k in keys], (text, weights.describe())


presets = st.dictionaries(
    st.sampled_from([f"P{i}" for i in range(8)]),
    st.lists(st.sampled_from([f"P{i}" for i in range(8)] + ["IN04=0.5", "OUT*=R", "B00-B999=1", "1", "ALL"]),
             min_size=1, max_size=12).map(", ".join),
    max_size=8)


@FUZZ
@given(user=presets, fam=st.sampled_from(["sd1", "new_dit"]))
def test_nested_user_presets_stay_bounded(user, fam):
    for name in user:
        _bounded(lambda name=name: blocks.parse_block_weights(name, fam, user_presets=user))


file_texts = st.one_of(
    st.text(max_size=300),
    st.lists(st.tuples(st.sampled_from(["SD-ALL", "SD-BODY", "ALL", "IN04", "x y", "", "@T", "#", "P0", "SD-INALL"]),
                       st.sampled_from([":", "", "::"]),
                       st.sampled_from(["1,1,1", ",".join(["1"] * 17), "IN04=0.5", "P0, P0", "", "zz", "P0"])),
             max_size=12).map(lambda rows: "\n".join("".join(r) for r in rows)),
    st.dictionaries(st.text(max_size=12), st.one_of(st.text(max_size=30), st.integers(), st.none()),
                    max_size=6).map(lambda d: __import__("json").dumps(d)),
    st.sampled_from(["[" * 50_000, "{" * 50_000, '{"a": ' * 5000, "\x00\xff", "null", "[]", "7"]),
)


@FUZZ
@given(content=file_texts)
def test_any_presets_file_loads_or_names_its_problems(tmp_path_factory, content):
    path: Path = tmp_path_factory.mktemp("presets") / "block_presets.json"
    path.write_text(content, encoding="utf-8", errors="surrogatepass")
    start = time.perf_counter()
    user = blocks.read_user_presets(path)
    assert time.perf_counter() - start < 5 * SECONDS_PER_TEXT
    assert isinstance(user, blocks.UserPresets) and all(isinstance(p, str) for p in user.problems)
    try:
        strict = blocks.load_user_presets(path)
        assert strict == dict(user) and not user.problems
    except BlockWeightsError:
        assert user.problems
    # built-in presets never depend on the file
    assert blocks.parse_block_weights("OUTALL", "sd1", user_presets=user).vector["OUT05"] == 1.0
    for name in list(user)[:4]:
        _bounded(lambda name=name: blocks.parse_block_weights(name, "sd1", user_presets=user))


@pytest.mark.parametrize("fam", ["sd1", "sdxl", "flux", "new_dit"])
def test_inspire_reading_for_any_key_set(fam):
    """For any subset of a model's keys, the Inspire reading gives one finite factor per key."""
    import random

    rng = random.Random(fam)
    keys = KEYS[fam]
    weights = blocks.parse_block_weights("inspire: " + ",".join(["R", "0.5", "U", "1", "0"] * 6), fam, seed=9)
    for _ in range(40):
        subset = rng.sample(keys, rng.randint(0, len(keys)))
        _bounded(lambda subset=subset: _use(weights, subset))
