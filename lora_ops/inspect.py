"""The LoRA inspector: what a LoRA file is, what it was made for, whether it is healthy, where it acts.

One analysis, host-free, shared by the ``LoraLabInspect`` node, the loader's report and the command
line (``python -m lora_ops.inspect FILE [FILE...] [--json]``, run from the pack's folder):

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
``block_of`` maps by field-notes §3's diffusers->LDM rule; ``lora_te1_``/``lora_te2_`` become the family's
first/second text encoder; Flux/SD3 names (``double_blocks_N``, ``single_blocks_N``, ``joint_blocks_N``,
diffusers Flux ``transformer_blocks_N``/``single_transformer_blocks_N``) keep their numbered block; any
other ``..._blocks_N``/``..._layers_N`` becomes a general-rule block; the rest is ``BASE``.
DoRA: without base weights the energy is that of the directional low-rank part (the magnitude
rescale needs ``W0``); with base weights it is the real change ``W' - W0``.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone

import torch

from .adapters import Adapter
from .blocks import block_of, compact_names, family_blocks, normalize_family
from .errors import LoraLabError, NonFiniteError
from .families import family_label
from .keymap import KeyIndex, canonical_name
from .merge import PatchEntry, factors_finite, target_view
from .numerics import FP16_MAX, FP16_OVERFLOW, FP16_UNDERFLOW
from .plan import LoadedLora, LoraPlan, load_lora, plan_lora

UNDERFLOW_SHARE = 0.01
"""A layer is flagged for fp16 underflow when at least this share of its non-zero values would become 0."""
TOP_TAGS = 12
UNMATCHED_BLOCK = "(unmatched)"

VERDICT_COMPATIBLE = "compatible"
VERDICT_OTHER_FAMILY = "other family"
VERDICT_PARTIAL = "partial"

_ALGO_LABELS = {"lora": "LoRA", "locon": "LoCon", "loha": "LoHa", "lokr": "LoKr", "oft": "OFT", "boft": "BOFT",
                "glora": "GLoRA", "full": "full diff", "norm": "norm", "set": "set-weight"}
_ALGO_ORDER = ("lora", "locon", "loha", "lokr", "oft", "boft", "glora", "full", "norm", "set")

FINDING_TEXT = {
    "nonfinite": "NaN/Inf",
    "zero": "all-zero delta",
    "file_overflow": "stored values beyond fp16 (|x| >= 65520: inf in fp16)",
    "delta_overflow": "delta values beyond fp16 (|dW| >= 65520: inf in fp16)",
    "merged_overflow": "W + dW beyond fp16 (|W + dW| >= 65520: inf in fp16): renders black in fp16",
    "file_underflow": "stored values that become 0 in fp16",
    "delta_underflow": "delta values that become 0 in fp16",
    "error": "delta could not be formed",
    "needs_model": "delta depends on the model's weights (connect a model to measure it)",
}
PROBLEM_KINDS = ("nonfinite", "merged_overflow", "delta_overflow", "file_overflow", "error")


# --- results ------------------------------------------------------------------------------------

@dataclass
class LayerFinding:
    """One health problem of one layer (``layer``: the module name as the file writes it)."""

    layer: str
    kind: str  # a key of FINDING_TEXT
    block: str
    detail: str = ""


@dataclass
class BlockEnergy:
    """``norm = sqrt(sum ||dW_t||_F^2)`` over the block's ``targets``; ``max_merged``: largest |W + dW|."""

    block: str
    norm: float
    targets: int
    max_merged: float | None = None


@dataclass
class TrainingInfo:
    """Training metadata in readable form: ``(label, value)`` pairs and the top caption tags."""

    fields: list[tuple[str, str]] = field(default_factory=list)
    top_tags: list[tuple[str, int]] = field(default_factory=list)
    tag_images: int | None = None  # number of distinct tags in ss_tag_frequency
    notes: list[str] = field(default_factory=list)


