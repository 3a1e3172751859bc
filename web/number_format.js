// Small numbers on Nodes 2.0: its number fields (frontend 1.32 - 1.35) round to whole numbers unless told how
// many decimals to show, so a learning rate of 0.0001 reads "0". LoRA Lab's FLOAT widgets get as many decimals as
// their step has (the classic renderer already shows them). Set when the node is created, before Nodes 2.0 takes
// the node's widgets.

import { app } from "../../scripts/app.js";

/** Decimals of a step: 0.01 -> 2, 1e-6 -> 6, 1 -> 0. */
function decimals(step) {
  const s = Number(step);
  if (!Number.isFinite(s) || s <= 0 || s >= 1) return 0;
  return Math.min(10, Math.ceil(-Math.log10(s) - 1e-9));
}

app.registerExtension({
  name: "LoraLab.NumberFormat",

  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!nodeData?.name?.startsWith("LoraLab")) return;
    const onNodeCreated = nodeType.prototype.onNodeCreated;
    nodeType.prototype.onNodeCreated = function () {
      const result = onNodeCreated?.apply(this, arguments);
      for (const w of this.widgets ?? []) {
        const places = decimals(w.options?.step2 ?? (w.options?.step ?? 0) / 10);
        if (w.type === "number" && places > 0 && w.options.maxFractionDigits === undefined) {
          w.options.maxFractionDigits = Math.max(places, w.options.precision ?? 0);
        }
      }
      return result;
    };
  },
});
