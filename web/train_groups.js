// LoRA Lab Train LoRA shows its essential settings; the others (declared `advanced` by the node: schedule,
// optimizer, augmentation, precision, previews' seed and steps, checkpoints) sit behind a "show advanced
// settings" switch on the node. The classic renderer hides them with its own advanced flag (also "Show Advanced"
// in the node's menu); Nodes 2.0 hides them through the widgets' `hidden` option and redraws the node.

import { app } from "../../scripts/app.js";
import { keepTrailingLast, refreshVueNode } from "./common/node_dom.js";

const NODE_TYPE = "LoraLabTrain";
export const TOGGLE_WIDGET = "show advanced settings";

function advancedWidgets(node) {
  return (node.widgets ?? []).filter((w) => w.advanced || w.options?.advanced);
}

// Frontend 1.32's classic layout still gives hidden widgets their row; a height of -4 (+4 of spacing) gives none.
const NO_ROOM = () => [0, -4];

function apply(node, shown, { redraw = true } = {}) {
  node.showAdvanced = shown;
  for (const w of advancedWidgets(node)) {
    w.advanced = true;
    w.options.hidden = !shown;
    if (!shown && w.computeSize !== NO_ROOM) {
      w.loraLabComputeSize = w.computeSize;
      w.computeSize = NO_ROOM;
    } else if (shown && w.computeSize === NO_ROOM) {
      w.computeSize = w.loraLabComputeSize;
      if (!w.computeSize) delete w.computeSize;
    }
  }
  const toggle = node.widgets?.find((w) => w.name === TOGGLE_WIDGET);
  if (toggle) toggle.value = shown;
  if (!redraw) return;
  if (!refreshVueNode(node)) node.setSize([node.size[0], node.computeSize([node.size[0], 0])[1]]);
  node.setDirtyCanvas?.(true, true);
}

app.registerExtension({
  name: "LoraLab.TrainGroups",

  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData?.name !== NODE_TYPE) return;

    const onNodeCreated = nodeType.prototype.onNodeCreated;
    nodeType.prototype.onNodeCreated = function () {
      const result = onNodeCreated?.apply(this, arguments);
      const node = this;
      const count = advancedWidgets(node).length;
      const toggle = node.addWidget("toggle", TOGGLE_WIDGET, false, (value) => apply(node, Boolean(value)),
                                    { serialize: false, on: `shown (${count})`, off: `hidden (${count})` });
      // Last among the widgets: saved workflows keep values by widget position, holes included.
      toggle.serialize = false;
      keepTrailingLast(node);
      apply(node, false, { redraw: false });
      node.setSize([node.size[0], node.computeSize([node.size[0], 0])[1]]);
      return result;
    };

    const onConfigure = nodeType.prototype.onConfigure;
    nodeType.prototype.onConfigure = function (info) {
      const result = onConfigure?.apply(this, arguments);
      apply(this, Boolean(info?.showAdvanced ?? this.showAdvanced));
      return result;
    };
  },
});
