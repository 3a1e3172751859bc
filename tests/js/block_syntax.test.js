// Unit tests of web/lib/block_syntax.js (block-weight text <-> slider values), with the block payloads the
// pack's route serves (tests/js/fixtures, kept in step with nodes/routes.py by tests/test_web_unit.py).
// The Python parser itself is the reference in tests/test_web_unit.py (tools/block_oracle.js).
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { test } from "node:test";

import {
  BlockSyntaxError,
  inspireBody,
  MAX_ENTRIES,
  MAX_TEXT_CHARS,
  makeSpec,
  normalizeName,
  numericValue,
  parseValue,
  readText,
  roundWeight,
  setBlockValue,
  splitItems,
  writeText,
} from "../../web/lib/block_syntax.js";

const load = (family) => makeSpec(JSON.parse(readFileSync(new URL(`./fixtures/blocks_${family}.json`, import.meta.url))));
const sd1 = load("sd1");
const sdxl = load("sdxl");
const flux = load("flux");

function values(reading, names) {
  return Object.fromEntries(names.map((n) => [n, reading.values[n]]));
}

test("makeSpec: order, blocks, groups and presets of the family", () => {
  assert.equal(sd1.blocks.length, 25);
  assert.deepEqual(sd1.encoders, ["CLIP_L"]);
  assert.deepEqual(sd1.groups.map((g) => g.name), ["BASE", "IN", "MID", "OUT"]);
  assert.deepEqual(flux.groups.map((g) => g.name), ["BASE", "IN / OUT", "DOUBLE", "SINGLE"]);
  assert.equal(flux.groups[2].blocks.length, 19);
  assert.equal(flux.groups[3].blocks.length, 38);
  assert.ok(sd1.presets.get("OUTALL").exact);
  assert.equal(sd1.presets.get("HALFA").exact, false);
});

test("splitItems: commas, newlines, comments; an empty entry is an error", () => {
  assert.deepEqual(splitItems("IN04=0.5, M00=0\nOUT*=1, # a comment, X=1"), ["IN04=0.5", "M00=0", "OUT*=1"]);
  assert.deepEqual(splitItems("ALL,"), ["ALL"]);
  assert.deepEqual(splitItems(""), []);
  assert.throws(() => splitItems("IN04=1,,M00=0"), BlockSyntaxError);
});

test("normalizeName pads numbers and keeps special names", () => {
  assert.equal(normalizeName("in4"), "IN04");
  assert.equal(normalizeName(" out011 "), "OUT11");
  assert.equal(normalizeName("base"), "BASE");
  assert.equal(normalizeName("clip_l"), "CLIP_L");
  assert.equal(normalizeName("mid"), null);
});

test("parseValue: numbers, A/B tokens, random tokens, and bad values", () => {
  assert.deepEqual(parseValue("-0.5", "x"), { value: -0.5, random: false });
  assert.deepEqual(parseValue("1e-1", "x"), { value: 0.1, random: false });
  assert.deepEqual(parseValue("+A", "x"), { value: "A", random: false });
  assert.deepEqual(parseValue("-b", "x"), { value: "-b", random: false });
  assert.deepEqual(parseValue("r", "x"), { value: "R", random: true });
  assert.throws(() => parseValue("0,5", "x"), /decimal point/);
  assert.throws(() => parseValue("half", "x"), BlockSyntaxError);
});

test("numericValue: A and B from the node's inputs, lowercase is half", () => {
  assert.equal(numericValue(0.25), 0.25);
  assert.equal(numericValue("A", { A: 0.8 }), 0.8);
  assert.equal(numericValue("-a", { A: 0.8 }), -0.4);
  assert.equal(numericValue("B", {}), 1);
});

test("readText: empty text is every block at 1", () => {
  const r = readText("", sd1);
  assert.equal(r.error, null);
  assert.deepEqual(r.readOnly, []);
  assert.ok(Object.values(r.values).every((v) => v === 1));
  assert.deepEqual(r.encoders.CLIP_L, { value: 1, explicit: false });
});

