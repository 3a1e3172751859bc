"""The LoRA inspector: what a LoRA file is, what it was made for, whether it is healthy, where it acts.

One analysis, host-free, shared by the ``LoraLabInspect`` node, the loader's report and the command
line (``python -m lora_ops.inspection FILE [FILE...] [--json]``, run from the pack's folder):

* the file: format (naming convention), algorithms (LoRA, LoCon, LoHa, LoKr, DoRA, full diff), target
  count, ranks and alphas, dtypes, size;
* the family it was made for, from its module names and shapes and from its metadata
  (``ss_base_model_version``, ``modelspec.architecture``), and whether the two agree;
* its training metadata (kohya ``ss_*``, ``modelspec.*``, LyCORIS, PEFT adapter config) in readable form,
  with the most frequent caption tags of ``ss_tag_frequency``;
* health, per layer: NaN/Inf; all-zero deltas; stored values or delta values beyond fp16's largest
  value (|x| >= 65520, which becomes inf: :mod:`lora_ops.numerics`); values that underflow fp16 (non-zero values with |x| <= 2^-25, which round to 0),
  flagged when at least :data:`UNDERFLOW_SHARE` of a layer's non-zero values do; and, given the model's
  base weights, the largest |W + dW| per block against that limit (the black-image case);
* per-block energy: the Frobenius norm of each block's delta, ``sqrt(sum over its targets of
  ||dW||_F^2)`` at strength 1, over the block map of :mod:`lora_ops.blocks`;
* against a model (a :class:`~lora_ops.plan.LoraPlan`): targets matched and unmatched, and a verdict:
  ``compatible`` (every target matched), ``other family`` (made for another family), ``partial``.

Deltas are formed in fp32 one target at a time, so peak extra memory is one layer's worth.

Block names. With a plan, a target's block is ``blocks.block_of(family, model weight key)`` for the
key it matched. Without a model (or when the LoRA is of another family than the model) the block is
inferred from the file's module name, under the LoRA's own family: the name is put in canonical form
(``keymap.canonical_name``: ``lora_unet_...``, ``lora_te1_...``), a diffusers UNet path
(``down_blocks_d_attentions_j``, ``mid_block``, ``up_blocks_u_resnets_j``, ``conv_in``) or an LDM path
(``input_blocks_n_m``, ``middle_block_m``, ``output_blocks_n_m``) is rebuilt as a model key, which
``block_of`` maps by the diffusers->LDM rule of :mod:`lora_ops.blocks`; ``lora_te1_``/``lora_te2_`` become the family's
first/second text encoder; Flux/SD3 names (``double_blocks_N``, ``single_blocks_N``, ``joint_blocks_N``,
diffusers Flux ``transformer_blocks_N``/``single_transformer_blocks_N``) keep their numbered block; any
other ``..._blocks_N``/``..._layers_N`` becomes a general-rule block; the rest is ``BASE``.
DoRA: without base weights the energy is that of the directional low-rank part (the magnitude
rescale needs ``W0``); with base weights it is the real change ``W' - W0``.

Modules: :mod:`.result` (result types and text), :mod:`.analysis` (planning without refusing, health,
energy), :mod:`.file_blocks` (block names from file names), :mod:`.metadata` (training metadata),
:mod:`.charts`, and ``__main__`` (the command line).
"""

from __future__ import annotations

from .analysis import inspect_file, inspect_lora, plan_for_inspection
from .charts import render_chart
from .file_blocks import file_block, file_module_key
from .metadata import training_info
from .result import (
    FINDING_TEXT,
    PROBLEM_KINDS,
    TOP_TAGS,
    UNDERFLOW_SHARE,
    UNMATCHED_BLOCK,
    VERDICT_COMPATIBLE,
    VERDICT_OTHER_FAMILY,
    VERDICT_PARTIAL,
    BlockEnergy,
    Inspection,
    LayerFinding,
    TrainingInfo,
    algorithm_headline,
    count_summary,
)

__all__ = [
    "BlockEnergy",
    "FINDING_TEXT",
    "Inspection",
    "LayerFinding",
    "PROBLEM_KINDS",
    "TOP_TAGS",
    "TrainingInfo",
    "UNDERFLOW_SHARE",
    "UNMATCHED_BLOCK",
    "VERDICT_COMPATIBLE",
    "VERDICT_OTHER_FAMILY",
    "VERDICT_PARTIAL",
    "algorithm_headline",
    "count_summary",
    "file_block",
    "file_module_key",
    "inspect_file",
    "inspect_lora",
    "plan_for_inspection",
    "render_chart",
    "training_info",
]
