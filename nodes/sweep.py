"""``LoraLabSweep``: one LoRA at several weights with the same seed, in one sampler batch, with metrics.

The host glue of the sweep: it plans the LoRA once (``lora_ops.plan``), renders the reference with
the plain model (so it is the very image core ``KSampler`` makes), renders each row's LoRA cells as
one batch with a per-row strength inside the forward pass (``bridge.with_row_strengths``), or, when
memory does not allow a batch, cell by cell through the fused merge (``bridge.with_patches``). The
checks, metrics, break point and grid are host-free (``lora_ops.sweep``).
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import dataclass, field, replace

import comfy.model_management as mm
import comfy.sample
import comfy.samplers
import comfy.utils
import folder_paths
import torch
from PIL import Image

from ..lora_ops import family_label
from ..lora_ops.batched import BatchedDelta, BatchLayoutError, overflow_weights, prepare_deltas
from ..lora_ops.blocks import block_notes
from ..lora_ops.errors import LoraLabError
from ..lora_ops.patching import PatchEntry
from ..lora_ops.numerics import HALF_DTYPES, to_uint8
from ..lora_ops.plan import LoadedLora
from ..lora_ops.stack import LoraStack
from ..lora_ops.sweep import (AXES, BREAK_RULE, Cell, SweepInputError, break_point, check_budget, compose_grid,
                              flags_of, measure_row, metrics_chart, parse_axis, sweep_weights)
from ..lora_ops.safeio import atomic_target
from . import bridge, sampling
from .changes import inputs_fingerprint
from .images import image_tensor
from .lora_files import cached_lora, resolve_lora_path
from .planning import BLOCK_EXTRA_INPUTS, model_family_of, plan_for, resolve_block_weights
from .stack import plan_stack, stack_entries
from .stack_types import STACK_INPUT, read_stack

log = logging.getLogger(__name__)

NO_LORA = "(none)"
BATCH_MODES = ["auto", "batched", "repatch"]


@dataclass
class SweepRequest:
    """Everything the node was given (its inputs by name, as ComfyUI passes them)."""

    model: object
    clip: object
    vae: object
    lora_name: str
    positive: str
    negative: str
    seed: int
    steps: int
    cfg: float
    sampler_name: str
    scheduler: str
    width: int
    height: int
    weight_start: float
    weight_end: float
    weight_count: int
    include_reference: bool
    block_weights: str
    axis: str
    axis_values: str
    lora: object = None
    lora_stack: object = None
    lora_name_b: str = NO_LORA
    sweep_clip: bool = True
    batch_mode: str = "auto"
    max_batch: int = 0
    filename_prefix: str = "lora_lab/sweep"
    allow_other_family: bool = False
    block_a: float = 1.0
    block_b: float = 1.0
    block_seed: int = 0
    prompt: object = None
    extra_pnginfo: object = None
    positive_cond: object = None
    negative_cond: object = None


@dataclass
class SweepPlan:
    """What the checks and planning found, before anything is sampled."""

    weights: list[float]
    swept: LoadedLora
    swept_name: str
    swept_bw: str
    rows: list  # RowSpec
    deltas: list[dict]  # per row: weight key -> BatchedDelta
    limits: list[tuple[float, float]]  # per row: the weights beyond which a merge overflows
    latent: torch.Tensor
    mode: str
    chunk: int
    fallback: str = ""  # why batched mode gave way to repatch, when it did


@dataclass
class RowSpec:
    """One row of the grid: its label, prompt, the swept LoRA's plan for it, and what is fixed in it."""

    label: str
    positive: str
    model_entries: list[PatchEntry]  # the swept LoRA at strength 1 (block factors folded in)
    clip_entries: list[PatchEntry]
    fixed_model: list[PatchEntry] = field(default_factory=list)  # other stack rows, LoRA B at the row's strength
    fixed_clip: list[PatchEntry] = field(default_factory=list)
    block_notes: list[str] = field(default_factory=list)  # notes and warnings of the row's block weights


