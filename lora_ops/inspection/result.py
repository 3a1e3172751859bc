"""What an inspection finds: the result types, their text and JSON forms, the report's words."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field

from ..blocks import compact_names
from ..families import family_label
from ..keymap import canonical_name

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
