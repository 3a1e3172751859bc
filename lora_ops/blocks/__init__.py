"""Per-block LoRA weights: block maps of the model, one syntax to weight them, and a table of the result.

Blocks are the *model's* blocks, found from its weight keys by :func:`block_of`; a position never depends
on which blocks a LoRA file happens to contain (the top complaint about other loaders).
:func:`parse_block_weights` turns one string into a :class:`BlockWeights` whose ``factor(key)``
multiplies the strength of the LoRA target patching that model weight key (0 drops the target).

Block maps (keys as ComfyUI names them; ``diffusion_model.`` marks the model, also accepted are
``unet.``/``transformer.``; any other key is a text-encoder key):

- SD1.x / SD2.x (``sd1``, ``sd2``): ``input_blocks.N`` -> ``IN00``-``IN11`` (``input_blocks.0`` is
  conv_in, so conv_in is IN00), ``middle_block`` -> ``M00``, ``output_blocks.N`` -> ``OUT00``-``OUT11``.
  Diffusers names map as the LDM layout numbers its blocks: ``down_blocks.d.{resnets|attentions}.j`` ->
  ``IN(3d+j+1)``, ``down_blocks.d.downsamplers`` -> ``IN(3d+3)``, ``mid_block`` -> ``M00``,
  ``up_blocks.u.{resnets|attentions|upsamplers}.j`` -> ``OUT(3u+j)`` (upsamplers: ``OUT(3u+2)``),
  ``conv_in`` -> ``IN00``. Everything else of the UNet (time_embed, label_emb, the final norm and conv
  ``out.``) is ``BASE``.
- SDXL (``sdxl``): the same rule, ``IN00``-``IN08``, ``M00``, ``OUT00``-``OUT08``.
- Flux (``flux``): ``double_blocks.N`` -> ``D00``-``D18``, ``single_blocks.N`` -> ``S00``-``S37``,
  ``img_in``/``txt_in``/``time_in``/``vector_in``/``guidance_in`` -> ``IN``, ``final_layer`` -> ``OUT``.
- SD3 (``sd3``): ``joint_blocks.N`` -> ``J00``...; the embedders and final layer are ``BASE``. Without
  ``model_keys`` the names J00-J37 are accepted (SD3.5 Large has 38 joint blocks, Medium 24).
- Any other family (the general rule, so a new DiT needs no new code): a LDM UNet layout is named as
  above; otherwise the leftmost path segment that ends in ``blocks``, ``layers`` or ``refiner`` and is
  followed by a number N names the block: its prefix is the uppercase initials of the segment's words
  (``blocks`` -> ``B``, ``layers`` -> ``L``, ``transformer_blocks`` -> ``TB``, ``noise_refiner`` -> ``NR``,
  ``single_transformer_blocks`` -> ``STB``), except ``double_blocks`` -> ``D``, ``single_blocks`` -> ``S``
  and ``joint_blocks`` -> ``J`` as in Flux and SD3, followed by N with at least two digits: ``B07``,
  ``TB12``, ``D03``. Everything outside numbered blocks is ``BASE``.

Text encoders: a text-encoder key belongs to ``BASE`` unless the syntax names its encoder: ``CLIP_L``
(``clip_l.``), ``CLIP_G`` (``clip_g.``), ``CLIP_H`` (``clip_h.``, SD2.x), ``T5`` (``t5xxl.``,
``umt5xxl.``...);
``CLIP`` names every CLIP encoder of the family. The caller applies ``strength_clip`` to text-encoder
targets; the block factor multiplies it, as the model's factor multiplies ``strength_model``.

Sub-block selectors (``BLOCK.sel[.sel]=value``, all selectors must hold for a key):

- UNet blocks: ``attn`` (``attn1`` self- and ``attn2`` cross-attention of the spatial transformer),
  ``attn1``, ``attn2``, ``mlp`` (its feed-forward ``ff``), ``res`` (the ResBlock: ``in_layers``,
  ``emb_layers``, ``out_layers``, ``skip_connection``), and ``0``/``1``/``2``, the LDM sub-module index
  (``M00.0`` first ResBlock, ``M00.1`` transformer, ``M00.2`` second ResBlock). The transformer's
  ``proj_in``/``proj_out``/norms and the down/upsamplers belong to no part selector.
- Flux double blocks and SD3 joint blocks: ``img`` (Flux ``img_*``, SD3 ``x_block``), ``txt`` (Flux
  ``txt_*``, SD3 ``context_block``), ``attn``, ``mlp``, ``mod`` (modulation); combine as ``D03.img.attn``.
- Blocks of the general rule: the same five, by name: ``attn`` a path segment containing ``attn`` or
  ``attention``; ``mlp`` a segment ``mlp``/``ff``/``ffn``/``feed_forward`` (with a prefix or suffix word);
  ``img`` a segment ``img_*``/``x_block``; ``txt`` a segment ``txt_*``/``context_block``/``*_context``/
  ``add_*_proj``; ``mod`` a segment containing ``mod``.
- Flux single blocks fuse attention and MLP in ``linear1``/``linear2``: no selector applies to them.

Syntax (entries separated by commas or newlines, ``#`` starts a comment, names case-insensitive):

- ``NAME=v``, ranges ``IN04-IN08=v`` (inclusive, in the family's block order, which is the order of
  :func:`family_blocks`; ``IN05-OUT06`` crosses the middle block), globs ``OUT*=v`` (``X*`` is ``X``
  followed by digits or ``_...``, or ``X`` itself: ``IN*`` on Flux is ``IN``, ``CLIP*`` the CLIP encoders),
  with selectors ``IN05.attn=0``, ``D00-D06.txt=0``, ``*.mlp=0.5``.
- ``*=v`` sets the weight of every block no entry names (1 without it), wherever it stands. Otherwise a
  later entry overrides an earlier one for what both cover.
- Preset names (:mod:`lora_ops.presets`, plus user presets), combinable with entries: ``OUTALL, OUT05=0.5``.
  A preset sets every block, so entries before it are overridden. Inspire Pack's preset names (``SD-INALL``,
  ``SDXL-OUTALL``, ``SD-LyC-MIDALL``, ``FLUX-DBL-TAIL``...) are read by the model's blocks as for the file
  they were written for (attention blocks for 17/12 values, a LyCORIS file without conv_in for 27/21, every
  block for Flux's 18), a block without a position taking its nearest neighbour's weight in its section,
  as LoRA Lab's own presets do: ``SD-INALL`` is ``INALL``.
- Values: numbers (``-0.5``, ``1e-1``), ``A``/``B`` (the ``a``/``b`` arguments), lowercase ``a``/``b``
  (half of them, as in Inspire Pack), ``R`` uniform in [0, 1), ``U`` uniform in [-1.5, 1.5), signs
  allowed (``-A``). ``R``/``U`` are drawn from ``torch.Generator().manual_seed(seed)``, in the order the
  entries are written, one draw per block an entry covers (in block order), one per vector position,
  one for ``*=R`` (the default is one value).
- A vector: bare values first, in one run, in a dialect the family knows (:data:`DIALECT_DOCS`); named
  entries may follow it. Blocks a dialect has no position for are set to 0, as
  sd-webui-lora-block-weight does when it widens 17/12 to 26/20 (for a plain LoRA these blocks hold no
  targets; for a LoCon they hold its ResBlocks); :func:`block_notes` names those a LoRA patches in the
  report. Name them after the vector to keep them: ``<17 values>, IN03=1``. Text-encoder entries follow
  BASE unless the dialect has a position for them.
- ``inspire: <vector or preset>[, BLOCK=weight...]`` (the whole text): Inspire Pack's reading, by the blocks
  the LoRA *file* patches (:func:`inspire_positions`, :func:`inspire_values`): BASE first, then one
  position per block present in file order, the last value repeating; R in [0, 3) and U in [-1.5, 1.5)
  rounded to 0.01 from NumPy's generator as Inspire draws them. Read for one LoRA by
  :meth:`BlockWeights.for_targets`; entries after the vector override it by the model's blocks.
- Limits (any text is parsed in bounded time): :data:`MAX_TEXT_CHARS`, :data:`MAX_ENTRIES` (presets
  expanded), :data:`MAX_BLOCK_NAMES`, :data:`MAX_RANGE_BLOCKS`; each gives a clear error.

Sources: block names and vector orders of sd-webui-lora-block-weight and ComfyUI Inspire Pack (its
``inspire/lora_block_weight.py`` and ``resources/lbw-preset.txt``, facts re-implemented); the
diffusers-to-LDM numbering of the UNet's blocks.
"""

