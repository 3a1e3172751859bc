// The sweep viewer's geometry and text: which cell of the grid image a point is in, and what to say
// about a cell. Pure functions, no DOM.
//
// Payload (LoraLabSweep's ui.lora_lab_sweep[0]): grid {filename, subfolder, type}; layout {width,
// height, left, top, cell_w, cell_h, gap, cols, rows}, where cell (r, c) occupies
// x = left + c * (cell_w + gap), y = top + r * (cell_h + gap) in the grid PNG's pixels; columns
// [{label, weight}]; rows [{label}]; cells [{row, col, weight, label, metrics, flags}]; break_point
// {weight, row, col, reason} or null; mode.

const LAYOUT_KEYS = ["width", "height", "left", "top", "cell_w", "cell_h", "gap", "cols", "rows"];

/** Problems that keep the viewer from showing this payload ([] when it is usable). */
export function payloadProblems(payload) {
  if (!payload || typeof payload !== "object") return ["no sweep data"];
  const problems = [];
  const layout = payload.layout;
  if (!layout || typeof layout !== "object") problems.push("no layout");
  else {
    for (const key of LAYOUT_KEYS) {
      if (!Number.isFinite(layout[key])) problems.push(`layout.${key} is not a number`);
    }
  }
  if (!payload.grid?.filename) problems.push("no grid image");
  if (!Array.isArray(payload.cells)) problems.push("no cells");
  return problems;
}

/** Pixel rectangle `{x, y, w, h}` of cell (row, col) in the grid image. */
export function cellRect(layout, row, col) {
  return {
    x: layout.left + col * (layout.cell_w + layout.gap),
    y: layout.top + row * (layout.cell_h + layout.gap),
    w: layout.cell_w,
    h: layout.cell_h,
  };
}

/** `{row, col}` of the cell under image pixel (x, y), or null (margins, gaps, labels, outside). */
export function cellAt(layout, x, y) {
  const stepX = layout.cell_w + layout.gap;
  const stepY = layout.cell_h + layout.gap;
  const dx = x - layout.left;
  const dy = y - layout.top;
  if (dx < 0 || dy < 0 || stepX <= 0 || stepY <= 0) return null;
  const col = Math.floor(dx / stepX);
  const row = Math.floor(dy / stepY);
  if (col >= layout.cols || row >= layout.rows) return null;
  if (dx - col * stepX >= layout.cell_w || dy - row * stepY >= layout.cell_h) return null;
  return { row, col };
}

/**
 * Image pixel coordinates of a point in an element that shows the whole image scaled to
 * `box` = {width, height} (the image's own aspect ratio: no letterboxing).
 */
export function toImagePoint(layout, box, offsetX, offsetY) {
  return {
    x: (offsetX * layout.width) / box.width,
    y: (offsetY * layout.height) / box.height,
  };
}

/** A cell's rectangle as CSS percentages of the image: `{left, top, width, height}` (numbers, %). */
export function rectPercent(layout, rect) {
  return {
    left: (100 * rect.x) / layout.width,
    top: (100 * rect.y) / layout.height,
    width: (100 * rect.w) / layout.width,
    height: (100 * rect.h) / layout.height,
  };
}

export function findCell(payload, row, col) {
  return (payload.cells ?? []).find((c) => c.row === row && c.col === col) ?? null;
}

export function formatNumber(value) {
  if (value === null || value === undefined) return "n/a";
  if (typeof value !== "number") return String(value);
  if (Number.isNaN(value)) return "NaN";
  if (!Number.isFinite(value)) return value > 0 ? "inf" : "-inf";
  if (value === 0) return "0";
  const abs = Math.abs(value);
  if (abs >= 1e5 || abs < 1e-3) return value.toExponential(2);
  return String(Number(value.toPrecision(4)));
}

export function isBreakCell(payload, cell) {
  const bp = payload.break_point;
  return Boolean(bp && cell && bp.row === cell.row && bp.col === cell.col);
}

/** Readable names of the sweep's metrics (lora_ops/sweep.py), in the order the info box lists them. */
export const METRIC_LABELS = Object.freeze({
  change_ref: "change vs no LoRA (1 - SSIM)",
  change_prev: "change vs previous weight (1 - SSIM)",
  psnr_ref: "PSNR vs no LoRA (dB)",
});

/** A metric's readable name (unknown keys: underscores as spaces). */
export function metricLabel(key) {
  return METRIC_LABELS[key] ?? String(key).replaceAll("_", " ");
}

function metricOrder(a, b) {
  const known = Object.keys(METRIC_LABELS);
  const ia = known.includes(a) ? known.indexOf(a) : known.length;
  const ib = known.includes(b) ? known.indexOf(b) : known.length;
  return ia - ib || a.localeCompare(b);
}

/** Lines describing a cell: label, weight, each metric, flags, and whether it is the break point. */
export function cellSummary(payload, cell) {
  if (!cell) return [];
  const lines = [];
  const rowLabel = payload.rows?.[cell.row]?.label;
  const title = [cell.label, rowLabel && rowLabel !== cell.label ? `(${rowLabel})` : ""].filter(Boolean).join(" ");
  if (title) lines.push(title);
  lines.push(cell.weight === null || cell.weight === undefined ? "weight: none (no LoRA)" : `weight: ${formatNumber(cell.weight)}`);
  const metrics = cell.metrics ?? {};
  for (const name of Object.keys(metrics).sort(metricOrder)) lines.push(`${metricLabel(name)}: ${formatNumber(metrics[name])}`);
  if (cell.flags?.length) lines.push(`flags: ${cell.flags.join(", ")}`);
  if (isBreakCell(payload, cell)) lines.push(`break point: ${payload.break_point.reason}`);
  return lines;
}

/** One line about the break point of the sweep, or that there is none. */
export function breakPointText(payload) {
  const bp = payload.break_point;
  if (!bp) return "no break point in this sweep";
  return `break point at weight ${formatNumber(bp.weight)}: ${bp.reason}`;
}

/** How the break-point line is shown: `found` (the warning colour) or `none` (plain). */
export function breakPointKind(payload) {
  return payload?.break_point ? "found" : "none";
}

/** Query string of the /view URL that serves the grid image. */
export function viewQuery(grid) {
  const params = new URLSearchParams({
    filename: grid.filename,
    subfolder: grid.subfolder ?? "",
    type: grid.type ?? "output",
  });
  return `/view?${params.toString()}`;
}