test("readText: names, ranges, globs, the default and later entries winning", () => {
  const r = readText("*=0.2, in4-IN06=0.5, M00=0, OUT*=1, OUT05=0.75", sd1);
  assert.equal(r.error, null);
  assert.deepEqual(values(r, ["BASE", "IN03", "IN04", "IN06", "IN07", "M00", "OUT00", "OUT05"]), {
    BASE: 0.2, IN03: 0.2, IN04: 0.5, IN06: 0.5, IN07: 0.2, M00: 0, OUT00: 1, OUT05: 0.75,
  });
  assert.deepEqual(r.encoders.CLIP_L, { value: 0.2, explicit: false });
});

test("readText: presets (built-in and user) combine with entries", () => {
  const r = readText("OUTALL, OUT05=0.5", sd1);
  assert.deepEqual(values(r, ["BASE", "IN00", "M00", "OUT04", "OUT05"]), { BASE: 1, IN00: 0, M00: 0, OUT04: 1, OUT05: 0.5 });
  const u = readText("myout", sd1);
  assert.deepEqual(values(u, ["BASE", "IN00", "OUT11"]), { BASE: 0.25, IN00: 0.25, OUT11: 0.75 });
  const f = readText("DOUBLE", flux);
  assert.deepEqual(values(f, ["BASE", "IN", "OUT", "D00", "S00"]), { BASE: 1, IN: 1, OUT: 1, D00: 1, S00: 0 });
});

test("readText: a preset overrides entries written before it", () => {
  const r = readText("IN04=0.3, OUTALL", sd1);
  assert.equal(r.values.IN04, 0);
});

test("readText: encoders follow BASE unless named; CLIP names the CLIP encoders", () => {
  const r = readText("BASE=0.5, CLIP=0", sdxl);
  assert.deepEqual(r.encoders, { CLIP_L: { value: 0, explicit: true }, CLIP_G: { value: 0, explicit: true } });
  const t = readText("BASE=0.5, T5=0.25", flux);
  assert.deepEqual(t.encoders, { CLIP_L: { value: 0.5, explicit: false }, T5: { value: 0.25, explicit: true } });
});

test("readText: vectors of the family's dialects; blocks without a position are 0", () => {
  const v17 = "1,0,0,0,0,0,0,0,0,0,0,1,1,1,1,1,1";
  const r = readText(v17, sd1);
  assert.equal(r.error, null);
  assert.deepEqual(values(r, ["BASE", "IN00", "IN01", "IN03", "OUT02", "OUT03", "OUT11"]), {
    BASE: 1, IN00: 0, IN01: 0, IN03: 0, OUT02: 0, OUT03: 0, OUT11: 1,
  });
  assert.match(r.notes[0], /17-value vector/);
  const full = readText(Array.from({ length: 26 }, (_, i) => String(i / 100)).join(","), sd1);
  assert.equal(full.values.IN00, 0.01);
  assert.equal(full.values.OUT11, 0.25);
  const mid3 = readText(["1", ...Array(11).fill("1"), "0.1", "0.2", "0.3", ...Array(12).fill("1")].join(","), sd1);
  // the middle position sets M00 and its transformer part (M00.1, at M00's own value: no extra entry), as in
  // lora_ops/blocks.py
  assert.deepEqual(mid3.extras.map((e) => e.text), ["M00.0=0.1", "M00.2=0.3"]);
  assert.equal(mid3.values.M00, 0.2);
  assert.equal(mid3.values.IN00, 0);
});

test("readText: selector entries are kept verbatim and leave the sliders editable", () => {
  const r = readText("IN05.attn=0, OUT*=0.5", sd1);
  assert.deepEqual(r.readOnly, []);
  assert.deepEqual(r.extras.map((e) => e.text), ["IN05.attn=0"]);
  assert.equal(r.values.IN05, 1);
});

test("readText: what the sliders must not rewrite makes the text read-only, with the reason", () => {
  assert.match(readText("IN05.attn=0, IN05=0.5", sd1).readOnly[0], /overridden by a later entry on IN05/);
  assert.match(readText("IN04=R", sd1).readOnly[0], /random/);
  assert.match(readText("*=U", sd1).readOnly[0], /random/);
  assert.match(readText("HALFA", sd1).readOnly[0], /HALFA/);
  assert.match(readText("ATTNOFF", sd1).readOnly[0], /ATTNOFF/);
});