@dataclass
class Inspection:
    """Everything :func:`inspect_lora` found; ``to_text()`` renders the report, ``to_dict()`` JSON."""

    name: str
    path: str | None
    file_size: int
    format: str
    algorithms: list[str]
    algorithm: str
    targets: int
    model_targets: int
    text_targets: int
    tensors: int
    parameters: int
    ranks: dict[int | None, int]
    alphas: dict[float | None, int]
    dtypes: dict[str, int]
    family: str | None
    family_evidence: list[str]
    metadata_family: str | None
    training: TrainingInfo
    unsupported: dict[str, str] = field(default_factory=dict)
    unknown_keys: list[str] = field(default_factory=list)
    model_family: str | None = None
    model_name: str | None = None  # how the host names the model (default: the family's label)
    matched: int | None = None
    unmatched: list[str] = field(default_factory=list)
    verdict: str | None = None
    findings: list[LayerFinding] | None = None
    energy: list[BlockEnergy] | None = None
    block_family: str | None = None
    block_source: str = ""
    base_checked: bool = False
    notes: list[str] = field(default_factory=list)

    # -- derived --------------------------------------------------------------------------------

    @property
    def families_agree(self) -> bool | None:
        """Whether keys/shapes and metadata name the same family; ``None`` when either is silent."""
        if self.family is None or self.metadata_family is None:
            return None
        return self.family == self.metadata_family

    @property
    def ranks_vary(self) -> bool:
        return len([r for r in self.ranks if r is not None]) > 1

    @property
    def healthy(self) -> bool | None:
        if self.findings is None:
            return None
        return not any(f.kind in PROBLEM_KINDS for f in self.findings)

    def layers_with(self, kind: str) -> list[str]:
        return [f.layer for f in self.findings or () if f.kind == kind]

    def problem_blocks(self) -> set[str]:
        return {f.block for f in self.findings or () if f.kind in PROBLEM_KINDS}

    # -- text -----------------------------------------------------------------------------------

    def summary_lines(self) -> list[str]:
        """The three header lines the loader's report shares: format/algorithm, rank/alpha, made for."""
        meta = f"; metadata says {family_label(self.metadata_family)}" if self.metadata_family else ""
        if self.family:
            made_for = family_label(self.family) + (f" ({'; '.join(self.family_evidence)})"
                                                    if self.family_evidence else "")
        else:
            made_for = "; ".join(self.family_evidence) or "unknown"
        return [
            f"format: {self.format}; algorithm: {', '.join(self.algorithms)}",
            count_summary(self.ranks, "rank") + "; " + count_summary(self.alphas, "alpha"),
            f"made for: {made_for}{meta}",
        ]

    def to_text(self) -> str:
        size = f"{self.file_size / 2**20:.2f} MiB" if self.file_size else "in memory"
        dtypes = ", ".join(f"{d} x{n}" if len(self.dtypes) > 1 else d for d, n in self.dtypes.items())
        lines = [f"LoRA: {self.name} ({size}, {self.tensors} tensors, {self.parameters:,} values, {dtypes})"]
        lines += self.summary_lines()
        lines.append(f"kind: {self.algorithm}; targets: {self.targets} (model {self.model_targets}, "
                     f"text encoder {self.text_targets})")
        agree = {True: "the file's layers and its metadata agree",
                 False: f"the file's metadata says {family_label(self.metadata_family)}, its layers say "
                        f"{family_label(self.family)}",
                 None: "no family in the metadata to compare with" if self.metadata_family is None
                 else "the layers name no family to compare with"}[self.families_agree]
        lines.append(f"family check: {agree}")
        if self.verdict is not None:
            lines.append(f"model: {self.model_name or family_label(self.model_family)}; verdict: {self.verdict} "
                         f"({self.matched} of {self.targets} targets match this model)")
            if self.unmatched:
                lines.append(f"unmatched: {len(self.unmatched)}: {_shown(self.unmatched, 5)}")
        if self.unsupported:
            kinds = ", ".join(sorted(set(self.unsupported.values())))
            lines.append(f"WARNING: {len(self.unsupported)} key(s) of kinds LoRA Lab does not apply yet ({kinds}).")
        if self.unknown_keys:
            lines.append(f"WARNING: {len(self.unknown_keys)} key(s) not recognised as LoRA weights, e.g. "
                         f"'{self.unknown_keys[0]}'.")
        lines += self._training_lines()
        lines += self._health_lines()
        lines += self._energy_lines()
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)

    def _training_lines(self) -> list[str]:
        t = self.training
        if not t.fields and not t.top_tags and not t.notes:
            return ["training metadata: none in the file"]
        out = ["training metadata:"]
        width = max((len(label) for label, _ in t.fields), default=0)
        out += [f"  {label.ljust(width)}  {value}" for label, value in t.fields]
        if t.top_tags:
            tags = ", ".join(f"{tag} ({n})" for tag, n in t.top_tags)
            out.append(f"  top tags ({t.tag_images} distinct): {tags}")
        out += [f"  {n}" for n in t.notes]
        return out

    def _health_lines(self) -> list[str]:
        if self.findings is None:
            return []
        if not self.findings:
            checked = " and W + dW against fp16" if self.base_checked else ""
            return [f"health: OK (no NaN/Inf, no all-zero layers, nothing beyond fp16's range{checked})"]
        out = ["health:"]
        by_kind: dict[str, list[LayerFinding]] = {}
        for f in self.findings:
            by_kind.setdefault(f.kind, []).append(f)
        for kind in FINDING_TEXT:
            found = by_kind.get(kind)
            if not found:
                continue
            prefix = "WARNING: " if kind in PROBLEM_KINDS else ""
            shown = "; ".join(f"{f.layer} [{f.block}]" + (f" {f.detail}" if f.detail else "") for f in found[:6])
            more = f"; ... ({len(found) - 6} more)" if len(found) > 6 else ""
            out.append(f"  {prefix}{FINDING_TEXT[kind]}: {len(found)} layer(s): {shown}{more}")
        return out

    def _energy_lines(self) -> list[str]:
        if self.energy is None:
            return []
        touched = [e for e in self.energy if e.targets]
        total = math.sqrt(sum(e.norm ** 2 for e in touched)) if touched else 0.0
        where = f"{family_label(self.block_family)} blocks from the {self.block_source}"
        out = [f"block energy (||dW||_F at strength 1; {where}; total {total:.4g}):"]
        head = f"  {'block':<12} {'targets':>7} {'||dW||':>10} {'share':>6}"
        if self.base_checked:
            head += f" {'max|W+dW|':>10}"
        out.append(head)
        problem = self.problem_blocks()
        for e in touched:
            share = (e.norm ** 2 / total ** 2) if total > 0 else 0.0
            row = f"  {e.block:<12} {e.targets:>7} {e.norm:>10.4g} {share:>6.1%}"
            if self.base_checked:
                row += f" {e.max_merged:>10.4g}" if e.max_merged is not None else f" {'-':>10}"
            if e.block in problem:
                row += "  <- problem"
            out.append(row)
        untouched = [e.block for e in self.energy if not e.targets]
        if untouched:
            out.append(f"  untouched: {compact_names(untouched)}")
        return out

    def to_dict(self) -> dict:
        d = asdict(self)
        d["ranks"] = [[k, v] for k, v in self.ranks.items()]
        d["alphas"] = [[k, v] for k, v in self.alphas.items()]
        d["families_agree"] = self.families_agree
        d["healthy"] = self.healthy
        return d


