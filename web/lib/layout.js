// Where things go on the page: how far a node may grow before it covers the node below it, and where the
// block-weight panel may sit without covering the page's own controls (the Run button). Pure functions over
// rectangles, no DOM.
//
// Rectangles are `{x, y, w, h}` (graph units for nodes, CSS pixels for the panel).

/** Whether two rectangles overlap (touching edges do not). */
export function overlaps(a, b) {
  return a.x < b.x + b.w && b.x < a.x + a.w && a.y < b.y + b.h && b.y < a.y + a.h;
}

/**
 * The largest height `node` may take (its top and width fixed) without covering any of `others` that it does
 * not cover already, keeping `gap` units clear; `Infinity` when nothing is below it.
 */
export function roomBelow(node, others, gap = 10) {
  let limit = Infinity;
  for (const other of others) {
    if (other === node) continue;
    const sideBySide = other.x < node.x + node.w && node.x < other.x + other.w;
    if (!sideBySide) continue;
    if (overlaps(node, other)) continue; // already covered: growing does not make it worse
    if (other.y >= node.y + node.h) limit = Math.min(limit, other.y - node.y - gap);
  }
  return limit;
}

/**
 * The node height to set after content that wants `wanted` height arrived: at least `current` (never shrink
 * what the user sized), at least `needed` (what the node's widgets must have), otherwise as much of `wanted` as
 * `room` allows.
 */
export function grownHeight({ current, needed, wanted, room }) {
  const target = Math.max(needed, Math.min(wanted, room));
  return Math.max(current, target);
}

/**
 * Where to put a floating panel of `size` {w, h} in a `viewport` {w, h}: the top right corner, moved down below
 * (or, when that leaves too little room, left of) every rectangle in `avoid` it would cover. Returns
 * `{x, y, w, h}` with `h` possibly shortened to fit the viewport; `margin` is kept from every edge.
 */
export function placePanel(viewport, size, avoid = [], margin = 16) {
  const w = Math.min(size.w, viewport.w - 2 * margin);
  const minHeight = Math.min(size.h, 240);
  let x = viewport.w - margin - w;
  let y = margin;
  for (let i = 0; i < avoid.length + 1; i++) {
    const box = { x, y, w, h: Math.min(size.h, viewport.h - margin - y) };
    const hit = avoid.find((r) => overlaps(box, r));
    if (!hit) return box;
    const below = hit.y + hit.h + 8;
    if (viewport.h - margin - below >= minHeight) y = below;
    else x = Math.max(margin, hit.x - 8 - w);
  }
  return { x, y, w, h: Math.max(minHeight, Math.min(size.h, viewport.h - margin - y)) };
}
