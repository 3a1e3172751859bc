// A node's text report (lora_ops/report.py and the other nodes' reports) as classified lines, for the
// report shown on the node after a run. Pure functions, no DOM.

const FAMILY_BY_LABEL = { "SD1.x": "sd1", "SD2.x": "sd2", SDXL: "sdxl", Flux: "flux", SD3: "sd3" };

/**
 * One entry per line: `{text, kind}` with kind
 * - `warning`: a line that starts with `WARNING` (shown in the warning colour),
 * - `title`: the first line of a LoRA's report (`LoRA: name`, or `[i/n] LoRA: name` in a stack),
 * - `heading`: `block weights:` and other lines ending in a colon,
 * - `table-head`, `table`, `table-total`: the block table after `block weights:`,
 * - `blank`, `plain`: everything else.
 */
export function reportLines(text) {
  const out = [];
  let inTable = false;
  let tableHeadSeen = false;
  for (const line of String(text ?? "").split(/\r\n|\r|\n/)) {
    const trimmed = line.trim();
    if (!trimmed) {
      inTable = false;
      out.push({ text: "", kind: "blank" });
      continue;
    }
    if (/^(?:\[\d+\/\d+\]\s*)?WARNING\b/i.test(trimmed)) {
      out.push({ text: line, kind: "warning" });
      continue;
    }
    if (inTable) {
      if (!tableHeadSeen) {
        tableHeadSeen = true;
        out.push({ text: line, kind: "table-head" });
        continue;
      }
      if (/^total\b/.test(trimmed)) {
        inTable = false;
        out.push({ text: line, kind: "table-total" });
        continue;
      }
      out.push({ text: line, kind: "table" });
      continue;
    }
    if (/^(?:\[\d+\/\d+\]\s*)?LoRA:\s/.test(trimmed)) {
      out.push({ text: line, kind: "title" });
      continue;
    }
    if (/^block weights:\s*$/i.test(trimmed)) {
      inTable = true;
      tableHeadSeen = false;
      out.push({ text: line, kind: "heading" });
      continue;
    }
    if (/:\s*$/.test(trimmed)) {
      out.push({ text: line, kind: "heading" });
      continue;
    }
    out.push({ text: line, kind: "plain" });
  }
  while (out.length && out[out.length - 1].kind === "blank") out.pop();
  return out;
}

/** Number of warning lines of a report. */
export function countWarnings(text) {
  return reportLines(text).filter((l) => l.kind === "warning").length;
}

/** The model family a report names (`model: SDXL`), as a family key, or null. */
export function familyFromReport(text) {
  const m = /^\s*model:\s*(SD1\.x|SD2\.x|SDXL|Flux|SD3)\b/m.exec(String(text ?? ""));
  return m ? FAMILY_BY_LABEL[m[1]] : null;
}

/** The report texts of an `executed` message (`ui.text` is a list of strings); [] when absent. */
export function reportTexts(message) {
  const text = message?.text;
  if (typeof text === "string") return [text];
  if (!Array.isArray(text)) return [];
  return text.filter((t) => typeof t === "string" && t.length > 0);
}

/**
 * How many lines `lines` (strings) take when wrapped at `columns` characters (an empty line still takes one):
 * the height the report needs in a node of a given width.
 */
export function wrappedLineCount(lines, columns) {
  const cols = Math.max(1, Math.floor(columns));
  return lines.reduce((sum, line) => sum + Math.max(1, Math.ceil(String(line ?? "").length / cols)), 0);
}
