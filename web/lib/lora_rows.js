// The rows of LoRA Lab Multi Loader: the node's `loras` text input holds them as JSON (nodes/multi.py reads the
// same shape), the page shows them as rows. Every edit returns a new list; nothing here touches the DOM.
//
// Row: {on: boolean, lora: string, strength: number, strength_clip: number, block_weights: string}.

const DEFAULT_ROW = Object.freeze({ on: true, lora: "", strength: 1, strength_clip: 1, block_weights: "" });

function finite(value, fallback) {
  const n = typeof value === "string" && value.trim() !== "" ? Number(value) : value;
  return typeof n === "number" && Number.isFinite(n) ? n : fallback;
}

/** One row with every field present and of its type (missing clip strength follows the model strength). */
export function normalizeRow(row) {
  const r = row && typeof row === "object" ? row : {};
  const strength = finite(r.strength, DEFAULT_ROW.strength);
  return {
    on: typeof r.on === "boolean" ? r.on : true,
    lora: typeof r.lora === "string" ? r.lora : "",
    strength,
    strength_clip: finite(r.strength_clip, strength),
    block_weights: typeof r.block_weights === "string" ? r.block_weights : "",
  };
}

/** `{rows, error}` from the saved text; unreadable text gives no rows and the reason (the text is kept). */
export function parseRows(text) {
  const source = String(text ?? "").trim();
  if (!source) return { rows: [], error: null };
  let data;
  try {
    data = JSON.parse(source);
  } catch (err) {
    return { rows: [], error: `the rows are not readable JSON (${err.message})` };
  }
  if (data && !Array.isArray(data) && Array.isArray(data.rows)) data = data.rows;
  if (!Array.isArray(data)) return { rows: [], error: "the rows are not a list" };
  return { rows: data.map(normalizeRow), error: null };
}

/** The text saved in the `loras` input (one row per line, so the raw text stays readable). */
export function serializeRows(rows) {
  if (!rows.length) return "[]";
  const lines = rows.map((r) => {
    const n = normalizeRow(r);
    return JSON.stringify({ on: n.on, lora: n.lora, strength: n.strength, strength_clip: n.strength_clip,
      block_weights: n.block_weights });
  });
  return `[\n${lines.join(",\n")}\n]`;
}

export function addRow(rows, lora = "") {
  return [...rows, normalizeRow({ ...DEFAULT_ROW, lora })];
}

export function removeRow(rows, index) {
  return rows.filter((_, i) => i !== index);
}

/** Row `index` moved by `delta` places (clamped to the list). */
export function moveRow(rows, index, delta) {
  const to = Math.max(0, Math.min(rows.length - 1, index + delta));
  if (index < 0 || index >= rows.length || to === index) return rows;
  const out = [...rows];
  const [row] = out.splice(index, 1);
  out.splice(to, 0, row);
  return out;
}

export function updateRow(rows, index, patch) {
  return rows.map((r, i) => (i === index ? normalizeRow({ ...r, ...patch }) : r));
}

/** How many rows will be applied (switched on and naming a LoRA). */
export function activeCount(rows) {
  return rows.filter((r) => r.on && r.lora).length;
}

/**
 * `prompt` with `word` added at the end (after ", "), unless the prompt already holds it as one of its
 * comma-separated parts (compared without case and outer spaces).
 */
export function insertWord(prompt, word) {
  const text = String(prompt ?? "");
  const w = String(word ?? "").trim();
  if (!w) return text;
  const parts = text.split(",").map((p) => p.trim().toLowerCase());
  if (parts.includes(w.toLowerCase())) return text;
  const trimmed = text.replace(/[\s,]+$/, "");
  return trimmed ? `${trimmed}, ${w}` : w;
}
