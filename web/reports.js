// Reports on the nodes: after a run, LoRA Lab nodes that return a text report (`ui.text`: the loaders, apply-stack,
// inspector, merge, save, bake, train) show it on the node, the block table aligned and warning lines in a warning
// colour (lib/report_format.js). Long lines wrap inside the node; the report scrolls past a few lines, and in the
// classic renderer the node grows only into free space (lib/layout.js), never over the node below.
//
// The last report is kept in the node's properties, so it is shown again after a reload, and when the next run
// takes the node's result from ComfyUI's cache (which sends no report for nodes that are not outputs). It is
// never sent with the prompt.

import { app } from "../../scripts/app.js";
import { addContentWidget, el, growNode, showWidget } from "./common/node_dom.js";
import { reportLines, reportTexts, wrappedLineCount } from "./lib/report_format.js";
import { ensureStyles } from "./lib/style.js";

const REPORT_WIDGET = "lora_lab_report";
const REPORT_PROPERTY = "lora_lab_report";
const LINE_HEIGHT = 14.3;
const MIN_LINES = 4;
const MAX_LINES = 14;
const CHAR_WIDTH = 6.7; // 11 px monospace
const PADDING = 10;
const MAX_SAVED_CHARS = 20000;
const FULL_MIN = MIN_LINES * LINE_HEIGHT + PADDING;
const SMALLEST = 2 * LINE_HEIGHT + PADDING; // when the node has no room to grow: two lines, scrolling

function findWidget(node, name) {
  return node.widgets?.find((w) => w.name === name) ?? null;
}

/** Whether nodes of this definition report: LoRA Lab nodes with a `report`/`path` output or an output node. */
function reports(nodeData) {
  if (!nodeData?.name?.startsWith("LoraLab") || nodeData.name === "LoraLabSweep" || nodeData.name === "LoraLabStack") {
    return false;
  }
  const names = nodeData.output_name ?? [];
  return Boolean(nodeData.output_node) || names.includes("report") || names.includes("path");
}

function render(element, texts, note) {
  const lines = [];
  if (note) lines.push({ text: note, kind: "note" });
  texts.forEach((text, i) => {
    if (i > 0) lines.push({ text: "", kind: "blank" });
    lines.push(...reportLines(text));
  });
  element.replaceChildren(...lines.map((line) => el("div", { class: `ll-line ll-${line.kind}`, text: line.text || " " })));
  element.dataset.warnings = String(lines.filter((l) => l.kind === "warning").length);
  return lines;
}

function contentHeight(widget, node) {
  const width = Math.max(80, node.size[0] - 2 * 8 - PADDING);
  const lines = wrappedLineCount((widget.lines ?? []).map((l) => l.text), Math.floor(width / CHAR_WIDTH));
  return Math.min(MAX_LINES, Math.max(1, lines)) * LINE_HEIGHT + PADDING;
}

function makeWidget(node) {
  const element = el("div", { class: "lora-lab-report", "data-lora-lab-report": "" });
  const widget = addContentWidget(node, REPORT_WIDGET, element, {
    minHeight: () => Math.min(contentHeight(widget, node), widget.minPx ?? FULL_MIN) + 16,
    maxHeight: () => contentHeight(widget, node) + 16,
    margin: 8,
    trailing: 2,
  });
  // asked by common/node_dom.js when the node has no room to grow: a smaller box (down to two lines) that scrolls
  widget.loraLabShrink = (excess) => {
    const before = widget.minPx ?? FULL_MIN;
    widget.minPx = Math.max(SMALLEST, before - excess);
    return before - widget.minPx;
  };
  return widget;
}

/** Show `texts` (a node's report strings) on `node`; `note` adds a first line (e.g. where the report is from). */
export function showReport(node, texts, { note = null, save = true, fixedSize = false } = {}) {
  ensureStyles();
  const widget = findWidget(node, REPORT_WIDGET) ?? makeWidget(node);
  widget.lines = render(widget.element, texts, note);
  widget.element.dataset.nodeId = String(node.id);
  widget.element.dataset.restored = String(Boolean(note));
  showWidget(widget, true);
  node.loraLabReport = texts.join("\n\n");
  if (save) {
    node.properties ??= {};
    node.properties[REPORT_PROPERTY] = JSON.stringify(texts).length <= MAX_SAVED_CHARS ? texts : [
      node.loraLabReport.slice(0, MAX_SAVED_CHARS) + "\n… (cut: the full report is the node's report output)"];
  }
  // The node grows into free space only; without room the report gets smaller and scrolls (classic renderer).
  // While a workflow loads (`fixedSize`) the other nodes are not in place yet: the saved size is kept.
  widget.minPx = FULL_MIN;
  growNode(node, Math.max(0, contentHeight(widget, node) - FULL_MIN), { fixedSize });
}

function restore(node) {
  const saved = node.properties?.[REPORT_PROPERTY];
  const texts = Array.isArray(saved) ? saved.filter((t) => typeof t === "string") : [];
  if (texts.length) showReport(node, texts, { note: "(report of the last run)", save: false, fixedSize: true });
}

app.registerExtension({
  name: "LoraLab.Reports",

  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!reports(nodeData)) return;

    nodeType.prototype.loraLabReports = true;
    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (message) {
      const result = onExecuted?.apply(this, arguments);
      const texts = reportTexts(message);
      if (texts.length) showReport(this, texts);
      return result;
    };

    const onConfigure = nodeType.prototype.onConfigure;
    nodeType.prototype.onConfigure = function () {
      const result = onConfigure?.apply(this, arguments);
      restore(this);
      return result;
    };

    nodeType.prototype.loraLabShowReport = function (texts, options) {
      showReport(this, texts, options);
    };
  },

  // After every extension's onNodeCreated, so the report is the last widget (below buttons and rows); still
  // inside the node's constructor, so Nodes 2.0 sees it.
  nodeCreated(node) {
    if (node.loraLabReports && !findWidget(node, REPORT_WIDGET)) makeWidget(node);
  },
});
