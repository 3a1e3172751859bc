// Trigger words on LoRA Lab Loader: under the widgets, the words the chosen LoRA was trained on (from the files
// other tools keep next to it, or the file's own metadata: GET /lora_lab/lora_info). Clicking one adds it to the
// prompt the loader's CLIP output feeds (common/trigger_chips.js). Nothing is shown for a LoRA without any.

import { app } from "../../scripts/app.js";
import { loraInfo } from "./common/block_panel.js";
import { addContentWidget, el, growNode, showWidget } from "./common/node_dom.js";
import { showTriggers } from "./common/trigger_chips.js";
import { ensureStyles } from "./lib/style.js";

const NODES = ["LoraLabLoader"];
const TRIGGERS_WIDGET = "lora_lab_triggers";

function findWidget(node, name) {
  return node.widgets?.find((w) => w.name === name) ?? null;
}

async function update(node, widget) {
  const name = findWidget(node, "lora_name")?.value;
  const info = typeof name === "string" && name ? await loraInfo(name) : null;
  if (findWidget(node, "lora_name")?.value !== name) return; // changed while asking
  showTriggers(widget.element, node, info);
  const shown = !widget.element.hidden;
  showWidget(widget, shown);
  widget.element.dataset.lora = name ?? "";
  widget.element.dataset.nodeId = String(node.id);
  widget.element.dataset.state = "ready";
  if (shown) growNode(node, 0);
}

app.registerExtension({
  name: "LoraLab.TriggerWords",

  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!NODES.includes(nodeData?.name)) return;

    const onNodeCreated = nodeType.prototype.onNodeCreated;
    nodeType.prototype.onNodeCreated = function () {
      const result = onNodeCreated?.apply(this, arguments);
      ensureStyles();
      const node = this;
      const element = el("div", { class: "lora-lab-triggers", "data-lora-lab-triggers": "" });
      const widget = addContentWidget(node, TRIGGERS_WIDGET, element, {
        minHeight: () => 24, maxHeight: () => 30, margin: 6, trailing: 1 });
      const lora = findWidget(node, "lora_name");
      if (lora) {
        const callback = lora.callback;
        lora.callback = function () {
          const r = callback?.apply(this, arguments);
          update(node, widget);
          return r;
        };
      }
      // after a workflow's values are in place (onConfigure) or right away for a new node
      queueMicrotask(() => update(node, widget));
      return result;
    };

    const onConfigure = nodeType.prototype.onConfigure;
    nodeType.prototype.onConfigure = function () {
      const result = onConfigure?.apply(this, arguments);
      const widget = findWidget(this, TRIGGERS_WIDGET);
      if (widget) update(this, widget);
      return result;
    };
  },
});
