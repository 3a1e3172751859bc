"""Small seeded text encoders for families of :mod:`testkit.families`, built from ComfyUI's own classes.

``small_family_clip(name)`` gives a ``comfy.sd.CLIP`` of the family's own text-encoder class
(``supported_models.<config class>.clip_target({})``: SDXL's CLIP-L + CLIP-G, Flux's CLIP-L + T5-XXL,
Chroma's T5-XXL, Z-Image's Qwen3-4B, Wan's UMT5-XXL) with reduced configs, passed the way
ComfyUI reads them (``model_options["<encoder>_model_config"]``, as :mod:`testkit.models` shrinks
CLIP-L/G). The widths fit the small models of :mod:`testkit.families`: text width 48
(``context_in_dim``/``cap_feat_dim``), CLIP-L pooled width 32 (Flux's ``vec_in_dim``); SDXL's 64 + 64 = 128
with a 64-wide pooled CLIP-G. SDXL's and Z-Image's encoders read their second-to-last layer, so they have
3. Weights follow :func:`testkit.models.seeded_tensor`.

Tokenizers: the real ones ComfyUI ships, except UMT5-XXL's, which ComfyUI reads from the text encoder's
file (``spiece_model``); with no such file here, :func:`small_spiece_model` trains a tiny SentencePiece
model (the library ComfyUI's tokenizer wraps) on a fixed corpus, with UMT5's pad (0) and end (1) ids, and
the small UMT5 gets that vocabulary.

Limits of the classes: Qwen3-4B keeps its 151,936-token vocabulary (7.3M parameters at width 48) and its
128-wide attention heads (``head_dim`` is a class constant).
"""

from __future__ import annotations

from typing import Any

import torch

from testkit.families import _config, family_spec
from testkit.models import CPU, import_comfy, meta_shapes, seeded_state_dict

SEED_SMALL_TEXT = 3200

_CLIP_L = {"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 2, "num_hidden_layers": 2,
           "projection_dim": 32}
_T5 = {"d_model": 48, "d_ff": 64, "d_kv": 24, "num_heads": 2, "num_layers": 2}
_QWEN3 = {"hidden_size": 48, "intermediate_size": 96, "num_hidden_layers": 3, "num_attention_heads": 2,
          "num_key_value_heads": 1}

_UMT5 = {**_T5, "vocab_size": 40}  # the size of small_spiece_model()'s vocabulary

_CLIP_SDXL = {"hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 2, "num_hidden_layers": 3,
              "projection_dim": 64}

TEXT_CONFIGS: dict[str, dict[str, dict[str, Any]]] = {
    "sdxl": {"clip_l": _CLIP_SDXL, "clip_g": _CLIP_SDXL},
    "flux": {"clip_l": _CLIP_L, "t5xxl": _T5},
    "flux_schnell": {"clip_l": _CLIP_L, "t5xxl": _T5},
    "chroma": {"t5xxl": _T5},
    "z_image": {"qwen3_4b": _QWEN3},
    "wan21_t2v": {"umt5xxl": _UMT5},
}
"""Family -> text encoder -> the config keys replaced (the rest is ComfyUI's own config of that encoder)."""


def clip_options(name: str, dtype: torch.dtype = torch.float32) -> dict[str, Any]:
    opts: dict[str, Any] = {"dtype": dtype, "load_device": CPU, "offload_device": CPU, "initial_device": CPU}
    for encoder, config in TEXT_CONFIGS[name].items():
        opts[f"{encoder}_model_config"] = dict(config)
    return opts


def small_family_clip(name: str, dtype: torch.dtype = torch.float32) -> Any:
    """A fresh ``comfy.sd.CLIP`` with the small seeded text encoders of family ``name`` (see the module)."""
    comfy = import_comfy()
    if name not in TEXT_CONFIGS:
        raise ValueError(f"no small text encoders for {name!r}; expected one of {sorted(TEXT_CONFIGS)}")
    target = _config(family_spec(name)).clip_target({})
    opts = clip_options(name, dtype)
    build_opts = {k: v for k, v in opts.items() if k.endswith("_model_config")}
    shapes = meta_shapes(lambda: target.clip(device="meta", dtype=torch.float32, model_options=build_opts))
    sd = seeded_state_dict(shapes, SEED_SMALL_TEXT + sum(map(ord, name)), dtype)
    tokenizer_data = {"spiece_model": small_spiece_model()} if "umt5xxl" in TEXT_CONFIGS[name] else {}
    clip = comfy.sd.CLIP(target=target, model_options=opts, tokenizer_data=tokenizer_data)
    missing, unexpected = clip.cond_stage_model.load_state_dict(sd, strict=False)
    if unexpected or [k for k in missing if not k.endswith("position_ids")]:
        raise RuntimeError(f"{name}: small text encoder weights do not fit: missing {missing[:5]}, "
                           f"unexpected {unexpected[:5]}")
    return clip


_SPIECE_CORPUS = ("zxq style, a red square", "zxq style, grey", "a photo of a cat", "a painting of a dog in the snow",
                  "red green blue grey white black", "the quick brown fox jumps over the lazy dog")
_SPIECE: list[bytes] = []


def small_spiece_model() -> bytes:
    """A serialized SentencePiece unigram model of 40 pieces (pad 0, end 1, unknown 2, no start token, as
    UMT5's), trained once per process on a fixed corpus; training is deterministic, so every call in every
    process gives the same bytes."""
    if not _SPIECE:
        import io  # noqa: PLC0415

        import sentencepiece  # noqa: PLC0415

        out = io.BytesIO()
        sentencepiece.SentencePieceTrainer.train(
            sentence_iterator=iter(_SPIECE_CORPUS * 20), model_writer=out, vocab_size=_UMT5["vocab_size"],
            model_type="unigram", pad_id=0, eos_id=1, unk_id=2, bos_id=-1, character_coverage=1.0, num_threads=1,
            minloglevel=2)
        _SPIECE.append(out.getvalue())
    return _SPIECE[0]