test("readText: malformed text gives an error instead of values", () => {
  for (const [text, pattern] of [
    ["IN12=1", /Unknown block 'IN12'/],
    ["IN08-IN04=1", /backwards/],
    ["IN04=1, 0.5", /stands alone/],
    ["IN04", /block name without a weight/],
    ["NOPE", /neither a preset/],
    ["IN04==1", /more than one '='/],
    ["IN04=", /no weight/],
    ["1,2,3", /vector of 3 values/],
    ["IN05.foo=0", /Unknown selector/],
    ["D03=1", /Unknown block/],
  ]) {
    const r = readText(text, sd1);
    assert.match(r.error ?? "", pattern, text);
  }
});

test("readText: Inspire Pack's preset names read by the model's blocks, like LoRA Lab's own", () => {
  assert.deepEqual(readText("SD-INALL", sd1).values, readText("INALL", sd1).values);
  assert.deepEqual(readText("sdxl-outall", sdxl).values, readText("OUTALL", sdxl).values);
  const lyc = readText("SD-LyC-MIDALL", sd1);
  assert.equal(lyc.error, null);
  assert.deepEqual(lyc.readOnly, []);
  assert.equal(lyc.values.M00, 1);
  assert.equal(lyc.values.IN00, 0);
  assert.match(readText("SD-ROUT", sd1).readOnly[0], /SD-ROUT/);
  assert.match(readText("SD-INALL", sdxl).error, /neither a preset/);
});

test("readText: 'inspire:' text is checked as the node checks it, and read-only", () => {
  for (const text of ["inspire: 1,0,0,0,0,0,0,0,1,1,1,1,1,1,1,1,1", "# note\n INSPIRE: SD-INALL, OUT05=0.5",
    "inspire: MYNAME:1,0,1", "inspire: R,U,A,b", "inspire: SD-LyC-ALL"]) {
    const r = readText(text, sd1);
    assert.equal(r.error, null, text);
    assert.match(r.readOnly[0], /Inspire Pack/, text);
  }
  for (const [text, pattern] of [
    ["inspire: 1,1 0.5,0", /space-separated/],
    ["inspire: %default=0, in=1", /'%'/],
    ["inspire: NOSUCH", /neither a value nor a preset/],
    ["inspire: 1,0, OUTALL", /only BLOCK=weight entries/],
    ["inspire: 1,0, IN99=1", /Unknown block/],
    ["inspire:", /no vector/],
    ["inspire: OUTALL", /not a vector/],
    ["inspire: a:b:1", /':' too many/],
  ]) {
    assert.match(readText(text, sd1).error ?? "", pattern, text);
  }
  assert.equal(inspireBody("IN04=1, inspire: 1"), null);
  assert.equal(inspireBody("\n# x\ninspire:1,2").trim(), "1,2");
});

test("readText: a preset-file line and text beyond the limits are refused", () => {
  assert.match(readText("SD-BODY:1,1,1", sd1).error, /line of a preset file/);
  assert.match(readText("#".repeat(MAX_TEXT_CHARS + 1), sd1).error, /characters long/);
  assert.match(readText(Array(MAX_ENTRIES + 1).fill("IN04=1").join(","), sd1).error, /more than/);
});

test("readText: the general rule has no sliders", () => {
  const general = makeSpec({ family: "general", label: "general rule", closed: false, order: ["BASE"], encoders: [] });
  assert.match(readText("B07=0", general).readOnly[0], /no fixed block list/);
});

test("writeText: all ones is the empty text; A/B tokens are written back as tokens", () => {
  const r = readText("", sd1);
  assert.equal(writeText(r.values, r.encoders, r.extras, sd1), "");
  const a = readText("IN04-IN08=A, OUT*=-b", sd1);
  assert.equal(writeText(a.values, a.encoders, a.extras, sd1), "IN04-IN08=A, OUT*=-b");
});

