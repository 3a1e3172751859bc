// Unit tests of web/lib/report_format.js: how a node's report is split into lines to show on the node.
import assert from "node:assert/strict";
import { test } from "node:test";

import { countWarnings, familyFromReport, reportLines, reportTexts, wrappedLineCount } from "../../web/lib/report_format.js";

// A loader report as lora_ops/report.py writes it, with the block table of lora_ops/blocks.block_table.
const LOADER_REPORT = `LoRA: sd15_full_kohya.safetensors
format: kohya; algorithm: locon, lora
rank: 4; alpha: 8
made for: SD1.x (attention in the first UNet level; cross-attention width 768); metadata says SD1.x
model: SD1.x
targets: 344 of 344 applied (model 272 at strength 1, text encoder 72 at strength 1)
WARNING: 2 layer(s) overflow fp16 at this strength: input_blocks.4.1.proj_in, middle_block.1.proj_in
block weights:
block   weight  in file  applied
CLIP_L  1             1        1
IN04    0.5           1        1
M00     0             1        0
OUT09   0             0        0  not in this LoRA
total                 5        4`;

test("reportLines classifies title, warnings, the block table and plain lines", () => {
  const lines = reportLines(LOADER_REPORT);
  const kinds = lines.map((l) => l.kind);
  assert.equal(lines.length, 14);
  assert.deepEqual(kinds.slice(0, 7), ["title", "plain", "plain", "plain", "plain", "plain", "warning"]);
  assert.deepEqual(kinds.slice(7), ["heading", "table-head", "table", "table", "table", "table", "table-total"]);
  assert.equal(lines[6].text.startsWith("WARNING: 2 layer(s)"), true);
  assert.equal(lines[10].text, "IN04    0.5           1        1");
});

test("reportLines: a stack's rows each start with a title; blank lines separate them", () => {
  const text = `[1/2] LoRA: a.safetensors\nmodel: SDXL\n\n[2/2] LoRA: b.safetensors\nWARNING: unmatched: 3\n\n`;
  assert.deepEqual(reportLines(text).map((l) => l.kind), ["title", "plain", "blank", "title", "warning"]);
});

test("reportLines: a table ends at a blank line; later colon lines are headings", () => {
  const text = "block weights:\nblock  weight\nIN04   0.5\n\nunmatched:\nx";
  assert.deepEqual(reportLines(text).map((l) => l.kind), ["heading", "table-head", "table", "blank", "heading", "plain"]);
});

test("countWarnings and familyFromReport", () => {
  assert.equal(countWarnings(LOADER_REPORT), 1);
  assert.equal(familyFromReport(LOADER_REPORT), "sd1");
  assert.equal(familyFromReport("model: SDXL; verdict: compatible"), "sdxl");
  assert.equal(familyFromReport("made for: Flux"), null);
  assert.equal(familyFromReport(""), null);
});

test("reportTexts reads ui.text of an executed message", () => {
  assert.deepEqual(reportTexts({ text: ["a", "", "b"] }), ["a", "b"]);
  assert.deepEqual(reportTexts({ text: "one" }), ["one"]);
  assert.deepEqual(reportTexts({ images: [] }), []);
  assert.deepEqual(reportTexts(undefined), []);
});

test("wrappedLineCount: the lines a report takes at a node's width", () => {
  assert.equal(wrappedLineCount(["targets: 344 of 344 applied (model 272 at strength 1, text encoder 72)", "", "x"], 40), 2 + 1 + 1);
  assert.equal(wrappedLineCount([], 40), 0);
  assert.equal(wrappedLineCount(["abc"], 0), 3);
});
