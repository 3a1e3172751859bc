// Runs web/lib/block_syntax.js on cases from tests/test_web_unit.py, which checks the answers against the
// pack's Python parser (lora_ops/blocks.py). Reads {payload, cases} as JSON on stdin, writes a JSON list.
//   {op: "read", text}                      -> {error, readOnly, values, encoders, extras}
//   {op: "write", values, encoders, extras} -> {text}
//   {op: "set", text, block, value}         -> {text} or {error}
import { readFileSync } from "node:fs";

import { makeSpec, readText, setBlockValue, writeText } from "../../../web/lib/block_syntax.js";

const { payload, cases } = JSON.parse(readFileSync(0, "utf8"));
const spec = makeSpec(payload);
const answers = cases.map((c) => {
  try {
    if (c.op === "read") {
      const r = readText(c.text, spec);
      return { error: r.error, readOnly: r.readOnly, values: r.values, encoders: r.encoders, extras: r.extras.map((e) => e.text) };
    }
    if (c.op === "write") return { text: writeText(c.values, c.encoders, (c.extras ?? []).map((t) => ({ text: t })), spec) };
    if (c.op === "set") return { text: setBlockValue(c.text, spec, c.block, c.value) };
    return { error: `unknown op ${c.op}` };
  } catch (err) {
    return { error: String(err.message ?? err) };
  }
});
process.stdout.write(JSON.stringify(answers));