# --- helpers ------------------------------------------------------------------------------------

def _fmt(v) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def count_summary(counts: Mapping, what: str) -> str:
    """``rank: 4`` when one value, ``rank: 4-32 (4 (x10), 32 (x2))`` when several; ``None`` is left out."""
    known = {k: n for k, n in counts.items() if k is not None}
    if not known:
        return f"{what}: n/a"
    if len(known) == 1:
        return f"{what}: {_fmt(next(iter(known)))}"
    common = ", ".join(f"{_fmt(v)} (x{n})" for v, n in Counter(known).most_common(4))
    return f"{what}: {min(known):g}-{max(known):g} ({common}{', ...' if len(known) > 4 else ''})"


def _shown(names: Sequence[str], limit: int) -> str:
    return ", ".join(names[:limit]) + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")


def algorithm_headline(algorithms: Sequence[str]) -> str:
    """One label: ``LoRA``, ``LoCon`` (a LoRA with conv kernels), ``LoHa``, ``LoKr``, ``full diff``, ``DoRA (...)``."""
    base = {a.split("+")[0] for a in algorithms}
    if "locon" in base:
        base.discard("lora")
    head = " + ".join(_ALGO_LABELS[a] for a in _ALGO_ORDER if a in base) or "unknown"
    return f"DoRA ({head})" if any(a.endswith("+dora") for a in algorithms) else head


def _is_text_encoder(name: str) -> bool:
    return canonical_name(name).startswith(("lora_te", "text_encoder", "te_", "clip_", "t5"))


# --- block names from the file's own module names ------------------------------------------------

_FILE_UNET_DIFF_RX = re.compile(r"^(down_blocks|up_blocks)_(\d+)_(resnets|attentions|downsamplers|upsamplers)_(\d+)_(.+)$")
_FILE_UNET_MID_RX = re.compile(r"^mid_block_(resnets|attentions)_(\d+)_(.+)$")
_FILE_UNET_LDM_RX = re.compile(r"^(input_blocks|output_blocks)_(\d+)_(\d+)_(.+)$")
_FILE_UNET_LDM_MID_RX = re.compile(r"^middle_block_(\d+)_(.+)$")
_FILE_DIT_KNOWN_RX = re.compile(r"(?:^|_)(double_blocks|single_blocks|joint_blocks)_(\d+)_(.+)$")
_FILE_FLUX_DIFFUSERS_RX = re.compile(r"(?:^|_)(single_transformer_blocks|transformer_blocks)_(\d+)_(.+)$")
_FILE_GENERIC_RX = re.compile(r"^(?:.*?_)??((?:[a-z0-9]+_)*?(?:blocks|layers))_(\d+)(?:_(.+))?$")
_TE_PREFIX_RX = re.compile(r"^lora_te([123])_(.+)$")


