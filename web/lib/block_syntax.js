// Block-weight syntax <-> slider values, for the block-weight editor. Pure functions, no DOM.
//
// The text in the node's `block_weights` field is the source of truth; the sliders show what it means
// per block. `readText` evaluates the part of the pack's syntax (lora_ops/blocks.py) that sliders can
// show: numbers, `*=v`, names, ranges and globs, presets, vectors, and the symbolic values A/B (and
// a/b, half of them). Sub-block selector entries (`IN05.attn=0`) are kept verbatim after the block
// entries; random values (R/U), presets that hold selectors or A/B, and selector entries that a later
// entry overrides make the text read-only for the sliders: rewriting it would change what it means.
// `writeText` turns slider values back into the shortest text that means the same.
//
// The family's blocks, encoders, presets (resolved per block) and vector orders come from the pack's
// route GET /lora_lab/blocks (nodes/routes.py), turned into a spec by `makeSpec`.
//
// A text that starts with `inspire:` is read as Inspire Pack reads a vector: by the blocks each LoRA file
// patches, which only the node knows. `readText` checks it as the node does and shows it read-only.

const NUMBER_RX = /^[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?$/;
const TOKEN_RX = /^([+-]?)([RrUuAaBb])$/;
const NAME_RX = /^([A-Z]+)(\d{1,6})$/;
const SPECIAL_NAMES = new Set(["BASE", "CLIP", "CLIP_L", "CLIP_G", "CLIP_H", "T5", "IN", "OUT"]);
const SELECTOR_ATOMS = new Set(["attn", "attn1", "attn2", "mlp", "res", "mod", "img", "txt"]);
const MAX_PRESET_DEPTH = 8;
// as lora_ops/blocks.py: MAX_TEXT_CHARS, MAX_ENTRIES
export const MAX_TEXT_CHARS = 65536;
export const MAX_ENTRIES = 2000;
const INSPIRE_HEAD_RX = /^\s*inspire\s*:/i;
const PRESET_NAME_RX = /^[A-Za-z][A-Za-z0-9_.+-]{0,63}$/;

export class BlockSyntaxError extends Error {
  constructor(message) {
    super(message);
    this.name = "BlockSyntaxError";
  }
}

/** The editor's view of a family, from the /lora_lab/blocks payload. */
export function makeSpec(payload) {
  const order = [...payload.order];
  const encoders = [...(payload.encoders ?? [])];
  const blocks = order.filter((n) => n !== "BASE" && !encoders.includes(n));
  const presets = new Map();
  for (const p of payload.presets ?? []) presets.set(p.name.toUpperCase(), p);
  const dialects = new Map();
  for (const [n, positions] of Object.entries(payload.dialects ?? {})) dialects.set(Number(n), positions);
  return {
    family: payload.family,
    label: payload.label,
    closed: Boolean(payload.closed),
    order,
    encoders,
    blocks,
    groups: payload.groups ?? [],
    presets,
    dialects,
  };
}

/** Items of the text: split on newlines and commas, `#` comments dropped (as `_split_items`). */
export function splitItems(text) {
  const items = [];
  for (const rawLine of String(text).split(/\r\n|\r|\n/)) {
    const line = rawLine.split("#", 1)[0];
    if (!line.trim()) continue;
    const parts = line.split(",").map((p) => p.trim());
    if (parts[parts.length - 1] === "") parts.pop();
    for (const part of parts) {
      if (part === "") throw new BlockSyntaxError(`Empty entry in '${line.trim()}' (two commas in a row).`);
      items.push(part);
    }
  }
  return items;
}

export function isValue(item) {
  return NUMBER_RX.test(item) || TOKEN_RX.test(item);
}

/** `in4` -> `IN04`; special names as they are; null when the text is no block name. */
export function normalizeName(raw) {
  const name = String(raw).trim().toUpperCase();
  if (SPECIAL_NAMES.has(name)) return name;
  const m = NAME_RX.exec(name);
  if (!m) return null;
  return `${m[1]}${String(Number(m[2])).padStart(2, "0")}`;
}

/** A weight: a number, or a symbolic token `A`, `-A`, `a`, `B`... (R/U are flagged `random`). */
export function parseValue(token, where) {
  const t = String(token).trim();
  if (NUMBER_RX.test(t)) {
    const value = Number(t);
    if (!Number.isFinite(value)) throw new BlockSyntaxError(`The weight '${t}' in '${where}' is too large.`);
    return { value, random: false };
  }
  const m = TOKEN_RX.exec(t);
  if (!m) {
    const hint = /^[+-]?\d+,\d+$/.test(t) ? " Use '.' as the decimal point." : "";
    throw new BlockSyntaxError(`'${t}' in '${where}' is not a number.${hint}`);
  }
  const letter = m[2];
  const random = "RrUu".includes(letter);
  const normalized = (m[1] === "-" ? "-" : "") + (random ? letter.toUpperCase() : letter);
  return { value: normalized, random };
}

/** The number a weight stands for, given the node's A and B inputs (`a`/`b` are half of them). */
export function numericValue(value, inputs = {}) {
  if (typeof value === "number") return value;
  const m = /^(-?)([AaBb])$/.exec(value);
  if (!m) return NaN;
  const given = Number(m[2].toUpperCase() === "A" ? inputs.A ?? 1 : inputs.B ?? 1);
  const v = m[2] === m[2].toLowerCase() ? given / 2 : given;
  return m[1] === "-" ? -v : v;
}

export function formatValue(value) {
  if (typeof value !== "number") return value;
  if (Object.is(value, -0)) return "0";
  return String(value);
}

function sameValue(a, b) {
  return typeof a === typeof b && (typeof a === "number" ? a === b || (a === 0 && b === 0) : a === b);
}

function unknownName(raw, spec, where) {
  return new BlockSyntaxError(`Unknown block '${String(raw).trim()}' in '${where}' for ${spec.label}.`);
}

function resolveName(raw, spec, where) {
  const name = normalizeName(raw);
  if (name === "CLIP") {
    const found = spec.encoders.filter((e) => e.startsWith("CLIP_"));
    if (found.length) return found;
  }
  if (name === null) throw unknownName(raw, spec, where);
  if (name === "BASE" || spec.encoders.includes(name)) return [name];
  if (spec.order.includes(name)) return [name];
  throw unknownName(raw, spec, where);
}

/** Block names an entry's head covers: a glob `OUT*`, a range `IN04-IN08` or one name. */
export function resolveHead(head, spec, where) {
  const h = String(head).trim();
  if (h.endsWith("*") && h !== "*") {
    const prefix = h.slice(0, -1).trim().toUpperCase();
    if (!/^[A-Z][A-Z0-9_]*$/.test(prefix)) throw new BlockSyntaxError(`'${h}' in '${where}' is not a block pattern.`);
    const rx = new RegExp(`^${prefix}(?:\\d+|_[A-Z0-9]+)?$`);
    const found = spec.order.filter((n) => rx.test(n));
    if (!found.length) throw unknownName(h, spec, where);
    return found;
  }
  if (h.includes("-")) {
    const cut = h.indexOf("-");
    const left = h.slice(0, cut);
    const right = h.slice(cut + 1);
    if (!left.trim() || !right.trim()) {
      throw new BlockSyntaxError(`The range '${h}' in '${where}' needs a block on both sides.`);
    }
    const lo = resolveName(left, spec, where);
    const hi = resolveName(right, spec, where);
    if (lo.length !== 1 || hi.length !== 1) {
      throw new BlockSyntaxError(`The range '${h}' in '${where}' must run between two blocks.`);
    }
    const i = spec.order.indexOf(lo[0]);
    const j = spec.order.indexOf(hi[0]);
    if (i > j) throw new BlockSyntaxError(`The range '${h}' in '${where}' runs backwards (write ${hi[0]}-${lo[0]}).`);
    return spec.order.slice(i, j + 1);
  }
  return resolveName(h, spec, where);
}

function checkSelector(parts, where) {
  for (const part of parts) {
    const atom = part.trim().toLowerCase();
    if (!atom) throw new BlockSyntaxError(`Empty selector in '${where}'.`);
    if (!SELECTOR_ATOMS.has(atom) && !/^\d{1,6}$/.test(atom)) {
      throw new BlockSyntaxError(`Unknown selector '${atom}' in '${where}'.`);
    }
  }
}

class Evaluator {
  constructor(spec) {
    this.spec = spec;
    this.rules = []; // {blocks: string[], value} whole blocks, or {extra: text, blocks} selector entries
    this.defaultValue = 1;
    this.random = [];
    this.inexactPresets = [];
    this.notes = [];
  }

  value(token, where) {
    const parsed = parseValue(token, where);
    if (parsed.random) this.random.push(where);
    return parsed.value;
  }

  everything() {
    return ["BASE", ...this.spec.blocks];
  }

  entry(item, nested) {
    const eq = item.indexOf("=");
    const lhs = item.slice(0, eq);
    const rhs = item.slice(eq + 1);
    if (rhs.includes("=")) throw new BlockSyntaxError(`'${item}' has more than one '='.`);
    if (!rhs.trim()) throw new BlockSyntaxError(`'${item}' has no weight after '='.`);
    if (!lhs.trim()) throw new BlockSyntaxError(`'${item}' has no block before '='.`);
    const [head, ...selector] = lhs.trim().split(".");
    if (selector.length) checkSelector(selector, item);
    const value = this.value(rhs, item);
    if (head.trim() === "*" && !selector.length) {
      if (nested) this.rules.push({ blocks: this.everything(), value });
      else this.defaultValue = value;
      return;
    }
    const blocks = head.trim() === "*" ? [...this.spec.blocks] : resolveHead(head, this.spec, item);
    if (selector.length) this.rules.push({ extra: item.trim(), blocks });
    else this.rules.push({ blocks, value });
  }

  preset(raw, depth) {
    const name = raw.trim().toUpperCase();
    if (raw.includes(":")) {
      throw new BlockSyntaxError(`'${raw.trim()}' looks like a line of a preset file (NAME:vector); put it in the user presets file, or start the text with 'inspire:'.`);
    }
    const preset = this.spec.presets.get(name);
    if (!preset) {
      if (normalizeName(raw) && (this.spec.order.includes(normalizeName(raw)) || SPECIAL_NAMES.has(normalizeName(raw)))) {
        throw new BlockSyntaxError(`'${raw.trim()}' is a block name without a weight (write ${raw.trim()}=<weight>).`);
      }
      throw new BlockSyntaxError(`'${raw.trim()}' is neither a preset for ${this.spec.label} nor a BLOCK=weight entry.`);
    }
    if (depth >= MAX_PRESET_DEPTH) throw new BlockSyntaxError(`The preset ${name} refers to itself.`);
    if (preset.error) throw new BlockSyntaxError(preset.error);
    if (!preset.exact) {
      this.inexactPresets.push(name);
      return;
    }
    for (const [block, value] of Object.entries(preset.values)) this.rules.push({ blocks: [block], value });
  }

  vector(values) {
    const n = values.length;
    const positions = this.spec.dialects.get(n);
    if (!positions) {
      const accepted = [...this.spec.dialects.keys()].join(", ") || "none";
      throw new BlockSyntaxError(`A vector of ${n} values does not fit ${this.spec.label} (it takes ${accepted}).`);
    }
    const parsed = values.map((v, i) => this.value(v, `position ${i + 1} of the ${n}-value vector`));
    const covered = new Set();
    const whole = new Map();
    const parts = [];
    positions.forEach((entries, i) => {
      for (const entry of entries) {
        const [block, sel] = entry.split(".");
        covered.add(block);
        if (sel) parts.push({ extra: `${block}.${sel}=${formatValue(parsed[i])}`, blocks: [block], value: parsed[i] });
        else {
          whole.set(block, parsed[i]);
          this.rules.push({ blocks: [block], value: parsed[i] });
        }
      }
    });
    // a part at its block's own value says nothing more (as lora_ops/blocks.py)
    for (const part of parts) {
      if (!whole.has(part.blocks[0]) || !sameValue(whole.get(part.blocks[0]), part.value)) {
        this.rules.push({ extra: part.extra, blocks: part.blocks });
      }
    }
    const missing = this.everything().filter((b) => !covered.has(b));
    if (missing.length) this.rules.push({ blocks: missing, value: 0 });
    this.notes.push(`${n}-value vector` + (missing.length ? `; blocks without a position set to 0` : ""));
  }

  text(text, nested, depth) {
    const items = splitItems(text);
    this.spent = (this.spent ?? 0) + items.length;
    if (this.spent > MAX_ENTRIES) throw new BlockSyntaxError(`The block weights expand to more than ${MAX_ENTRIES} entries.`);
    const values = [];
    let started = false;
    for (const item of items) {
      if (isValue(item)) {
        if (started) throw new BlockSyntaxError(`The value '${item}' stands alone after named entries or presets.`);
        values.push(item);
        continue;
      }
      if (values.length && !started) this.vector(values);
      started = true;
      if (item.includes("=")) this.entry(item, nested);
      else this.preset(item, depth);
    }
    if (values.length && !started) this.vector(values);
  }
}

/**
 * What the text means per block, for the sliders.
 *
 * Returns `{error, readOnly, values, encoders, extras, notes}`: `error` is a message when the text is
 * malformed (the node would refuse it too); `readOnly` lists why the sliders must not rewrite this text
 * (empty when they may); `values` maps BASE and every model block to a number or an A/B token;
 * `encoders` maps each text encoder to `{value, explicit}` (not explicit: it follows BASE); `extras`
 * are the selector entries kept verbatim.
 */
export function readText(text, spec) {
  const result = { error: null, readOnly: [], values: {}, encoders: {}, extras: [], notes: [] };
  const source = String(text ?? "");
  if (source.length > MAX_TEXT_CHARS) {
    result.error = `The block_weights text is ${source.length} characters long; LoRA Lab reads at most ${MAX_TEXT_CHARS}.`;
    return result;
  }
  if (!spec.closed) {
    result.readOnly.push(`${spec.label} has no fixed block list; edit the text`);
    return result;
  }
  const ev = new Evaluator(spec);
  const body = inspireBody(source);
  if (body !== null) {
    try {
      checkInspire(body, spec, ev);
    } catch (err) {
      if (!(err instanceof BlockSyntaxError)) throw err;
      result.error = err.message;
      return result;
    }
    result.readOnly.push("read by the blocks each LoRA file patches, as Inspire Pack reads a vector ('inspire:'); "
      + "the node's report shows each block's weight");
    return result;
  }
  try {
    ev.text(source, false, 0);
  } catch (err) {
    if (!(err instanceof BlockSyntaxError)) throw err;
    result.error = err.message;
    return result;
  }
  const lastWhole = new Map();
  ev.rules.forEach((rule, index) => {
    if (rule.extra === undefined) for (const b of rule.blocks) lastWhole.set(b, index);
  });
  for (const name of ev.everything()) {
    const at = lastWhole.get(name);
    result.values[name] = at === undefined ? ev.defaultValue : ev.rules[at].value;
  }
  for (const enc of spec.encoders) {
    const at = lastWhole.get(enc);
    result.encoders[enc] = at === undefined
      ? { value: result.values.BASE, explicit: false }
      : { value: ev.rules[at].value, explicit: true };
  }
  ev.rules.forEach((rule, index) => {
    if (rule.extra === undefined) return;
    const overridden = rule.blocks.filter((b) => (lastWhole.get(b) ?? -1) > index);
    if (overridden.length) {
      result.readOnly.push(`'${rule.extra}' is overridden by a later entry on ${overridden.join(", ")}`);
    }
    result.extras.push({ text: rule.extra, blocks: rule.blocks });
  });
  if (ev.random.length) result.readOnly.push(`random values (R/U) in ${ev.random.join("; ")}`);
  for (const name of ev.inexactPresets) {
    result.readOnly.push(`the preset ${name} holds sub-block selectors, A/B or random values`);
  }
  result.notes = ev.notes;
  return result;
}

/** The text after a leading `inspire:` (blank and `#` lines may come before it), else null. */
export function inspireBody(text) {
  const lines = String(text).split(/\r\n|\r|\n/);
  for (let i = 0; i < lines.length; i++) {
    const content = lines[i].split("#", 1)[0];
    if (!content.trim()) continue;
    const m = INSPIRE_HEAD_RX.exec(content);
    if (!m) return null;
    return [lines[i].slice(m[0].length), ...lines.slice(i + 1)].join("\n");
  }
  return null;
}

/** Check an `inspire:` text as lora_ops/blocks.py does: a vector or a vector preset, then BLOCK=weight entries. */
function checkInspire(body, spec, ev) {
  if (body.trimStart().startsWith("%")) throw new BlockSyntaxError("Inspire Pack's '%' block-spec form is not read by LoRA Lab.");
  let items = splitItems(body);
  if (items.length && items[0].includes(":")) {
    const cut = items[0].indexOf(":");
    if (!PRESET_NAME_RX.test(items[0].slice(0, cut).trim())) {
      throw new BlockSyntaxError(`'${items[0]}' after 'inspire:' is neither a value nor NAME:value.`);
    }
    const first = items[0].slice(cut + 1).trim();
    items = [...(first ? [first] : []), ...items.slice(1)];
  }
  for (const item of items) {
    if (item.includes(":")) throw new BlockSyntaxError(`'${item}' in the inspire: text holds a ':' too many.`);
  }
  if (!items.length) throw new BlockSyntaxError("'inspire:' is followed by no vector.");
  const tokens = [];
  for (const item of items) {
    if (isValue(item)) {
      tokens.push(item);
      continue;
    }
    const parts = item.split(/\s+/).filter(Boolean);
    if (parts.length > 1 && parts.every(isValue)) {
      throw new BlockSyntaxError(`'${item}' gives one vector position several space-separated values.`);
    }
    break;
  }
  let rest = items.slice(tokens.length);
  if (!tokens.length) {
    const preset = spec.presets.get(items[0].toUpperCase());
    if (!preset) throw new BlockSyntaxError(`'${items[0]}' after 'inspire:' is neither a value nor a preset that is a vector.`);
    const inner = inspireBody(preset.syntax ?? "");
    const values = splitItems(inner === null ? preset.syntax ?? "" : inner);
    if (!values.length || !values.every(isValue)) throw new BlockSyntaxError(`The preset ${items[0]} is not a vector.`);
    tokens.push(...values);
    rest = items.slice(1);
  }
  for (const item of rest) {
    if (!item.includes("=")) throw new BlockSyntaxError(`'${item}' follows the inspire: vector, where only BLOCK=weight entries go.`);
  }
  if (tokens.length > MAX_ENTRIES) throw new BlockSyntaxError(`The inspire: vector has ${tokens.length} values; LoRA Lab reads at most ${MAX_ENTRIES}.`);
  tokens.forEach((t, i) => parseValue(t, `position ${i + 1} of the inspire: vector`));
  for (const item of rest) ev.entry(item, false);
}

function prefixOf(name) {
  const m = /^([A-Z]+)\d+$/.exec(name);
  return m ? m[1] : null;
}

/** Entries for the blocks whose value differs from `base(block)`: runs, ranges and globs. */
function blockEntries(values, spec, base) {
  const entries = [];
  const members = new Map();
  for (const b of spec.blocks) {
    const p = prefixOf(b);
    if (p) members.set(p, (members.get(p) ?? 0) + 1);
  }
  let run = [];
  const flush = () => {
    if (!run.length) return;
    const p = prefixOf(run[0]);
    const v = formatValue(values[run[0]]);
    if (run.length === 1) entries.push(`${run[0]}=${v}`);
    else if (p && run.length === members.get(p)) entries.push(`${p}*=${v}`);
    else entries.push(`${run[0]}-${run[run.length - 1]}=${v}`);
    run = [];
  };
  for (const b of spec.blocks) {
    const v = values[b];
    if (sameValue(v, base(b))) {
      flush();
      continue;
    }
    const last = run[run.length - 1];
    if (run.length && prefixOf(b) && prefixOf(b) === prefixOf(last) && sameValue(values[last], v)) {
      run.push(b);
      continue;
    }
    flush();
    run.push(b);
  }
  flush();
  return entries;
}

function distinctValues(values) {
  const out = [];
  for (const v of values) if (!out.some((u) => sameValue(u, v))) out.push(v);
  return out;
}

/**
 * The shortest text for these slider values: a plain form (`*=d` and the blocks that differ from d, for
 * each value d the blocks take) or
 * an exact preset followed by the blocks that differ from it; encoders set explicitly and the kept
 * selector entries follow. Parsing the result with `readText` gives the same values back.
 */
export function writeText(values, encoders, extras, spec) {
  const modelNames = ["BASE", ...spec.blocks];
  const tail = [];
  for (const enc of spec.encoders) {
    if (encoders?.[enc]?.explicit) tail.push(`${enc}=${formatValue(encoders[enc].value)}`);
  }
  for (const extra of extras ?? []) tail.push(extra.text);

  const candidates = [];
  for (const d of distinctValues([1, ...modelNames.map((n) => values[n])])) {
    const plain = [];
    if (!sameValue(d, 1)) plain.push(`*=${formatValue(d)}`);
    if (!sameValue(values.BASE, d)) plain.push(`BASE=${formatValue(values.BASE)}`);
    plain.push(...blockEntries(values, spec, () => d));
    candidates.push(plain);
  }
  for (const preset of spec.presets.values()) {
    if (!preset.exact) continue;
    const covered = Object.keys(preset.values);
    if (covered.some((n) => spec.encoders.includes(n))) continue;
    if (!modelNames.every((n) => covered.includes(n))) continue;
    // a uniform preset (ALL, NONE, ALL0.5) says no more than `*=v`
    if (modelNames.every((n) => sameValue(preset.values[n], preset.values.BASE))) continue;
    const entries = [preset.name];
    if (!sameValue(values.BASE, preset.values.BASE)) entries.push(`BASE=${formatValue(values.BASE)}`);
    entries.push(...blockEntries(values, spec, (b) => preset.values[b]));
    candidates.push(entries);
  }
  // fewest entries, then the shorter text; the plain forms come first, so they win full ties
  let best = candidates[0];
  for (const c of candidates.slice(1)) {
    if (c.length < best.length || (c.length === best.length && c.join(", ").length < best.join(", ").length)) best = c;
  }
  return [...best, ...tail].join(", ");
}

/** The text after one slider moved: `block` (a model block, BASE or an encoder) set to `value`. */
export function setBlockValue(text, spec, block, value) {
  const reading = readText(text, spec);
  if (reading.error) throw new BlockSyntaxError(reading.error);
  if (reading.readOnly.length) throw new BlockSyntaxError(reading.readOnly.join("; "));
  const values = { ...reading.values };
  const encoders = { ...reading.encoders };
  if (spec.encoders.includes(block)) {
    encoders[block] = { value, explicit: true };
  } else if (block in values) {
    values[block] = value;
    for (const enc of spec.encoders) {
      if (!encoders[enc].explicit) encoders[enc] = { value: block === "BASE" ? value : encoders[enc].value, explicit: false };
    }
  } else {
    throw new BlockSyntaxError(`'${block}' is no block of ${spec.label}.`);
  }
  return writeText(values, encoders, reading.extras, spec);
}

/** Slider step values: rounded to 1/1000 so that sliders never write 0.35000000000000003. */
export function roundWeight(value) {
  return Math.round(Number(value) * 1000) / 1000;
}