test("writeText: a preset plus differences when that is shorter", () => {
  const r = readText("*=0, BASE=1, OUT*=1, OUT05=0.5, IN03=0.4", sd1);
  assert.equal(writeText(r.values, r.encoders, r.extras, sd1), "OUTALL, IN03=0.4, OUT05=0.5");
  const f = readText("SINGLE, S05=0.5", flux);
  assert.equal(writeText(f.values, f.encoders, f.extras, flux), "D*=0, S05=0.5");
  const m = readText("MIDD, IN05=0.5", sd1);
  assert.equal(writeText(m.values, m.encoders, m.extras, sd1), "MIDD, IN05=0.5");
});

test("writeText: the value that needs the fewest entries becomes *=, globs cover whole prefixes", () => {
  const r = readText("*=0, IN*=0.5", sdxl);
  assert.equal(writeText(r.values, r.encoders, r.extras, sdxl), "*=0, IN*=0.5");
  const s = readText("*=0.3, BASE=1, M00=1, OUT02-OUT04=1", sd1);
  assert.equal(writeText(s.values, s.encoders, s.extras, sd1), "IN*=0.3, OUT00-OUT01=0.3, OUT05-OUT11=0.3");
  const t = readText("*=0.3, BASE=1, IN03=1, OUT06=1", sd1);
  assert.equal(writeText(t.values, t.encoders, t.extras, sd1), "*=0.3, BASE=1, IN03=1, OUT06=1");
});

// A small seeded generator (mulberry32) so that the property test is repeatable.
function rng(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

test("writeText then readText gives the same values back (random block values, three families)", () => {
  const pool = [0, 1, 0.5, 0.25, -1, 1.5, 0.333, "A", "-b"];
  for (const [spec, seed] of [[sd1, 1], [sdxl, 2], [flux, 3]]) {
    const next = rng(seed);
    for (let i = 0; i < 150; i++) {
      const runs = Math.floor(next() * 6);
      const base = pool[Math.floor(next() * 3)];
      const vals = Object.fromEntries(["BASE", ...spec.blocks].map((n) => [n, base]));
      for (let k = 0; k < runs; k++) {
        const start = Math.floor(next() * spec.blocks.length);
        const len = 1 + Math.floor(next() * 8);
        const v = pool[Math.floor(next() * pool.length)];
        for (const b of spec.blocks.slice(start, start + len)) vals[b] = v;
      }
      if (next() < 0.3) vals.BASE = pool[Math.floor(next() * pool.length)];
      const encoders = Object.fromEntries(spec.encoders.map((e) => [e, { value: vals.BASE, explicit: false }]));
      if (next() < 0.3) encoders[spec.encoders[0]] = { value: 0.75, explicit: true };
      const text = writeText(vals, encoders, [], spec);
      const back = readText(text, spec);
      assert.equal(back.error, null, text);
      assert.deepEqual(back.values, vals, text);
      assert.deepEqual(back.encoders[spec.encoders[0]].explicit, encoders[spec.encoders[0]].explicit, text);
    }
  }
});

test("setBlockValue: one slider changes one block and keeps selector entries and named encoders", () => {
  const text = setBlockValue("OUTALL, IN05.attn=0, CLIP_L=0.5", sd1, "OUT05", 0.5);
  assert.equal(text, "OUTALL, OUT05=0.5, CLIP_L=0.5, IN05.attn=0");
  const r = readText(text, sd1);
  assert.equal(r.values.OUT05, 0.5);
  assert.deepEqual(r.encoders.CLIP_L, { value: 0.5, explicit: true });
  assert.equal(setBlockValue("", sd1, "CLIP_L", 0), "CLIP_L=0");
  assert.equal(setBlockValue("IN04=0.5", sd1, "IN04", 1), "");
});

test("setBlockValue refuses text it cannot rewrite without changing its meaning", () => {
  assert.throws(() => setBlockValue("IN04=R", sd1, "IN04", 0.5), /random/);
  assert.throws(() => setBlockValue("IN99=1", sd1, "IN04", 0.5), /Unknown block/);
  assert.throws(() => setBlockValue("", sd1, "D00", 0.5), /no block/);
});

test("roundWeight keeps slider steps short", () => {
  assert.equal(roundWeight(0.35000000000000003), 0.35);
  assert.equal(roundWeight("-0.1249"), -0.125);
});