def file_module_key(name: str, family: str | None) -> str | None:
    """A model weight key standing for the file's module ``name`` (for ``block_of``), or ``None``.

    See the module docstring for the rule. Text-encoder names give ``clip_l.``/``clip_g.``/``clip_h.``/
    ``t5xxl.`` keys as the family's encoders go.
    """
    fam = normalize_family(family)
    c = canonical_name(name)
    m = _TE_PREFIX_RX.match(c)
    if m:
        encoders = {"sd2": ("clip_h",), "flux": ("clip_l", "t5xxl"), "sd3": ("clip_l", "clip_g", "t5xxl")}
        order = encoders.get(fam, ("clip_l", "clip_g", "t5xxl"))
        index = int(m.group(1)) - 1
        return f"{order[index]}.transformer.{m.group(2)}.weight" if index < len(order) else None
    for prefix in ("lora_unet_", "lora_transformer_"):
        if c.startswith(prefix):
            rest = c[len(prefix):]
            break
    else:
        rest = c
    m = _FILE_UNET_DIFF_RX.match(rest)
    if m:
        return f"diffusion_model.{m.group(1)}.{m.group(2)}.{m.group(3)}.{m.group(4)}.{m.group(5)}.weight"
    m = _FILE_UNET_MID_RX.match(rest)
    if m:
        return f"diffusion_model.mid_block.{m.group(1)}.{m.group(2)}.{m.group(3)}.weight"
    if rest.startswith("conv_in"):
        return "diffusion_model.conv_in.weight"
    m = _FILE_UNET_LDM_RX.match(rest)
    if m:
        return f"diffusion_model.{m.group(1)}.{m.group(2)}.{m.group(3)}.{m.group(4)}.weight"
    m = _FILE_UNET_LDM_MID_RX.match(rest)
    if m:
        return f"diffusion_model.middle_block.{m.group(1)}.{m.group(2)}.weight"
    m = _FILE_DIT_KNOWN_RX.search(rest)
    if m:
        return f"diffusion_model.{m.group(1)}.{m.group(2)}.{m.group(3)}.weight"
    if fam == "flux":
        m = _FILE_FLUX_DIFFUSERS_RX.search(rest)
        if m:
            container = "single_blocks" if m.group(1).startswith("single") else "double_blocks"
            return f"diffusion_model.{container}.{m.group(2)}.{m.group(3)}.weight"
    m = _FILE_GENERIC_RX.match(rest)
    if m:
        return f"diffusion_model.{m.group(1)}.{m.group(2)}.{m.group(3) or 'weight'}.weight"
    return f"diffusion_model.{rest}.weight"


def file_block(name: str, family: str | None) -> str:
    """The block of a file module name under ``family`` (``BASE`` when no block can be told)."""
    key = file_module_key(name, family)
    return "BASE" if key is None else block_of(family, key)


# --- training metadata ---------------------------------------------------------------------------

_TRAINING_FIELDS = (
    ("ss_network_module", "network"),
    ("lycoris_algo", "LyCORIS algorithm"),
    ("ss_network_dim", "dim (rank)"),
    ("ss_network_alpha", "alpha"),
    ("ss_network_args", "network args"),
    ("ss_base_model_version", "base model version"),
    ("modelspec.architecture", "architecture"),
    ("ss_sd_model_name", "base model"),
    ("modelspec.title", "title"),
    ("ss_output_name", "output name"),
    ("ss_resolution", "resolution"),
    ("modelspec.resolution", "resolution (modelspec)"),
    ("ss_num_train_images", "training images"),
    ("ss_num_epochs", "epochs"),
    ("ss_epoch", "epoch saved"),
    ("ss_steps", "steps"),
    ("ss_max_train_steps", "max steps"),
    ("ss_learning_rate", "learning rate"),
    ("ss_unet_lr", "UNet learning rate"),
    ("ss_text_encoder_lr", "text encoder learning rate"),
    ("ss_optimizer", "optimizer"),
    ("ss_lr_scheduler", "LR scheduler"),
    ("ss_mixed_precision", "precision"),
    ("ss_seed", "seed"),
    ("ss_training_started_at", "training started"),
    ("ss_training_finished_at", "training finished"),
    ("ss_training_comment", "comment"),
    ("modelspec.trigger_phrase", "trigger phrase"),
)
_EMPTY_VALUES = {"", "None", "none", "null"}


