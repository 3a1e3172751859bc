// Reports on the nodes: after a run, LoRA Lab nodes that return a text report (`ui.text`: the loader,
// apply-stack, inspector, merge, and the others that report) show it on the node, with the block table
// aligned and warning lines in a warning colour (lib/report_format.js). The report widget is not saved
// with the workflow and is not sent with the prompt.

import { app } from "../../scripts/app.js";
import { reportLines, reportTexts } from "./lib/report_format.js";
import { ensureStyles } from "./lib/style.js";

const REPORT_WIDGET = "lora_lab_report";
const LINE_HEIGHT = 14.3;
const MIN_HEIGHT = 60;
const MAX_HEIGHT = 320;
const WIDGET_MARGIN = 8; // around the DOM widget, inside the node

function findWidget(node, name) {
  return node.widgets?.find((w) => w.name === name) ?? null;
}

function renderInto(element, texts) {
  const lines = [];
  texts.forEach((text, i) => {
    if (i > 0) lines.push({ text: "", kind: "blank" });
    lines.push(...reportLines(text));
  });
  element.replaceChildren(
    ...lines.map((line) => {
      const div = document.createElement("div");
      div.className = `ll-line ll-${line.kind}`;
      div.textContent = line.text || " ";
      return div;
    }),
  );
  element.dataset.warnings = String(lines.filter((l) => l.kind === "warning").length);
  return lines.length;
}

function showReport(node, texts) {
  ensureStyles();
  let widget = findWidget(node, REPORT_WIDGET);
  if (!widget) {
    const element = document.createElement("div");
    element.className = "lora-lab-report";
    element.dataset.loraLabReport = "";
    widget = node.addDOMWidget(REPORT_WIDGET, "lora_lab_report", element, {
      serialize: false,
      hideOnZoom: false,
      margin: WIDGET_MARGIN,
      getValue: () => "",
      setValue: () => {},
      getMinHeight: () => Math.min(MAX_HEIGHT, Math.max(MIN_HEIGHT, (widget.lineCount ?? 4) * LINE_HEIGHT + 12)) + 2 * WIDGET_MARGIN,
      getMaxHeight: () => MAX_HEIGHT + 2 * WIDGET_MARGIN,
    });
    widget.serialize = false;
  }
  widget.lineCount = renderInto(widget.element, texts);
  widget.element.dataset.nodeId = String(node.id);
  node.loraLabReport = texts.join("\n\n");
  // taller if the report needs it; never wider (long lines scroll), so neighbours stay uncovered
  node.setSize([node.size[0], Math.max(node.size[1], node.computeSize([node.size[0], 0])[1])]);
  node.setDirtyCanvas?.(true, true);
}

app.registerExtension({
  name: "LoraLab.Reports",

  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!nodeData?.name?.startsWith("LoraLab")) return;
    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (message) {
      const result = onExecuted?.apply(this, arguments);
      const texts = reportTexts(message);
      if (texts.length) showReport(this, texts);
      return result;
    };
  },
});
