// DOM on LoRA Lab's nodes, the same way in both of the page's renderers: the classic canvas (LiteGraph draws the
// node, ComfyUI lays DOM widgets over it) and Nodes 2.0 (each node is a Vue component that mounts a DOM widget's
// element inside itself).
//
// Nodes 2.0 (frontend 1.32 to 1.35 at least) takes a node's widget list when the node appears and, once any
// widget value changed, keeps that copy: a widget added later (after a run) is never shown. So every DOM widget
// here is added when the node is created, empty and hidden, and filled and shown later. The few changes that do
// need a new widget list (showing hidden settings) ask for one with `refreshVueNode`.
//
// Not an extension: the extensions import it (ComfyUI also loads it, which does nothing).

import { app } from "../../../scripts/app.js";
import { grownHeight, roomBelow } from "../lib/layout.js";

const VUE_SETTING = "Comfy.VueNodes.Enabled";

/** Whether the page draws nodes with Nodes 2.0 (the Vue renderer). */
export function vueNodesOn() {
  try {
    const settings = app.extensionManager?.setting;
    if (settings?.get) return Boolean(settings.get(VUE_SETTING));
    return Boolean(app.ui?.settings?.getSettingValue?.(VUE_SETTING));
  } catch {
    return false;
  }
}

/**
 * A DOM widget for `element`, added now and hidden until `showWidget`. It is not saved with the workflow nor sent
 * with the prompt. `minHeight()`/`maxHeight()` give the classic renderer's layout its bounds while shown.
 */
export function addContentWidget(node, name, element, { minHeight = () => 0, maxHeight = null, margin = 6,
  trailing = false } = {}) {
  element.hidden = true;
  const options = {
    serialize: false,
    hideOnZoom: false,
    margin,
    getValue: () => "",
    setValue: () => {},
    getMinHeight: () => (widget.hidden ? 0 : minHeight()),
  };
  if (maxHeight) options.getMaxHeight = () => (widget.hidden ? 0 : maxHeight());
  const widget = node.addDOMWidget(name, name, element, options);
  widget.serialize = false;
  widget.hidden = true;
  widget.loraLabTrailing = Number(trailing) || 0;
  keepTrailingLast(node);
  return widget;
}

/**
 * Move the widgets marked trailing after every other widget, by their rank (`trailing`: 1 for trigger words,
 * 2 for a report or the sweep viewer, so results come last). Only widgets that are not saved move: saved
 * workflows keep values by widget position.
 */
export function keepTrailingLast(node) {
  const widgets = node.widgets ?? [];
  const trailing = widgets.filter((w) => w.loraLabTrailing).sort((a, b) => a.loraLabTrailing - b.loraLabTrailing);
  if (!trailing.length) return;
  const order = [...widgets.filter((w) => !w.loraLabTrailing), ...trailing];
  if (order.every((w, i) => w === widgets[i])) return;
  widgets.splice(0, widgets.length, ...order);
}

/** Show or hide a widget made by `addContentWidget` (both renderers). */
export function showWidget(widget, shown) {
  widget.hidden = !shown;
  widget.element.hidden = !shown;
}

function box(node) {
  // from pos and size (the node's boundingRect is only updated when the canvas draws)
  const title = globalThis.LiteGraph?.NODE_TITLE_HEIGHT ?? 30;
  if (node.flags?.collapsed) return { x: node.pos[0], y: node.pos[1] - title, w: node._collapsed_width ?? 100, h: title };
  return { x: node.pos[0], y: node.pos[1] - title, w: node.size[0], h: node.size[1] + title };
}

/**
 * Classic renderer: make `node` tall enough for its widgets, and for `extra` more pixels of content as far as
 * that does not cover a node below it that it does not cover already. Never shrinks the node. (Nodes 2.0 sizes
 * nodes to their content itself; the content's own CSS bounds it.)
 */
/** Classic renderer: the largest height `node` may take without covering a node below it (Infinity: no limit). */
export function roomFor(node) {
  if (vueNodesOn() || !node.graph) return Infinity;
  const me = box(node);
  const title = me.h - node.size[1];
  const others = (node.graph._nodes ?? node.graph.nodes ?? []).filter((n) => n !== node).map(box);
  return roomBelow(me, others) - title;
}

export function growNode(node, extra = 0, { fixedSize = false } = {}) {
  if (vueNodesOn() || !node.graph) return;
  // while a workflow loads, the nodes below may not be in place yet: keep the saved size
  fixedSize ||= Boolean(app.configuringGraph);
  // Never over the node below: what does not fit is taken from widgets that can shrink (a report scrolls).
  const limit = fixedSize ? node.size[1] : Math.max(roomFor(node), node.size[1]);
  let needed = node.computeSize([node.size[0], 0])[1];
  for (const w of node.widgets ?? []) {
    if (needed <= limit) break;
    if (typeof w.loraLabShrink === "function" && !w.hidden) {
      w.loraLabShrink(needed - limit);
      needed = node.computeSize([node.size[0], 0])[1];
    }
  }
  const room = fixedSize ? node.size[1] : roomFor(node);
  const height = grownHeight({ current: node.size[1], needed, wanted: needed + extra, room });
  if (height !== node.size[1]) node.setSize([node.size[0], height]);
  node.setDirtyCanvas?.(true, true);
}

/**
 * Nodes 2.0: rebuild the node's widget list from `node.widgets` (after widgets were hidden or shown). Does
 * nothing in the classic renderer. Uses the page's own path for a node that joins the graph.
 */
export function refreshVueNode(node) {
  const graph = node.graph;
  if (!vueNodesOn() || typeof graph?.onNodeAdded !== "function") return false;
  const pos = [node.pos[0], node.pos[1]];
  graph.onNodeAdded(node);
  node.pos[0] = pos[0];
  node.pos[1] = pos[1];
  node.setDirtyCanvas?.(true, true);
  return true;
}

/** Keys typed into our DOM are not canvas shortcuts (both renderers listen on the document). */
export function keepKeys(element) {
  for (const type of ["keydown", "keyup", "keypress"]) element.addEventListener(type, (e) => e.stopPropagation());
}

export function el(tag, attrs = {}, children = []) {
  const e = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "text") e.textContent = value;
    else if (key === "class") e.className = value;
    else e.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children) if (child) e.append(child);
  return e;
}