def _readable(key: str, value: str) -> str:
    if key in ("ss_training_started_at", "ss_training_finished_at"):
        try:
            return datetime.fromtimestamp(float(value), tz=timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        except (ValueError, OverflowError, OSError):
            return value
    if key.endswith("_lr") or key == "ss_learning_rate":
        try:
            return f"{float(value):g}"
        except ValueError:
            return value
    if key == "ss_network_args":
        try:
            args = json.loads(value)
            if isinstance(args, dict):
                return ", ".join(f"{k}={v}" for k, v in args.items())
        except json.JSONDecodeError:
            pass
    return value if len(value) <= 120 else value[:117] + "..."


def training_info(metadata: Mapping[str, str], *, top: int = TOP_TAGS) -> TrainingInfo:
    """Readable training metadata: kohya ``ss_*``, ``modelspec.*``, LyCORIS, PEFT adapter config, tags."""
    info = TrainingInfo()
    for key, label in _TRAINING_FIELDS:
        value = metadata.get(key)
        if value is not None and value.strip() not in _EMPTY_VALUES:
            info.fields.append((label, _readable(key, value.strip())))
    raw_peft = metadata.get("lora_adapter_metadata")
    if raw_peft:
        try:
            config = json.loads(raw_peft)
            parts = sorted({k.rsplit(".", 1)[0] for k in config if k.endswith(".lora_alpha")})
            for part in parts:
                info.fields.append((f"PEFT {part}", f"r={config.get(f'{part}.r')}, "
                                    f"lora_alpha={config.get(f'{part}.lora_alpha')}"
                                    + (", rsLoRA" if config.get(f"{part}.use_rslora") else "")
                                    + (", DoRA" if config.get(f"{part}.use_dora") else "")))
        except (json.JSONDecodeError, AttributeError):
            info.notes.append("lora_adapter_metadata is not valid JSON")
    raw_tags = metadata.get("ss_tag_frequency")
    if raw_tags and raw_tags.strip() not in _EMPTY_VALUES:
        try:
            per_dir = json.loads(raw_tags)
            counts: Counter[str] = Counter()
            for tags in per_dir.values():
                for tag, n in tags.items():
                    if tag.strip():
                        counts[tag.strip()] += int(n)
            info.top_tags = counts.most_common(top)
            info.tag_images = len(counts)
        except (json.JSONDecodeError, AttributeError, TypeError, ValueError):
            info.notes.append("ss_tag_frequency is not readable JSON")
    return info


# --- planning against a model without failing on what the inspection should report ---------------

def plan_for_inspection(lora: LoadedLora, *, model_keys: Mapping[str, object] | KeyIndex,
                        model_shapes: Mapping[str, torch.Size], model_family: str | None,
                        clip_keys: Mapping[str, object] | KeyIndex | None = None,
                        clip_shapes: Mapping[str, torch.Size] | None = None) -> LoraPlan:
    """:func:`~lora_ops.plan.plan_lora` at strength 1 that reports instead of refusing.

    Another family or misfitting shapes become unmatched targets (``allow_other_family``); layers with
    NaN/Inf, which ``plan_lora`` refuses, are matched by name only, so that the inspection can name them.
    """
    host = dict(model_keys=model_keys, model_shapes=model_shapes, model_family=model_family,
                clip_keys=clip_keys, clip_shapes=clip_shapes, allow_other_family=True, refuse_unmatched=False)
    try:
        return plan_lora(lora, **host)
    except NonFiniteError:
        pass
    bad = {n for n, a in lora.parsed.modules.items() if not factors_finite(a)}
    bad_bias = {n for n, a in lora.parsed.bias_diffs.items() if not factors_finite(a)}
    clean = replace(lora, parsed=replace(
        lora.parsed, modules={n: a for n, a in lora.parsed.modules.items() if n not in bad},
        bias_diffs={n: a for n, a in lora.parsed.bias_diffs.items() if n not in bad_bias}))
    plan = plan_lora(clean, **host)
    unet_index, clip_index = KeyIndex.of(model_keys), KeyIndex.of(clip_keys)
    for names, source, is_bias in ((bad, lora.parsed.modules, False), (bad_bias, lora.parsed.bias_diffs, True)):
        for name in sorted(names):
            target, entries = unet_index.lookup(name), plan.model_entries
            if target is None and clip_keys:
                target, entries = clip_index.lookup(name), plan.clip_entries
            if target is None:
                plan.unmatched.append(name)
            else:
                entries.append(PatchEntry(target=target, adapter=source[name], strength=1.0, module=name,
                                          is_bias=is_bias))
    return plan


# --- the analysis --------------------------------------------------------------------------------

@dataclass
class _Target:
    name: str
    adapter: Adapter
    block: str
    entry: PatchEntry | None = None


def _targets(lora: LoadedLora, plan: LoraPlan | None, block_family: str | None,
             by_model: bool) -> Iterator[_Target]:
    parsed = lora.parsed
    seen: set[tuple[str, bool]] = set()
    if plan is not None and by_model:
        for e in plan.model_entries + plan.clip_entries + plan.skipped_zero:
            seen.add((e.module, e.is_bias))
            yield _Target(e.module, e.adapter, block_of(block_family, e.weight_key), e)
    for is_bias, source in ((False, parsed.modules), (True, parsed.bias_diffs)):
        for name, adapter in source.items():
            if (name, is_bias) in seen:
                continue
            block = UNMATCHED_BLOCK if (plan is not None and by_model) else file_block(name, block_family)
            yield _Target(name, adapter, block)


def _stored_tensors(adapter: Adapter) -> list[torch.Tensor]:
    return [t for t in vars(adapter).values() if isinstance(t, torch.Tensor) and t.is_floating_point()]


def _underflow_share(a: torch.Tensor) -> tuple[int, float]:
    """(count, share of non-zero values) of ``|a|`` values that round to 0 in fp16."""
    nonzero = int(torch.count_nonzero(a))
    if nonzero == 0:
        return 0, 0.0
    under = int(torch.count_nonzero((a > 0) & (a <= FP16_UNDERFLOW)))
    return under, under / nonzero


def _base_for(entry: PatchEntry, base_weights: Callable[[str], torch.Tensor]) -> torch.Tensor | None:
    try:
        weight = base_weights(entry.weight_key)
    except (KeyError, AttributeError, LoraLabError):
        return None
    if weight is None:
        return None
    if entry.target.offset is not None and not entry.is_bias:
        weight = target_view(weight, entry.target.offset)
    return weight.detach().to(device="cpu", dtype=torch.float32)


def _analyse_target(t: _Target, base: torch.Tensor | None, findings: list[LayerFinding]
                    ) -> tuple[float, float | None] | None:
    """Health findings of one target; returns ``(||dW||_F^2, max |W + dW| or None)`` or ``None`` if unusable."""
    def flag(kind: str, detail: str = "") -> None:
        findings.append(LayerFinding(t.name, kind, t.block, detail))

    stored = _stored_tensors(t.adapter)
    if any(not torch.isfinite(s).all() for s in stored):
        flag("nonfinite", "in the stored values")
        return None
    stored_max = max((float(s.abs().max()) for s in stored if s.numel()), default=0.0)
    if stored_max >= FP16_OVERFLOW:
        flag("file_overflow", f"(max {stored_max:.4g})")
    under = [_underflow_share(s.abs().float()) for s in stored if s.dtype != torch.float16]
    count = sum(u[0] for u in under)
    nonzero_total = sum(int(torch.count_nonzero(s)) for s in stored if s.dtype != torch.float16)
    if count and count / max(nonzero_total, 1) >= UNDERFLOW_SHARE:
        flag("file_underflow", f"({count} values, {count / nonzero_total:.1%})")
    try:
        with torch.no_grad():
            if base is not None and t.entry is not None:
                delta = t.entry.delta(base.shape, base=base)
            elif t.adapter.weight_dependent:
                flag("needs_model")
                return None
            else:  # without the model, DoRA's direction only (the magnitude rescale needs W0)
                inner = t.adapter.without_magnitude() if t.adapter.magnitude is not None else t.adapter
                delta = inner.delta((-1,), dtype=torch.float32)
    except (RuntimeError, ValueError) as exc:
        flag("error", f"({exc})")
        return None
    a = delta.abs()
    if not torch.isfinite(a).all():
        flag("nonfinite", "in the delta")
        return None
    amax = float(a.max()) if a.numel() else 0.0
    if amax == 0.0:
        flag("zero")
    if amax >= FP16_OVERFLOW:
        flag("delta_overflow", f"(max {amax:.4g})")
    count, share = _underflow_share(a)
    if count and share >= UNDERFLOW_SHARE:
        flag("delta_underflow", f"({count} values, {share:.1%})")
    energy = float(torch.linalg.vector_norm(delta)) ** 2
    merged_max = None
    if base is not None:
        merged_max = float((base + delta.reshape(base.shape)).abs().max()) if base.numel() else 0.0
        if merged_max >= FP16_OVERFLOW:
            flag("merged_overflow", f"(max |W + dW| {merged_max:.4g})")
    return energy, merged_max


def _block_order(block_family: str | None, found: Sequence[str]) -> list[str]:
    order = family_blocks(block_family)
    extra = sorted((b for b in found if b not in order and b != UNMATCHED_BLOCK), key=_natural_key)
    tail = [UNMATCHED_BLOCK] if UNMATCHED_BLOCK in found else []
    return order + extra + tail


def _natural_key(name: str) -> tuple:
    return tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name))