from __future__ import annotations

from ._base import (
    ENCODER_NAMES,
    FAMILY_LABELS,
    KNOWN_FAMILIES,
    SD3_NOMINAL_DEPTH,
    BlockWeightsError,
    normalize_family,
)
from .dialects import DIALECT_DOCS, VectorDialect
from .inspire import inspire_positions, inspire_values
from .layout import accepted_vector_lengths, block_of, compact_names, family_blocks, family_spec
from .lexicon import MAX_BLOCK_NAMES, MAX_ENTRIES, MAX_RANGE_BLOCKS, MAX_TEXT_CHARS
from .syntax import parse_block_weights
from .table import block_notes, block_table
from .user_presets import (
    MAX_PRESET_CHECK_ENTRIES,
    MAX_PRESETS_FILE_BYTES,
    MAX_USER_PRESETS,
    PresetInfo,
    UserPresets,
    list_presets,
    load_user_presets,
    read_user_presets,
)
from .weights import BlockWeights

__all__ = [
    "BlockWeights",
    "BlockWeightsError",
    "DIALECT_DOCS",
    "ENCODER_NAMES",
    "FAMILY_LABELS",
    "KNOWN_FAMILIES",
    "MAX_BLOCK_NAMES",
    "MAX_ENTRIES",
    "MAX_PRESETS_FILE_BYTES",
    "MAX_PRESET_CHECK_ENTRIES",
    "MAX_RANGE_BLOCKS",
    "MAX_TEXT_CHARS",
    "MAX_USER_PRESETS",
    "PresetInfo",
    "SD3_NOMINAL_DEPTH",
    "UserPresets",
    "VectorDialect",
    "accepted_vector_lengths",
    "block_notes",
    "block_of",
    "block_table",
    "compact_names",
    "family_blocks",
    "family_spec",
    "inspire_positions",
    "inspire_values",
    "list_presets",
    "load_user_presets",
    "normalize_family",
    "parse_block_weights",
    "read_user_presets",
]
