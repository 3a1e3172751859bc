// Block-weight editor: a button on every LoRA Lab node with a `block_weights` field opens the block panel
// (common/block_panel.js) on that field: one slider per block of the model's family, presets, the text kept in
// sync both ways, and the blocks the node's LoRA touches. Workflows saved without this extension work unchanged.
//
// The button's name is its visible text: Nodes 2.0 (frontend 1.32) shows a button's name, not its label.

import { app } from "../../scripts/app.js";
import { panel, widgetTarget } from "./common/block_panel.js";
import { keepTrailingLast } from "./common/node_dom.js";

const TEXT_WIDGET = "block_weights";
export const BUTTON_WIDGET = "edit block weights";

function findWidget(node, name) {
  return node.widgets?.find((w) => w.name === name) ?? null;
}

function hasBlockWeights(nodeData) {
  const input = nodeData?.input ?? {};
  return Boolean(input.required?.[TEXT_WIDGET] ?? input.optional?.[TEXT_WIDGET]);
}

function chain(widget, after) {
  if (!widget) return;
  const callback = widget.callback;
  widget.callback = function () {
    const r = callback?.apply(this, arguments);
    after();
    return r;
  };
}

app.registerExtension({
  name: "LoraLab.BlockEditor",

  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!nodeData?.name?.startsWith("LoraLab") || !hasBlockWeights(nodeData)) return;

    const onNodeCreated = nodeType.prototype.onNodeCreated;
    nodeType.prototype.onNodeCreated = function () {
      const result = onNodeCreated?.apply(this, arguments);
      const node = this;
      chain(findWidget(node, TEXT_WIDGET), () => panel.isOpenOn(node, TEXT_WIDGET) && panel.refresh());
      chain(findWidget(node, "lora_name"), () => panel.isOpenOn(node, TEXT_WIDGET) && panel.load());
      const button = node.addWidget("button", BUTTON_WIDGET, null, () => panel.open(widgetTarget(node, TEXT_WIDGET)),
                                    { serialize: false });
      button.label = BUTTON_WIDGET;
      button.serialize = false;
      keepTrailingLast(node);
      return result;
    };

    const onRemoved = nodeType.prototype.onRemoved;
    nodeType.prototype.onRemoved = function () {
      if (panel.isOpenOn(this)) panel.close();
      return onRemoved?.apply(this, arguments);
    };

    const onConfigure = nodeType.prototype.onConfigure;
    nodeType.prototype.onConfigure = function () {
      const result = onConfigure?.apply(this, arguments);
      if (panel.isOpenOn(this)) panel.load();
      return result;
    };
  },
});