def inspect_lora(lora: LoadedLora, *, plan: LoraPlan | None = None, model_family: str | None = None,
                 base_weights: Callable[[str], torch.Tensor] | None = None, block_family: str | None = None,
                 analyse_weights: bool = True, model_name: str | None = None) -> Inspection:
    """Inspect a loaded LoRA, optionally against a model's plan (see the module docstring).

    ``plan``: the LoRA planned for the model (:func:`plan_for_inspection`), for matched/unmatched and
    the verdict, and to name blocks by the model's keys. ``base_weights(key)`` returns the model's
    unpatched weight for a weight key (any dtype; read one at a time), for the DoRA delta and the
    |W + dW| check. ``block_family`` picks the block map (default: the model's family, else the
    LoRA's). ``analyse_weights=False`` skips the deltas (health and energy stay ``None``): what the
    loader's report uses.
    """
    parsed, fam = lora.parsed, lora.family
    adapters = list(parsed.modules.values())
    all_names = list(parsed.modules) + list(parsed.bias_diffs)
    text_targets = sum(1 for n in all_names if _is_text_encoder(n))
    tensors = list(lora.file.tensors.values())
    if not tensors:  # an in-memory LORA value (a merge, a training run): count what the adapters hold
        tensors = [t for a in (*adapters, *parsed.bias_diffs.values()) for t in vars(a).values()
                   if isinstance(t, torch.Tensor)]
    insp = Inspection(
        name=lora.name, path=str(lora.file.path) if lora.file.path else None, file_size=lora.file.size_bytes,
        format=parsed.format, algorithms=parsed.algorithms, algorithm=algorithm_headline(parsed.algorithms),
        targets=len(all_names), model_targets=len(all_names) - text_targets, text_targets=text_targets,
        tensors=len(tensors), parameters=sum(t.numel() for t in tensors),
        ranks=dict(Counter(a.rank for a in adapters).most_common()),
        alphas=dict(Counter(a.alpha for a in adapters).most_common()),
        dtypes=dict(Counter(str(t.dtype).replace("torch.", "") for t in tensors).most_common()),
        family=fam.family, family_evidence=list(fam.evidence), metadata_family=fam.metadata_family,
        training=training_info(lora.file.metadata), unsupported=dict(parsed.unsupported),
        unknown_keys=list(parsed.unknown_keys), model_family=model_family, model_name=model_name)

    other_family = False
    if plan is not None:
        # strong evidence only: layers that do not fit the model's weights, or nothing that matches
        other_family = bool(plan.misfits) or (insp.targets > 0 and plan.matched_count == 0)
        insp.unmatched = list(plan.unmatched)
        insp.matched = insp.targets - len(plan.unmatched)
        if other_family:
            insp.verdict = VERDICT_OTHER_FAMILY
        elif not plan.unmatched:
            insp.verdict = VERDICT_COMPATIBLE
        else:
            insp.verdict = VERDICT_PARTIAL
            if all(_is_text_encoder(n) for n in plan.unmatched):
                insp.notes.append("every unmatched target is a text-encoder layer: connect the CLIP input to "
                                  "match them.")
    if not analyse_weights:
        return insp

    by_model = plan is not None and not other_family
    if block_family is None:
        block_family = model_family if by_model else fam.family
    insp.block_family = block_family
    insp.block_source = "model's weight keys" if by_model else "file's module names"
    if other_family:
        insp.notes.append(f"blocks are named after the layout of the LoRA's own layers ({fam.describe()}), not "
                          f"after the model's.")
    findings: list[LayerFinding] = []
    sums: dict[str, list] = {}
    dora_without_base = False
    for t in _targets(lora, plan, block_family, by_model):
        base = None
        if base_weights is not None and t.entry is not None:
            base = _base_for(t.entry, base_weights)
            insp.base_checked = insp.base_checked or base is not None
        dora_without_base |= t.adapter.magnitude is not None and base is None
        slot = sums.setdefault(t.block, [0.0, 0, None])
        result = _analyse_target(t, base, findings)
        slot[1] += 1
        if result is None:
            continue
        energy, merged_max = result
        slot[0] += energy
        if merged_max is not None:
            slot[2] = merged_max if slot[2] is None else max(slot[2], merged_max)
    insp.findings = findings
    insp.energy = [BlockEnergy(b, math.sqrt(sums[b][0]) if b in sums else 0.0, sums[b][1] if b in sums else 0,
                               sums[b][2] if b in sums else None)
                   for b in _block_order(block_family, list(sums))]
    if dora_without_base:
        insp.notes.append("DoRA layers: energies are of the low-rank direction only; the magnitude rescale "
                          "needs the model's weights (connect a model).")
    skipped = [f.layer for f in findings if f.kind in ("nonfinite", "error")]
    if skipped:
        insp.notes.append(f"{len(skipped)} layer(s) with NaN/Inf or no delta are left out of the block energy.")
    return insp


