// Trigger words of a LoRA as buttons: clicking one adds the word to the prompt the node's CLIP output feeds
// (the positive prompt first: lib/graph_trace.js), unless the prompt already has it (lib/lora_rows.js).
//
// Not an extension: the extensions import it (ComfyUI also loads it, which does nothing).

import { app } from "../../../scripts/app.js";
import { findPromptTargets } from "../lib/graph_trace.js";
import { insertWord } from "../lib/lora_rows.js";
import { el } from "./node_dom.js";

/** Add `word` to the first prompt fed by `node`; the prompt node, or null when none is connected. */
export function insertIntoPrompt(node, word) {
  const target = findPromptTargets(node)[0];
  if (!target) {
    app.extensionManager?.toast?.add?.({
      severity: "warn", summary: "No prompt to add the trigger word to",
      detail: `Connect ${node.title ?? node.type}'s CLIP output to a prompt (CLIP Text Encode), then click "${word}" again.`,
      life: 6000,
    });
    return null;
  }
  const widget = target.node.widgets.find((w) => w.name === target.widget);
  const old = widget.value;
  const text = insertWord(old, word);
  if (text !== old) {
    widget.value = text;
    widget.callback?.(text, app.canvas, target.node);
    target.node.onWidgetChanged?.(widget.name, text, old, widget);
    target.node.setDirtyCanvas?.(true, true);
  }
  return target.node;
}

/** Fill `container` with the trigger words of `info` (GET /lora_lab/lora_info); hides it when there are none. */
export function showTriggers(container, node, info) {
  const triggers = info?.triggers ?? [];
  container.hidden = triggers.length === 0;
  if (!triggers.length) {
    container.replaceChildren();
    return;
  }
  const buttons = triggers.map((t) => {
    const b = el("button", { text: t.text, title: `from ${t.source}: click to add it to the prompt`, "data-trigger": t.text });
    b.addEventListener("click", (e) => {
      e.stopPropagation();
      if (insertIntoPrompt(node, t.text)) b.dataset.inserted = "";
    });
    return b;
  });
  container.replaceChildren(el("span", { text: "triggers:" }), ...buttons);
}
