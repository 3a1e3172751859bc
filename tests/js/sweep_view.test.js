// Unit tests of web/lib/sweep_view.js: hit-testing cells of the sweep grid and the text about a cell.
import assert from "node:assert/strict";
import { test } from "node:test";

import {
  breakPointKind,
  breakPointText,
  metricLabel,
  cellAt,
  cellRect,
  cellSummary,
  findCell,
  formatNumber,
  payloadProblems,
  rectPercent,
  toImagePoint,
  viewQuery,
} from "../../web/lib/sweep_view.js";

// 2 rows x 3 columns of 64 px cells, 4 px gaps, 40 px of labels on the left and 20 px on top.
const LAYOUT = { width: 248, height: 156, left: 40, top: 20, cell_w: 64, cell_h: 64, gap: 4, cols: 3, rows: 2 };
const PAYLOAD = {
  grid: { filename: "sweep_00001_.png", subfolder: "lora_lab", type: "output" },
  layout: LAYOUT,
  columns: [{ label: "no LoRA", weight: null }, { label: "0.5", weight: 0.5 }, { label: "1", weight: 1 }],
  rows: [{ label: "a lighthouse" }, { label: "a cat" }],
  cells: [
    { row: 0, col: 0, weight: null, label: "no LoRA", metrics: { lpips_ref: 0 }, flags: [] },
    { row: 0, col: 1, weight: 0.5, label: "0.5", metrics: { lpips_ref: 0.123456, clip_score: null }, flags: [] },
    { row: 0, col: 2, weight: 1, label: "1", metrics: { lpips_ref: 0.61 }, flags: ["black"] },
    { row: 1, col: 2, weight: 1, label: "1", metrics: {}, flags: [] },
  ],
  break_point: { weight: 1, row: 0, col: 2, reason: "lpips_ref above 0.5" },
  mode: "batched",
};

test("cellRect follows the layout formula", () => {
  assert.deepEqual(cellRect(LAYOUT, 0, 0), { x: 40, y: 20, w: 64, h: 64 });
  assert.deepEqual(cellRect(LAYOUT, 1, 2), { x: 40 + 2 * 68, y: 20 + 68, w: 64, h: 64 });
});

test("cellAt finds the cell under a point and nothing in margins, gaps or outside", () => {
  assert.deepEqual(cellAt(LAYOUT, 40, 20), { row: 0, col: 0 });
  assert.deepEqual(cellAt(LAYOUT, 103.9, 83.9), { row: 0, col: 0 });
  assert.equal(cellAt(LAYOUT, 105, 50), null); // the gap between columns 0 and 1
  assert.deepEqual(cellAt(LAYOUT, 108, 50), { row: 0, col: 1 });
  assert.equal(cellAt(LAYOUT, 10, 50), null); // row labels
  assert.equal(cellAt(LAYOUT, 50, 5), null); // column labels
  assert.equal(cellAt(LAYOUT, 40 + 3 * 68 + 1, 30), null); // right of the last column
  assert.equal(cellAt(LAYOUT, 50, 20 + 2 * 68 + 1), null); // below the last row
});

test("cellAt(centre of cellRect) is that cell, for every cell", () => {
  for (let r = 0; r < LAYOUT.rows; r++) {
    for (let c = 0; c < LAYOUT.cols; c++) {
      const rect = cellRect(LAYOUT, r, c);
      assert.deepEqual(cellAt(LAYOUT, rect.x + rect.w / 2, rect.y + rect.h / 2), { row: r, col: c });
      assert.deepEqual(cellAt(LAYOUT, rect.x + rect.w - 0.01, rect.y + rect.h - 0.01), { row: r, col: c });
      assert.notDeepEqual(cellAt(LAYOUT, rect.x + rect.w, rect.y), { row: r, col: c });
    }
  }
});

test("toImagePoint scales element coordinates to image pixels", () => {
  assert.deepEqual(toImagePoint(LAYOUT, { width: 124, height: 78 }, 62, 39), { x: 124, y: 78 });
});

test("rectPercent places overlays in percent of the image", () => {
  const p = rectPercent(LAYOUT, cellRect(LAYOUT, 0, 2));
  assert.ok(Math.abs(p.left - (100 * 176) / 248) < 1e-9);
  assert.ok(Math.abs(p.width - (100 * 64) / 248) < 1e-9);
  assert.ok(Math.abs(p.top - (100 * 20) / 156) < 1e-9);
});

test("cellSummary: label, weight, metrics, flags and the break point", () => {
  assert.deepEqual(cellSummary(PAYLOAD, findCell(PAYLOAD, 0, 1)), [
    "0.5 (a lighthouse)", "weight: 0.5", "clip score: n/a", "lpips ref: 0.1235",
  ]);
  assert.deepEqual(cellSummary(PAYLOAD, findCell(PAYLOAD, 0, 0)), ["no LoRA (a lighthouse)", "weight: none (no LoRA)", "lpips ref: 0"]);
  const bp = cellSummary(PAYLOAD, findCell(PAYLOAD, 0, 2));
  assert.equal(bp.at(-2), "flags: black");
  assert.equal(bp.at(-1), "break point: lpips_ref above 0.5");
  assert.equal(findCell(PAYLOAD, 1, 0), null);
  assert.deepEqual(cellSummary(PAYLOAD, null), []);
});

test("breakPointText with and without a break point; only a found one is shown as a warning", () => {
  assert.equal(breakPointText(PAYLOAD), "break point at weight 1: lpips_ref above 0.5");
  assert.equal(breakPointText({ ...PAYLOAD, break_point: null }), "no break point in this sweep");
  assert.equal(breakPointKind(PAYLOAD), "found");
  assert.equal(breakPointKind({ ...PAYLOAD, break_point: null }), "none");
});

test("the sweep's metrics read as words, in a fixed order", () => {
  const cell = { row: 0, col: 1, weight: 0.5, label: "0.5", flags: [],
    metrics: { psnr_ref: 31.25, change_prev: 0.02, change_ref: 0.1 } };
  assert.deepEqual(cellSummary({ ...PAYLOAD, break_point: null }, cell).slice(2), [
    "change vs no LoRA (1 - SSIM): 0.1", "change vs previous weight (1 - SSIM): 0.02", "PSNR vs no LoRA (dB): 31.25"]);
  assert.equal(metricLabel("some_new_metric"), "some new metric");
});

test("formatNumber", () => {
  assert.equal(formatNumber(null), "n/a");
  assert.equal(formatNumber(0.000012), "1.20e-5");
  assert.equal(formatNumber(123456), "1.23e+5");
  assert.equal(formatNumber(2 / 3), "0.6667");
  assert.equal(formatNumber(Number.NaN), "NaN");
  assert.equal(formatNumber(-Infinity), "-inf");
});

test("payloadProblems accepts the contract and names what is missing", () => {
  assert.deepEqual(payloadProblems(PAYLOAD), []);
  assert.deepEqual(payloadProblems(null), ["no sweep data"]);
  const broken = { ...PAYLOAD, layout: { ...LAYOUT, cell_w: "64" }, cells: undefined };
  assert.deepEqual(payloadProblems(broken), ["layout.cell_w is not a number", "no cells"]);
});

test("viewQuery builds the /view URL of the grid", () => {
  assert.equal(viewQuery(PAYLOAD.grid), "/view?filename=sweep_00001_.png&subfolder=lora_lab&type=output");
});