def inspect_file(path) -> Inspection:
    """Read, parse and inspect one file without a model (what the command line prints)."""
    return inspect_lora(load_lora(path))


# --- the chart -----------------------------------------------------------------------------------

def render_chart(inspection: Inspection, *, width: int = 760):
    """Per-block energy bars (problem blocks in red), a rank histogram when ranks vary, and a caption.

    Returns a ``PIL.Image.Image`` (RGB).
    """
    from . import chart

    parts = []
    if inspection.energy is not None:
        touched = [e for e in inspection.energy if e.targets]
        total = math.sqrt(sum(e.norm ** 2 for e in touched)) if touched else 0.0
        problem = inspection.problem_blocks()
        bars = []
        for e in inspection.energy:
            if e.targets:
                share = e.norm ** 2 / total ** 2 if total > 0 else 0.0
                note = f"{chart.compact_number(e.norm)}  ({share:.0%}, {e.targets} target{'' if e.targets == 1 else 's'})"
            else:
                note = "-"
            bars.append(chart.Bar(e.block, e.norm, note, chart.HIGHLIGHT if e.block in problem else None))
        title = (f"{inspection.name}: per-block energy ||dW|| "
                 f"({family_label(inspection.block_family)} blocks, from the {inspection.block_source})")
        parts.append(chart.bar_chart(bars, title=title, width=width))
    if any(f.kind == "merged_overflow" for f in inspection.findings or ()):
        bars = [chart.Bar(e.block, e.max_merged, chart.compact_number(e.max_merged),
                          chart.HIGHLIGHT if e.max_merged >= FP16_OVERFLOW else None)
                for e in inspection.energy or () if e.max_merged is not None]
        parts.append(chart.bar_chart(bars, title=f"largest |W + dW| per block (fp16 max {FP16_MAX:g}, inf from {FP16_OVERFLOW:g}; red: "
                                                 "renders black in fp16)", width=width))
    if inspection.ranks_vary:
        ranks = sorted((r, n) for r, n in inspection.ranks.items() if r is not None)
        bars = [chart.Bar(f"rank {r}", n, f"{n} targets") for r, n in ranks]
        if None in inspection.ranks:
            bars.append(chart.Bar("no rank", inspection.ranks[None], f"{inspection.ranks[None]} targets",
                                  chart.MUTED))
        parts.append(chart.bar_chart(bars, title="rank histogram", width=width))
    caption = [f"{inspection.algorithm}, {inspection.format}, {inspection.targets} targets; made for "
               f"{family_label(inspection.family)}"
               + (f"; on {family_label(inspection.model_family)}: {inspection.verdict}" if inspection.verdict else "")]
    if inspection.findings is not None:
        problems = [f for f in inspection.findings if f.kind in PROBLEM_KINDS]
        caption.append("health: OK" if not problems else
                       f"health: {len(problems)} problem(s), e.g. {FINDING_TEXT[problems[0].kind]} in "
                       f"{problems[0].layer}")
    else:
        caption.append("weights not analysed")
    colour = chart.HIGHLIGHT if inspection.healthy is False else chart.INK
    parts.append(chart.text_panel(caption, width=width, color=colour))
    return chart.stack(parts)


