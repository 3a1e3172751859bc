// Unit tests of web/lib/lora_rows.js: the multi-LoRA loader's rows as JSON text, their edits, and inserting a
// trigger word into a prompt.
import assert from "node:assert/strict";
import { test } from "node:test";

import {
  activeCount, addRow, insertWord, moveRow, normalizeRow, parseRows, removeRow, serializeRows, updateRow,
} from "../../web/lib/lora_rows.js";

const A = { on: true, lora: "a.safetensors", strength: 0.8, strength_clip: 0.5, block_weights: "OUTALL" };
const B = { on: false, lora: "b.safetensors", strength: 1, strength_clip: 1, block_weights: "" };

test("rows survive a round trip through the saved text, one row per line", () => {
  const text = serializeRows([A, B]);
  assert.equal(text.split("\n").length, 4);
  assert.deepEqual(parseRows(text), { rows: [A, B], error: null });
  assert.equal(serializeRows([]), "[]");
  assert.deepEqual(parseRows(""), { rows: [], error: null });
  assert.deepEqual(parseRows('{"rows": [{"lora": "x"}]}').rows[0].lora, "x");
});

test("unreadable text keeps no rows and says why", () => {
  assert.match(parseRows("[{").error, /not readable JSON/);
  assert.equal(parseRows('{"a": 1}').error, "the rows are not a list");
});

test("normalizeRow fills defaults; clip strength follows the model strength", () => {
  assert.deepEqual(normalizeRow({ lora: "x", strength: "0.4" }),
    { on: true, lora: "x", strength: 0.4, strength_clip: 0.4, block_weights: "" });
  assert.deepEqual(normalizeRow(null), { on: true, lora: "", strength: 1, strength_clip: 1, block_weights: "" });
  assert.equal(normalizeRow({ strength: Number.NaN }).strength, 1);
});

test("add, remove, move and update return new lists", () => {
  const rows = [A, B];
  const added = addRow(rows, "c.safetensors");
  assert.equal(added.length, 3);
  assert.equal(added[2].lora, "c.safetensors");
  assert.equal(rows.length, 2);
  assert.deepEqual(removeRow(added, 0).map((r) => r.lora), ["b.safetensors", "c.safetensors"]);
  assert.deepEqual(moveRow(added, 2, -1).map((r) => r.lora), ["a.safetensors", "c.safetensors", "b.safetensors"]);
  assert.deepEqual(moveRow(added, 0, -1), added); // already first
  assert.deepEqual(moveRow(added, 0, 5).map((r) => r.lora), ["b.safetensors", "c.safetensors", "a.safetensors"]);
  assert.equal(updateRow(rows, 1, { on: true }).filter((r) => r.on).length, 2);
  assert.equal(activeCount([A, B, { ...B, on: true, lora: "" }]), 1);
});

test("insertWord appends a trigger word once", () => {
  assert.equal(insertWord("a photo of a cat", "zxq style"), "a photo of a cat, zxq style");
  assert.equal(insertWord("a photo, ZXQ style ", "zxq style"), "a photo, ZXQ style ");
  assert.equal(insertWord("", "zxq"), "zxq");
  assert.equal(insertWord("a cat,  ", "zxq"), "a cat, zxq");
  assert.equal(insertWord("a cat", "  "), "a cat");
  assert.equal(insertWord("zxq-ish cat", "zxq"), "zxq-ish cat, zxq"); // only whole parts count
});
