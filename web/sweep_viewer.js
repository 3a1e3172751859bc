// Sweep viewer on LoraLabSweep: after a run the grid is shown on the node; hovering a cell outlines it and
// shows its weight and metrics below the grid, clicking pins a cell, and the break point is marked. The
// geometry and the text come from lib/sweep_view.js; the data is the node's ui.lora_lab_sweep payload.
//
// The viewer's widget is added when the node is created (hidden until a sweep arrives), so Nodes 2.0 shows it
// too (common/node_dom.js), and the last payload is kept in the node's properties: a reloaded page or a run that
// ComfyUI answers from its cache still shows the grid. ComfyUI's own preview of the same image is left out in
// both renderers.

import { api } from "../../scripts/api.js";
import { app } from "../../scripts/app.js";
import { addContentWidget, growNode, showWidget } from "./common/node_dom.js";
import {
  breakPointKind,
  breakPointText,
  cellAt,
  cellRect,
  cellSummary,
  findCell,
  payloadProblems,
  rectPercent,
  toImagePoint,
  viewQuery,
} from "./lib/sweep_view.js";
import { ensureStyles } from "./lib/style.js";

const NODE_TYPE = "LoraLabSweep";
const VIEWER_WIDGET = "lora_lab_sweep";
const PAYLOAD_PROPERTY = "lora_lab_sweep";
const MAX_SAVED_CHARS = 200000;
// ComfyUI's own preview of ui.images; the viewer shows the same grid, so that preview is left out.
const CORE_PREVIEW_WIDGET = "$$canvas-image-preview";
const HINT = "hover a cell for its weight and metrics; click to pin it";
const INFO_LINE = 15;
const MAX_WIDTH = 1024;
const WIDGET_MARGIN = 10; // around the DOM widget, inside the node

function findWidget(node, name) {
  return node.widgets?.find((w) => w.name === name) ?? null;
}

function placeMark(mark, layout, cell) {
  if (!cell) {
    mark.hidden = true;
    return;
  }
  const p = rectPercent(layout, cellRect(layout, cell.row, cell.col));
  Object.assign(mark.style, { left: `${p.left}%`, top: `${p.top}%`, width: `${p.width}%`, height: `${p.height}%` });
  mark.dataset.row = String(cell.row);
  mark.dataset.col = String(cell.col);
  mark.hidden = false;
}

function mark(kind) {
  const m = document.createElement("div");
  m.className = `ll-mark ll-${kind}`;
  m.dataset.mark = kind;
  m.hidden = true;
  return m;
}

class SweepView {
  constructor(node) {
    this.node = node;
    this.payload = null;
    this.pinned = null;
    this.element = document.createElement("div");
    this.element.className = "lora-lab-sweep";
    this.element.dataset.loraLabSweep = "";
    this.stage = document.createElement("div");
    this.stage.className = "ll-stage";
    this.image = document.createElement("img");
    this.image.alt = "sweep grid";
    this.image.draggable = false;
    this.breakMark = mark("break");
    this.hoverMark = mark("hover");
    this.pinMark = mark("pinned");
    this.stage.append(this.image, this.breakMark, this.pinMark, this.hoverMark);
    this.info = document.createElement("div");
    this.info.className = "ll-info";
    this.info.dataset.role = "cell-info";
    this.breakLine = document.createElement("div");
    this.breakLine.className = "ll-bp";
    this.breakLine.dataset.role = "break-point";
    this.element.append(this.stage, this.breakLine, this.info);
    this.stage.addEventListener("mousemove", (e) => this.hover(this.cellUnder(e)));
    this.stage.addEventListener("mouseleave", () => this.hover(null));
    this.stage.addEventListener("click", (e) => this.pin(this.cellUnder(e)));
  }

  cellUnder(event) {
    if (!this.payload) return null;
    const box = this.image.getBoundingClientRect();
    if (!box.width || !box.height) return null;
    const p = toImagePoint(this.payload.layout, box, event.clientX - box.left, event.clientY - box.top);
    const at = cellAt(this.payload.layout, p.x, p.y);
    return at ? findCell(this.payload, at.row, at.col) : null;
  }

  describe(cell) {
    this.info.textContent = cell ? cellSummary(this.payload, cell).join("\n") : HINT;
    this.info.dataset.row = cell ? String(cell.row) : "";
    this.info.dataset.col = cell ? String(cell.col) : "";
  }

  hover(cell) {
    placeMark(this.hoverMark, this.payload?.layout, cell);
    this.describe(cell ?? this.pinned);
  }

  pin(cell) {
    const same = cell && this.pinned && cell.row === this.pinned.row && cell.col === this.pinned.col;
    this.pinned = same ? null : cell;
    placeMark(this.pinMark, this.payload?.layout, this.pinned);
    this.describe(cell ?? this.pinned);
  }

