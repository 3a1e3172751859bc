// What LoRA Lab tells the page beyond a node's own output:
// - a LoRA file was saved (LoRA Lab Save LoRA, Bake, Train LoRA, or a cancelled training's checkpoint): every LoRA
//   list on the page (core loaders included) is refreshed, as the "R" key does, so the new file can be picked
//   without a reload;
// - `lora_lab.notice` messages (nodes/notices.py), e.g. a cancelled training naming the checkpoint it saved and
//   how to continue: shown as a toast and in the node's report.

import { api } from "../../scripts/api.js";
import { app } from "../../scripts/app.js";
import { forgetLoraInfo } from "./common/block_panel.js";

const SAVING_NODES = ["LoraLabSave", "LoraLabBake", "LoraLabTrain"];
let pending = null;

/** Refresh the page's model lists once, shortly after the last request (a run may save several files). */
function refreshLists() {
  clearTimeout(pending);
  pending = setTimeout(async () => {
    pending = null;
    forgetLoraInfo();
    await app.refreshComboInNodes?.();
    window.dispatchEvent(new CustomEvent("lora_lab:lists-refreshed"));
  }, 250);
}

function nodeById(id) {
  if (id === null || id === undefined) return null;
  const first = String(id).split(":")[0];
  return app.graph?.getNodeById?.(first) ?? app.graph?.getNodeById?.(Number(first)) ?? null;
}

app.registerExtension({
  name: "LoraLab.Notices",

  async setup() {
    api.addEventListener("executed", (event) => {
      const node = nodeById(event.detail?.display_node ?? event.detail?.node);
      if (node && SAVING_NODES.includes(node.type) && event.detail?.output?.text) refreshLists();
    });
    api.addEventListener("lora_lab.notice", (event) => {
      const { kind, text, node: id, saved } = event.detail ?? {};
      if (!text) return;
      app.extensionManager?.toast?.add?.({
        severity: kind === "cancelled" ? "warn" : "info",
        summary: kind === "cancelled" ? "LoRA Lab: training cancelled" : "LoRA Lab",
        detail: text,
        life: 20000,
      });
      const node = nodeById(id);
      node?.loraLabShowReport?.([text]);
      if (saved?.length) refreshLists();
    });
  },
});