def _scaled(entries: list[PatchEntry], factor: float) -> list[PatchEntry]:
    return [replace(e, strength=e.strength * factor) for e in entries]


class _Conditioning:
    """Where a cell's conditioning comes from: the prompts encoded by the (LoRA-patched) CLIP, or the
    CONDITIONING the user connected (their own encode nodes, e.g. with Flux guidance), used as it is."""

    def __init__(self, positive_cond=None, negative_cond=None):
        self.given = {"positive": positive_cond, "negative": negative_cond}

    @property
    def connected(self) -> bool:
        return self.given["positive"] is not None

    def encode(self, clip, text: str, role: str):
        if self.connected:
            return self.given[role]
        if clip is None:
            raise SweepInputError("no CLIP is connected and no positive_cond/negative_cond either.",
                                  "connect the CLIP of your checkpoint, or your own conditioning to positive_cond "
                                  "and negative_cond.")
        return sampling.encode_prompt(clip, text)


def _clip_with(clip, entries: list[PatchEntry]):
    if not entries:
        return clip
    c = clip.clone()
    c.patcher = bridge.with_patches(clip.patcher, entries)
    return c


def _batch_conditioning(conds: list) -> list:
    """Per-cell conditionings (batch 1 each) as one conditioning whose batch row ``i`` is cell ``i``."""
    first = conds[0]
    if all(c is first for c in conds):
        return first
    out = []
    for i, (tensor, extra) in enumerate(first):
        if any(len(c) != len(first) for c in conds):
            raise LoraLabError("the cells' text conditionings differ in structure.", "set batch_mode to repatch.")
        merged = dict(extra)
        for k, v in extra.items():
            if isinstance(v, torch.Tensor) and v.shape[:1] == (1,):
                merged[k] = torch.cat([c[i][1][k] for c in conds])
        out.append([torch.cat([c[i][0] for c in conds]), merged])
    return out