# --- command line --------------------------------------------------------------------------------

def main(argv: Sequence[str] | None = None) -> int:
    """``python -m lora_ops.inspect FILE [FILE...] [--json]``: exit 0, or 2 when a file cannot be read."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(prog="python -m lora_ops.inspect",
                                     description="Inspect LoRA files: format, family, training metadata, "
                                                 "health and per-block energy.")
    parser.add_argument("files", nargs="+", help="LoRA files (.safetensors)")
    parser.add_argument("--json", action="store_true", help="print one JSON object per file (a JSON list)")
    parser.add_argument("--chart", metavar="DIR", help="also write <name>.png per-block charts into DIR")
    args = parser.parse_args(argv)
    status = 0
    results = []
    for i, path in enumerate(args.files):
        try:
            insp = inspect_file(path)
        except LoraLabError as exc:
            print(f"error: {exc}", file=sys.stderr)
            results.append({"path": str(path), "error": str(exc)})
            status = 2
            continue
        if args.chart:
            from pathlib import Path

            out = Path(args.chart)
            out.mkdir(parents=True, exist_ok=True)
            render_chart(insp).save(out / f"{Path(path).stem}.png")
        if args.json:
            results.append(insp.to_dict())
        else:
            if i:
                print()
            print(insp.to_text())
    if args.json:
        print(json.dumps(results, indent=2, default=str))
    return status


if __name__ == "__main__":
    raise SystemExit(main())