  show(payload) {
    const problems = payloadProblems(payload);
    this.pinned = null;
    this.hoverMark.hidden = true;
    this.pinMark.hidden = true;
    if (problems.length) {
      this.payload = null;
      this.image.removeAttribute("src");
      this.breakMark.hidden = true;
      this.breakLine.textContent = "";
      this.breakLine.dataset.kind = "none";
      this.info.textContent = `cannot show this sweep: ${problems.join("; ")}`;
      return;
    }
    this.payload = payload;
    this.infoLines = Math.max(3, ...payload.cells.map((c) => cellSummary(payload, c).length));
    this.info.style.height = `${this.infoLines * INFO_LINE + 8}px`;
    this.image.src = api.apiURL(viewQuery(payload.grid));
    this.element.dataset.cells = String(payload.cells.length);
    const bp = payload.break_point;
    placeMark(this.breakMark, payload.layout, bp ? { row: bp.row, col: bp.col } : null);
    this.breakLine.textContent = breakPointText(payload);
    this.breakLine.dataset.kind = breakPointKind(payload);
    this.describe(null);
  }

  /** Height the widget needs at the node's width: the grid at its aspect ratio plus the text. */
  height(width) {
    const layout = this.payload?.layout;
    const grid = layout ? (Math.max(width - 20, 50) * layout.height) / layout.width : 0;
    // + the break-point line and gaps, the text, and the DOM widget's margin above and below
    return grid + 30 + (this.infoLines ?? 3) * INFO_LINE + 8 + 2 * WIDGET_MARGIN;
  }
}

function makeWidget(node) {
  ensureStyles();
  const view = new SweepView(node);
  const widget = addContentWidget(node, VIEWER_WIDGET, view.element, {
    minHeight: () => view.height(node.size[0]),
    margin: WIDGET_MARGIN,
    trailing: 2,
  });
  widget.view = view;
  return widget;
}

/** Drop ComfyUI's own preview of the grid (the viewer shows it): the classic canvas image and Nodes 2.0's. */
function dropCorePreview(node) {
  const outputs = app.nodeOutputs?.[String(node.id)];
  if (outputs?.images) delete outputs.images;
  if (node.imgs?.length) node.imgs = undefined;
  const index = node.widgets?.findIndex((w) => w.name === CORE_PREVIEW_WIDGET) ?? -1;
  if (index >= 0) {
    node.widgets[index].onRemove?.();
    node.widgets.splice(index, 1);
  }
}

function showSweep(node, payload, { save = true } = {}) {
  const widget = findWidget(node, VIEWER_WIDGET) ?? makeWidget(node);
  widget.view.show(payload);
  widget.element.dataset.nodeId = String(node.id);
  showWidget(widget, true);
  node.loraLabSweep = payload;
  if (save && JSON.stringify(payload).length <= MAX_SAVED_CHARS) {
    node.properties ??= {};
    node.properties[PAYLOAD_PROPERTY] = payload;
  }
  // wide enough to show the cells at their own size, up to MAX_WIDTH (classic renderer)
  const width = Math.max(node.size[0], Math.min(payload.layout?.width ?? 0, MAX_WIDTH) + 24, 360);
  node.setSize([width, node.size[1]]); // first the width: the grid's height follows from it
  growNode(node, 0);
  node.setDirtyCanvas?.(true, true);
}

app.registerExtension({
  name: "LoraLab.SweepViewer",

  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData?.name !== NODE_TYPE) return;

    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (message) {
      const result = onExecuted?.apply(this, arguments);
      const payload = message?.lora_lab_sweep?.[0];
      if (payload) {
        dropCorePreview(this);
        showSweep(this, payload);
      }
      return result;
    };

    const onConfigure = nodeType.prototype.onConfigure;
    nodeType.prototype.onConfigure = function () {
      const result = onConfigure?.apply(this, arguments);
      const saved = this.properties?.[PAYLOAD_PROPERTY];
      if (saved && typeof saved === "object" && !payloadProblems(saved).length) showSweep(this, saved, { save: false });
      return result;
    };

    const onDrawBackground = nodeType.prototype.onDrawBackground;
    nodeType.prototype.onDrawBackground = function () {
      const result = onDrawBackground?.apply(this, arguments);
      if (this.loraLabSweep && (this.imgs?.length || this.widgets?.some((w) => w.name === CORE_PREVIEW_WIDGET))) {
        dropCorePreview(this);
      }
      return result;
    };
  },

  // After every extension's onNodeCreated (the viewer goes below the editor's button); still inside the node's
  // constructor, so Nodes 2.0 sees it.
  nodeCreated(node) {
    if ((node.comfyClass ?? node.type) === NODE_TYPE && !findWidget(node, VIEWER_WIDGET)) makeWidget(node);
  },
});