class LoraLabSweep:
    """Render a LoRA at weight_start ... weight_end with the same seed next to a no-LoRA reference."""

    DESCRIPTION = ("Renders one LoRA at several weights (0.1 ... 1.0 by default) with the same seed and noise, next "
                   "to a no-LoRA reference, all cells of a row in one sampler batch; measures each cell (SSIM/PSNR "
                   "against the reference and the previous weight, NaN/black/saturated/overflow flags), names the "
                   "break point, and saves a labelled grid with a JSON report. Optional second axis: prompts, block "
                   "presets, or the strength of a second LoRA.")
    CATEGORY = "LoRA Lab"
    FUNCTION = "sweep"
    OUTPUT_NODE = True
    RETURN_TYPES = ("IMAGE", "IMAGE", "IMAGE", "STRING")
    RETURN_NAMES = ("grid", "images", "chart", "report")

    @classmethod
    def IS_CHANGED(cls, **inputs):
        """The content of the files this node reads (``nodes.changes``): a changed file re-runs the node."""
        return inputs_fingerprint(inputs)

    @classmethod
    def INPUT_TYPES(cls):
        loras = folder_paths.get_filename_list("loras")
        return {
            "required": {
                "model": ("MODEL",),
                "clip": ("CLIP",),
                "vae": ("VAE",),
                "lora_name": (loras, {"tooltip": "The LoRA to sweep (ignored when lora or lora_stack is connected)."}),
                "positive": ("STRING", {"default": "", "multiline": True}),
                "negative": ("STRING", {"default": "", "multiline": True}),
                "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF, "control_after_generate": True}),
                "steps": ("INT", {"default": 20, "min": 1, "max": 10000}),
                "cfg": ("FLOAT", {"default": 7.0, "min": 0.0, "max": 100.0, "step": 0.1, "round": 0.01}),
                "sampler_name": (comfy.samplers.KSampler.SAMPLERS,),
                "scheduler": (comfy.samplers.KSampler.SCHEDULERS,),
                "width": ("INT", {"default": 512, "min": 64, "max": 4096, "step": 8}),
                "height": ("INT", {"default": 512, "min": 64, "max": 4096, "step": 8}),
                "weight_start": ("FLOAT", {"default": 0.1, "min": -10.0, "max": 10.0, "step": 0.01}),
                "weight_end": ("FLOAT", {"default": 1.0, "min": -10.0, "max": 10.0, "step": 0.01,
                                         "tooltip": "May be below weight_start: the sweep then runs downwards."}),
                "weight_count": ("INT", {"default": 10, "min": 1, "max": 64}),
                "include_reference": ("BOOLEAN", {"default": True, "tooltip": "A no-LoRA column (weight 0)."}),
                "block_weights": ("STRING", {"default": "", "tooltip": "Block weights of the swept LoRA "
                                                                      "(same syntax as LoRA Lab Loader)."}),
                "axis": (list(AXES), {"default": "none", "tooltip":
                                      "Second axis (rows): prompts, block presets, or the strength of LoRA B."}),
                "axis_values": ("STRING", {"default": "", "multiline": True, "tooltip":
                                           "One prompt / block preset per line, or LoRA B strengths '0.3, 0.5, 0.7'."}),
            },
            "optional": {
                "lora": ("LORA", {"tooltip": "A LoRA from another LoRA Lab node, swept instead of lora_name."}),
                "lora_stack": (STACK_INPUT, {"tooltip": "Its last enabled row is swept; the other rows are applied "
                                                         "at their strengths in every cell."}),
                "lora_name_b": ([NO_LORA] + loras, {"tooltip": "LoRA B for axis = lora_b_strength."}),
                "sweep_clip": ("BOOLEAN", {"default": True, "tooltip": "The text encoder takes the cell's weight "
                                                                       "too (as LoraLoader with both strengths)."}),
                "batch_mode": (BATCH_MODES, {"default": "auto", "tooltip":
                               "batched: a row's cells in one sampler batch; repatch: one cell at a time through "
                               "the fused merge; auto: batched in chunks that fit memory, else repatch."}),
                "max_batch": ("INT", {"default": 0, "min": 0, "max": 64, "tooltip": "Cells per sampler batch "
                                                                                   "(0: as many as fit)."}),
                "filename_prefix": ("STRING", {"default": "lora_lab/sweep"}),
                "allow_other_family": ("BOOLEAN", {"default": False}),
                "positive_cond": ("CONDITIONING", {"tooltip": "Your own positive conditioning (e.g. from a Flux, "
                                                              "Wan or Qwen-Image encode node), used in every cell "
                                                              "instead of encoding 'positive' with the CLIP; the "
                                                              "text encoder is then not swept."}),
                "negative_cond": ("CONDITIONING", {"tooltip": "Your own negative conditioning (with "
                                                              "positive_cond)."}),
                **BLOCK_EXTRA_INPUTS,
            },
            "hidden": {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"},
        }

    def sweep(self, *args, **inputs):
        """The node's function: ComfyUI passes every input by name (positional calls follow the order of
        :class:`SweepRequest`'s fields)."""
        req = SweepRequest(*args, **inputs)
        if (req.positive_cond is None) != (req.negative_cond is None):
            raise SweepInputError("only one of positive_cond and negative_cond is connected.",
                                  "connect both (your own conditioning) or neither (the prompts are encoded).")
        if req.positive_cond is not None and req.axis == "prompts":
            raise SweepInputError("axis is prompts, but positive_cond is connected (one conditioning for every row).",
                                  "disconnect positive_cond/negative_cond to sweep prompts, or pick another axis.")
        self._conds = _Conditioning(req.positive_cond, req.negative_cond)
        if self._conds.connected:
            req.sweep_clip = False
        # ComfyUI runs nodes in inference mode; so does a direct call (a script, the bench)
        with torch.inference_mode():
            started = time.perf_counter()
            plan = self._plan(req)
            images, cells = self._render(req, plan)
            return self._finish(req, plan, images, cells, started)

    def _plan(self, req: SweepRequest) -> SweepPlan:
        """Every check, and the plan of every row, before anything is sampled."""
        weights = sweep_weights(req.weight_start, req.weight_end, req.weight_count)
        row_values = parse_axis(req.axis, req.axis_values)
        if req.width % 8 or req.height % 8:
            raise SweepInputError(f"width/height {req.width}x{req.height} are not multiples of 8.",
                                  "use multiples of 8.")
        if req.batch_mode not in BATCH_MODES:
            raise SweepInputError(f"batch_mode '{req.batch_mode}' is not one of {', '.join(BATCH_MODES)}.",
                                  "pick one.")
        check_budget(len(weights) + (1 if req.include_reference else 0), len(row_values), req.width, req.height)
        swept, swept_name, swept_bw, fixed_model, fixed_clip = self._resolve_lora(req)
        rows = self._plan_rows(req, swept, swept_bw, row_values, fixed_model, fixed_clip)
        model = req.model
        shapes = bridge.weight_shapes(model.model)
        base = bridge.base_weight_lookup(model, req.clip)
        widens = any(getattr(e.adapter, "reshape", None) is not None for r in rows for e in r.model_entries)
        if widens and req.batch_mode == "batched":
            raise SweepInputError(f"{swept_name} widens a weight of the model (a control LoRA), which the batched "
                                  "sweep cannot run in the forward pass.", "set batch_mode to auto or repatch.")
        deltas = [{} if widens else prepare_deltas(r.model_entries, shapes, base) for r in rows]
        limits = [self._overflow_limits(model, d, base) for d in deltas]
        latent = comfy.sample.fix_empty_latent_channels(
            model, torch.zeros([1, 4, *_latent_size(req.vae, req.height, req.width)]))
        mode, chunk = (("repatch", 1) if widens else
                       self._choose_mode(model, req.batch_mode, req.max_batch, len(weights), latent.shape, deltas))
        return SweepPlan(weights, swept, swept_name, swept_bw, rows, deltas, limits, latent, mode, chunk)

    def _calls_per_row(self, req: SweepRequest, plan: SweepPlan) -> int:
        lora_calls = math.ceil(len(plan.weights) / plan.chunk) if plan.mode != "repatch" else len(plan.weights)
        return (1 if req.include_reference else 0) + lora_calls

    def _render(self, req: SweepRequest, plan: SweepPlan) -> tuple[list[torch.Tensor], list[list[Cell]]]:
        """Every row's cells: the reference with the plain model, the LoRA cells in batches (or one by one
        through the merge), each measured against the reference and its weaker neighbour."""
        model, clip, vae, steps = req.model, req.clip, req.vae, req.steps
        noise = comfy.sample.prepare_noise(plan.latent, req.seed)
        settings = sampling.SamplerSettings(steps, req.cfg, req.sampler_name, req.scheduler, req.seed)
        progress = sampling.SamplerProgress(model, steps * self._calls_per_row(req, plan) * len(plan.rows))
        neg_plain = self._conds.encode(clip, req.negative, "negative")
        images: list[torch.Tensor] = []
        cells: list[list[Cell]] = []
        ref_cache: dict = {}
        for r, row in enumerate(plan.rows):
            row_start = progress.done
            row_model = bridge.with_patches(model, row.fixed_model) if row.fixed_model else model
            row_clip = _clip_with(clip, row.fixed_clip)
            row_cells: list[Cell] = []
            reference = None
            if req.include_reference:
                # one reference per distinct (fixed LoRAs, prompt): block-preset rows share the plain one
                key = (tuple((id(e.adapter), e.strength) for e in row.fixed_model), row.positive)
                if key not in ref_cache:
                    neg = self._conds.encode(row_clip, req.negative, "negative") if row.fixed_clip else neg_plain
                    pos = self._conds.encode(row_clip, row.positive, "positive")
                    lat = sampling.sample_latent(row_model, noise, plan.latent, pos, neg, settings,
                                                 progress.callback(steps))
                    ref_cache[key] = sampling.decode(vae, lat)[0]
                finite, reference = ref_cache[key]
                images.append(reference)
                row_cells.append(Cell(r, 0, None, "no LoRA", len(images) - 1, flags_of(reference, finite)))
            conds = self._cell_conds(row_clip, row, plan.weights, req.negative, req.sweep_clip)
            todo = [i for i, w in enumerate(plan.weights) if plan.limits[r][1] < w < plan.limits[r][0]]
            rendered = self._render_cells(req, plan, r, row, row_model, conds, todo, noise, settings, progress)
            progress.done = row_start + steps * self._calls_per_row(req, plan)
            for i, w in enumerate(plan.weights):
                col = i + (1 if req.include_reference else 0)
                if i in rendered:
                    finite, img = rendered[i]
                    images.append(img)
                    row_cells.append(Cell(r, col, w, f"{w:g}", len(images) - 1, flags_of(img, finite)))
                else:  # merging at this weight overflows the half-precision weights: not rendered
                    images.append(_placeholder(req.height, req.width))
                    row_cells.append(Cell(r, col, w, f"{w:g}", len(images) - 1, ["overflow"]))
            measure_row(row_cells, dict(enumerate(images)), reference)
            cells.append(row_cells)
        return images, cells

    def _render_cells(self, req: SweepRequest, plan: SweepPlan, r: int, row, row_model, conds, todo: list[int],
                      noise: torch.Tensor, settings, progress) -> dict[int, tuple[bool, torch.Tensor]]:
        """The LoRA cells of one row: ``{weight index: (finite, image)}``."""
        steps, vae = req.steps, req.vae
        rendered: dict[int, tuple[bool, torch.Tensor]] = {}
        if plan.mode != "repatch":
            ones = [1] * (noise.dim() - 1)
            try:
                for start in range(0, len(todo), plan.chunk):
                    part = todo[start:start + plan.chunk]
                    cell_model = bridge.with_row_strengths(row_model, plan.deltas[r], [plan.weights[i] for i in part])
                    pos = _batch_conditioning([conds[i][0] for i in part])
                    neg = _batch_conditioning([conds[i][1] for i in part])
                    k = len(part)
                    lat = sampling.sample_latent(cell_model, noise.repeat(k, *ones), plan.latent.repeat(k, *ones),
                                                 pos, neg, settings, progress.callback(steps))
                    rendered.update(zip(part, sampling.decode(vae, lat)))
                return rendered
            except BatchLayoutError as exc:
                if req.batch_mode == "batched":
                    raise
                # this model's layers do not keep the batch axis: every cell through the merge instead
                log.info("LoRA Lab sweep: %s; rendering cell by cell", exc.problem)
                plan.mode, plan.fallback, plan.chunk = "repatch", exc.problem, 1
                rendered = {}
                progress.total = max(progress.total, progress.done + steps * self._calls_per_row(req, plan)
                                     * (len(plan.rows) - r))
        for i in todo:
            cell_model = bridge.with_patches(row_model, _scaled(row.model_entries, plan.weights[i]))
            lat = sampling.sample_latent(cell_model, noise, plan.latent, conds[i][0], conds[i][1], settings,
                                         progress.callback(steps))
            rendered[i] = sampling.decode(vae, lat)[0]
        return rendered

    def _finish(self, req: SweepRequest, plan: SweepPlan, images: list[torch.Tensor], cells: list[list[Cell]],
                started: float) -> dict:
        """Break points, grid, chart and report; the grid and report saved; the node's outputs."""
        weights, rows = plan.weights, plan.rows
        breaks = [break_point(rc) for rc in cells]
        col_labels = (["no LoRA"] if req.include_reference else []) + [f"{w:g}" for w in weights]
        row_labels = [row.label for row in rows]
        model = req.model
        family = model_family_of(model)
        dtype = str(next(model.model.diffusion_model.parameters()).dtype).replace("torch.", "")
        title = (f"{plan.swept_name}  |  seed {req.seed}  |  {family_label(family)} ({dtype})  |  "
                 f"{req.sampler_name}/{req.scheduler}, {req.steps} steps, cfg {req.cfg:g}")
        pil = [[None if "overflow" in c.flags else _pil(images[c.image_index]) for c in rc] for rc in cells]
        grid, geometry = compose_grid(pil, col_labels, row_labels, title, [[c.flags for c in rc] for rc in cells],
                                      [bp[0].col if bp else None for bp in breaks], (req.width, req.height))
        chart = metrics_chart(weights, cells, row_labels, breaks, plan.swept_name)
        if plan.mode == "repatch":
            mode = f"repatch (batched was not possible: {plan.fallback})" if plan.fallback else "repatch"
        else:
            mode = f"batched ({plan.chunk} cells per sampler batch)"
        swept = plan.swept
        report = {
            "lora": plan.swept_name, "sha256": swept.content_sha256() if swept.file.path else None,
            "model_family": family, "model_dtype": dtype, "seed": req.seed, "steps": req.steps, "cfg": req.cfg,
            "sampler": req.sampler_name, "scheduler": req.scheduler, "width": req.width, "height": req.height,
            "weights": weights, "include_reference": req.include_reference, "block_weights": plan.swept_bw,
            "axis": req.axis, "rows": [{"label": row.label, "positive": row.positive, "block_notes": row.block_notes}
                                       for row in rows],
            "sweep_clip": req.sweep_clip,
            "mode": mode,
            "overflow_weight": [{"above": None if math.isinf(lim[0]) else round(lim[0], 6),
                                 "below": None if math.isinf(lim[1]) else round(lim[1], 6)} for lim in plan.limits],
            "cells": [c.as_dict() for rc in cells for c in rc],
            "break_points": [None if bp is None else {"row": bp[0].row, "col": bp[0].col, "weight": bp[0].weight,
                                                      "reason": bp[1]} for bp in breaks],
            "break_rule": BREAK_RULE,
            "seconds": round(time.perf_counter() - started, 3),
        }
        saved = self._save(grid, report, req.filename_prefix, req.prompt, req.extra_pnginfo)
        report["grid_file"] = saved
        text = json.dumps(report, indent=1)
        first_break = next((bp for bp in report["break_points"] if bp), None)
        log.info("LoRA Lab sweep of %s: %d cells in %.1f s (%s); break point: %s", plan.swept_name,
                 sum(len(rc) for rc in cells), report["seconds"], report["mode"],
                 first_break["reason"] if first_break else "none")
        ui_payload = {
            "grid": saved, "layout": geometry.as_dict(),
            "columns": [{"label": lab, "weight": (None if req.include_reference and i == 0 else
                                                  weights[i - (1 if req.include_reference else 0)])}
                        for i, lab in enumerate(col_labels)],
            "rows": [{"label": lab} for lab in row_labels],
            "cells": report["cells"], "break_point": first_break, "mode": report["mode"],
        }
        return {"ui": {"images": [saved], "lora_lab_sweep": [ui_payload]},
                "result": (image_tensor(grid), torch.stack(images), image_tensor(chart), text)}

    # --- planning --------------------------------------------------------------------------------------

    def _resolve_lora(self, req: SweepRequest):
        """The swept LoRA, its name, block weights, and the fixed entries of the other stack rows."""
        model, clip, lora, lora_stack, block_weights = req.model, req.clip, req.lora, req.lora_stack, req.block_weights
        fixed_model: list[PatchEntry] = []
        fixed_clip: list[PatchEntry] = []
        if lora is not None:
            return lora, lora.name, block_weights, fixed_model, fixed_clip
        if lora_stack is not None:
            rows = read_stack(lora_stack).enabled
            if not rows:
                raise SweepInputError("the connected lora_stack has no enabled rows.",
                                      "enable a row, or disconnect lora_stack to sweep lora_name.")
            last = rows[-1]
            if len(rows) > 1:
                planned = plan_stack(model, clip, LoraStack(tuple(rows[:-1])))
                fixed_model, fixed_clip, _ = stack_entries(model, planned, "none", 1.0)
            swept = cached_lora(resolve_lora_path(last.lora_name))
            return swept, last.lora_name, block_weights or last.block_weights, fixed_model, fixed_clip
        swept = cached_lora(resolve_lora_path(req.lora_name))
        return swept, req.lora_name, block_weights, fixed_model, fixed_clip

    def _plan_rows(self, req: SweepRequest, swept: LoadedLora, swept_bw: str, row_values: list[str], fixed_model,
                   fixed_clip) -> list[RowSpec]:
        model, clip, axis, positive = req.model, req.clip, req.axis, req.positive
        lora_name_b, allow_other_family = req.lora_name_b, req.allow_other_family
        a, b, bseed = req.block_a, req.block_b, req.block_seed
        lora_b = None
        if axis == "lora_b_strength":
            if not lora_name_b or lora_name_b == NO_LORA:
                raise SweepInputError("axis is lora_b_strength but no lora_name_b is chosen.",
                                      "pick LoRA B in lora_name_b, or set axis to none.")
            lora_b = cached_lora(resolve_lora_path(lora_name_b))
            plan_b, _ = plan_for(model, clip, lora_b, 1.0, 1.0, allow_other_family)
        rows = []
        plans: dict[str, tuple] = {}
        for value in row_values:
            bw_text = value if axis == "block_presets" else swept_bw
            if bw_text not in plans:
                bw = resolve_block_weights(bw_text, model, a=a, b=b, seed=bseed)
                plan, _ = plan_for(model, clip, swept, 1.0, 1.0, allow_other_family, bw)
                if not plan.model_entries and not plan.clip_entries:
                    raise SweepInputError(f"with block weights '{bw_text}' nothing of {swept.name} is applied.",
                                          "check the block weights: every block is at 0.")
                notes = block_notes(bw, plan.block_targets()) if bw is not None else []
                plans[bw_text] = (plan.model_entries, plan.clip_entries, notes)
            m_entries, c_entries, notes = plans[bw_text]
            row = RowSpec(label=value, positive=value if axis == "prompts" else positive, model_entries=m_entries,
                          clip_entries=c_entries, fixed_model=list(fixed_model), fixed_clip=list(fixed_clip),
                          block_notes=notes)
            if lora_b is not None:
                s = float(value)
                row.label = f"{lora_b.name} {s:g}"
                row.fixed_model += _scaled(plan_b.model_entries, s)
                row.fixed_clip += _scaled(plan_b.clip_entries, s)
            rows.append(row)
        return rows

    @staticmethod
    def _overflow_limits(model, deltas: dict[str, BatchedDelta], base) -> tuple[float, float]:
        """Weights beyond which merging this LoRA into the model's half-precision weights overflows."""
        params = dict(model.model.named_parameters())
        half = {k: d for k, d in deltas.items() if params[k].dtype in HALF_DTYPES}
        if not half:
            return math.inf, -math.inf
        dtype = params[next(iter(half))].dtype
        limits = overflow_weights(half, base, dtype).values()
        return min(lim[0] for lim in limits), max(lim[1] for lim in limits)

    @staticmethod
    def _choose_mode(model, batch_mode: str, max_batch: int, n: int, latent_shape: torch.Size,
                     deltas: list[dict[str, BatchedDelta]]) -> tuple[str, int]:
        """``(mode, cells per batch)``: the requested mode, or for ``auto`` the largest batch that fits."""
        if batch_mode == "repatch":
            return "repatch", 1
        chunk = min(max_batch or n, n)
        if batch_mode == "batched":
            return "batched", chunk
        device = model.load_device
        free = mm.get_free_memory(device)
        extra = max(sum(d.nbytes(torch.float16) for d in row.values()) for row in deltas)
        if not mm.loaded_models() or model.model not in [m.model for m in mm.loaded_models()]:
            free -= model.model_size()
        per_cell = model.memory_required([2, *latent_shape[1:]])  # cond + uncond of one cell
        fits = int(max(free - extra, 0) * 0.8 // max(per_cell, 1))
        if fits < 2 and n > 1:
            return "repatch", 1
        return "batched", max(1, min(chunk, fits))

    def _cell_conds(self, row_clip, row: RowSpec, weights: list[float], negative: str, sweep_clip: bool):
        """(positive, negative) per cell: encoded with the LoRA's text-encoder part at the cell's weight."""
        enc = self._conds.encode
        if not row.clip_entries or self._conds.connected:
            both = (enc(row_clip, row.positive, "positive"), enc(row_clip, negative, "negative"))
            return [both] * len(weights)
        if not sweep_clip:
            c = _clip_with(row_clip, row.clip_entries)
            both = (enc(c, row.positive, "positive"), enc(c, negative, "negative"))
            return [both] * len(weights)
        out = []
        for w in weights:
            c = _clip_with(row_clip, _scaled(row.clip_entries, w))
            out.append((enc(c, row.positive, "positive"), enc(c, negative, "negative")))
        return out

    # --- sampling, decoding, saving ----------------------------------------------------------------------

    @staticmethod
    def _save(grid: Image.Image, report: dict, prefix: str, prompt, extra_pnginfo) -> dict:
        """The grid PNG (with the workflow, as core SaveImage embeds it) and the JSON report next to it."""
        from comfy.cli_args import args
        from PIL.PngImagePlugin import PngInfo

        output_dir = folder_paths.get_output_directory()
        folder, filename, counter, subfolder, _ = folder_paths.get_save_image_path(prefix, output_dir, grid.width,
                                                                                  grid.height)
        metadata = None
        if not args.disable_metadata:
            metadata = PngInfo()
            if prompt is not None:
                metadata.add_text("prompt", json.dumps(prompt))
            for k, v in (extra_pnginfo or {}).items():
                metadata.add_text(k, json.dumps(v))
            metadata.add_text("lora_lab_sweep", json.dumps({k: v for k, v in report.items() if k != "cells"}))
        name = f"{filename}_{counter:05}_.png"
        path = os.path.join(folder, name)
        with atomic_target(path) as tmp:
            grid.save(tmp, format="PNG", pnginfo=metadata, compress_level=4)
        saved = {"filename": name, "subfolder": subfolder, "type": "output"}
        with atomic_target(path[:-4] + ".json") as tmp:
            with open(tmp, "w", encoding="utf-8") as fh:
                json.dump({**report, "grid_file": saved}, fh, indent=1)
        return saved


def _latent_size(vae, height: int, width: int) -> tuple[int, int]:
    """The latent's height and width for an image of ``height x width``: the VAE's own spatial
    compression (8 for SD/Flux-type VAEs, 16 or 32 for some video and DiT VAEs)."""
    try:
        ratio = int(vae.spacial_compression_encode())
    except (AttributeError, TypeError, ValueError):
        ratio = 8
    ratio = max(ratio, 1)
    return max(height // ratio, 1), max(width // ratio, 1)


def _placeholder(height: int, width: int) -> torch.Tensor:
    """A dark red image for a cell that was not rendered (keeps the image batch aligned with the cells)."""
    img = torch.zeros((height, width, 3))
    img[..., 0] = 0.35
    return img


def _pil(image: torch.Tensor) -> Image.Image:
    """8-bit pixels converted exactly as core ``SaveImage`` converts them (so a cell equals its saved image)."""
    return Image.fromarray(to_uint8(image))


NODE_CLASS_MAPPINGS = {"LoraLabSweep": LoraLabSweep}
NODE_DISPLAY_NAME_MAPPINGS = {"LoraLabSweep": "LoRA Lab Weight Sweep"}
