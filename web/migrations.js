// Old saved workflows, loaded as they were meant: LoRA Lab nodes whose `seed` no longer gets a "control after
// generate" widget (Merge Stack, Train LoRA) drop the control value saved after the seed, so every later value
// stays in its own widget (lib/widget_values.js). Runs before the page assigns the saved values.

import { app } from "../../scripts/app.js";
import { dropSeedControls, seedsWithoutControl } from "./lib/widget_values.js";

app.registerExtension({
  name: "LoraLab.Migrations",

  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!nodeData?.name?.startsWith("LoraLab")) return;
    const seeds = seedsWithoutControl(nodeData);
    if (!seeds.length) return;
    const configure = nodeType.prototype.configure;
    nodeType.prototype.configure = function (info) {
      if (Array.isArray(info?.widgets_values)) {
        const names = (this.widgets ?? []).filter((w) => w.serialize !== false).map((w) => w.name);
        info.widgets_values = dropSeedControls(names, seeds, info.widgets_values);
      }
      return configure.apply(this, arguments);
    };
  },
});
