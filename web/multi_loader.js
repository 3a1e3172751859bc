// LoRA Lab Multi Loader on the page: the node's `loras` text (JSON rows, nodes/multi.py) shown as rows, one per
// LoRA: on/off, the LoRA, model and clip strength, up/down/remove, the row's block weights with the block panel,
// and the LoRA's trigger words (click one to add it to the prompt). "+ Add LoRA" adds a row. Every edit rewrites
// the hidden `loras` text (lib/lora_rows.js), which is what the workflow saves and the prompt sends; without this
// extension the text stays editable and runs the same.

import { api } from "../../scripts/api.js";
import { app } from "../../scripts/app.js";
import { loraInfo, panel } from "./common/block_panel.js";
import { addContentWidget, el, growNode, keepKeys, showWidget } from "./common/node_dom.js";
import { showTriggers } from "./common/trigger_chips.js";
import { activeCount, addRow, moveRow, parseRows, removeRow, serializeRows, updateRow } from "./lib/lora_rows.js";
import { ensureStyles } from "./lib/style.js";

const NODE_TYPE = "LoraLabMultiLoader";
const ROWS_INPUT = "loras";
const ROWS_WIDGET = "lora_lab_rows";
const ROW_HEIGHT = 27 + 25; // the row and its block-weights line
const TRIGGER_HEIGHT = 21;
const MIN_WIDTH = 400;

let loraNames = null;

/** The names in ComfyUI's loras folders (GET /models/loras), fetched once and again after a refresh. */
async function loraList(refresh = false) {
  if (!loraNames || refresh) {
    loraNames = api.fetchApi("/models/loras").then((r) => (r.ok ? r.json() : [])).catch(() => []);
  }
  return loraNames;
}

function findWidget(node, name) {
  return node.widgets?.find((w) => w.name === name) ?? null;
}

class RowsView {
  constructor(node) {
    this.node = node;
    this.rows = [];
    this.names = [];
    this.error = null;
    this.element = el("div", { class: "lora-lab-rows", "data-lora-lab-rows": "" });
    keepKeys(this.element);
    this.list = el("div", { class: "ll-list" });
    this.addButton = el("button", { class: "ll-add", text: "+ Add LoRA", "data-role": "add" });
    this.addButton.addEventListener("click", (e) => {
      e.stopPropagation();
      const used = new Set(this.rows.map((r) => r.lora));
      this.commit(addRow(this.rows, this.names.find((n) => !used.has(n)) ?? ""));
    });
    this.summary = el("div", { class: "ll-head", "data-role": "summary" });
    this.element.append(this.summary, this.list, this.addButton);
  }

  get textWidget() {
    return findWidget(this.node, ROWS_INPUT);
  }

  /** Read the rows from the node's `loras` text and draw them. */
  load() {
    const parsed = parseRows(this.textWidget?.value ?? "[]");
    this.rows = parsed.rows;
    this.error = parsed.error;
    this.render();
  }

  /** Keep `rows`: write them to the `loras` text (as a user edit) and draw them. */
  commit(rows, { redraw = true } = {}) {
    this.rows = rows;
    this.error = null;
    const widget = this.textWidget;
    if (widget) {
      const old = widget.value;
      this.committing = true;
      try {
        widget.value = serializeRows(rows); // a DOM widget's setter also calls its callback
        this.node.onWidgetChanged?.(widget.name, widget.value, old, widget);
      } finally {
        this.committing = false;
      }
    }
    if (redraw) this.render();
    this.node.setDirtyCanvas?.(true, true);
  }

  rowTarget(index) {
    const view = this;
    return {
      node: this.node,
      key: `row:${index}`,
      title: `${this.node.title ?? this.node.type} #${this.node.id}, row ${index + 1}`,
      getText: () => view.rows[index]?.block_weights ?? "",
      setText(text) {
        if (!view.rows[index]) return;
        view.commit(updateRow(view.rows, index, { block_weights: text }), { redraw: false });
        const input = view.list.querySelector(`[data-row='${index}'] [data-role=block_weights]`);
        if (input) input.value = text;
      },
      loraName: () => view.rows[index]?.lora || null,
      linked: () => false,
      inputs: () => ({ A: 1, B: 1 }),
    };
  }

  renderRow(row, i) {
    const on = el("input", { type: "checkbox", "data-role": "on", title: "apply this LoRA", "aria-label": `row ${i + 1} on` });
    on.checked = row.on;
    on.addEventListener("change", () => this.commit(updateRow(this.rows, i, { on: on.checked })));
    const select = el("select", { "data-role": "lora", title: row.lora || "choose a LoRA", "aria-label": `row ${i + 1} LoRA` });
    const names = this.names.includes(row.lora) || !row.lora ? this.names : [row.lora, ...this.names];
    select.append(el("option", { value: "", text: "(choose a LoRA)" }));
    for (const name of names) {
      select.append(el("option", { value: name, text: this.names.includes(name) ? name : `${name} (missing)` }));
    }
    select.value = row.lora;
    select.addEventListener("change", () => {
      if (panel.isOpenOn(this.node, `row:${i}`)) panel.close();
      this.commit(updateRow(this.rows, i, { lora: select.value }));
    });
    const number = (key, title) => {
      const input = el("input", { type: "number", step: "0.05", "data-role": key, title, "aria-label": `row ${i + 1} ${title}` });
      input.value = String(row[key]);
      input.addEventListener("change", () => {
        const value = Number(input.value);
        if (input.value.trim() !== "" && Number.isFinite(value)) this.commit(updateRow(this.rows, i, { [key]: value }), { redraw: false });
        else input.value = String(this.rows[i][key]);
      });
      return input;
    };
    const button = (text, role, title, action) => {
      const b = el("button", { text, "data-role": role, title, "aria-label": `row ${i + 1} ${title}` });
      b.addEventListener("click", (e) => {
        e.stopPropagation();
        action();
      });
      return b;
    };
    const move = (delta) => {
      panel.isOpenOn(this.node) && panel.target?.key?.startsWith("row:") && panel.close();
      this.commit(moveRow(this.rows, i, delta));
    };
    const bw = el("input", { type: "text", "data-role": "block_weights", placeholder: "block weights (all blocks at 1)",
      title: "block weights of this row, e.g. OUTALL or IN04-IN08=0.5", "aria-label": `row ${i + 1} block weights` });
    bw.value = row.block_weights;
    bw.addEventListener("change", () => {
      this.commit(updateRow(this.rows, i, { block_weights: bw.value }), { redraw: false });
      if (panel.isOpenOn(this.node, `row:${i}`)) panel.refresh();
    });
    const triggers = el("div", { class: "lora-lab-triggers", "data-role": "triggers", hidden: true });
    const line = el("div", { class: `ll-lrow${row.on ? "" : " ll-off"}`, "data-row": String(i) }, [
      on, select, number("strength", "model strength"), number("strength_clip", "clip strength"),
      button("▲", "up", "move up", () => move(-1)),
      button("▼", "down", "move down", () => move(1)),
      button("✕", "remove", "remove this row", () => {
        if (panel.isOpenOn(this.node)) panel.close();
        this.commit(removeRow(this.rows, i));
      }),
      el("div", { class: "ll-bw" }, [bw, button("✎", "edit-blocks", "edit block weights", () => panel.open(this.rowTarget(i)))]),
    ]);
    const wrap = el("div", { class: "ll-rowwrap", "data-row": String(i) }, [line, triggers]);
    if (row.lora) {
      loraInfo(row.lora).then((info) => {
        if (this.rows[i]?.lora === row.lora) {
          showTriggers(triggers, this.node, info);
          this.fit();
        }
      });
    }
    return wrap;
  }

  render() {
    ensureStyles();
    this.summary.replaceChildren(
      el("span", { text: "on" }), el("span", { text: this.error ? "" : `LoRA (${activeCount(this.rows)} of ${this.rows.length} on)` }),
      el("span", { text: "model" }), el("span", { text: "clip" }), el("span", { text: "" }));
    const children = this.rows.map((row, i) => this.renderRow(row, i));
    if (this.error) children.unshift(el("div", { class: "ll-error", text: `${this.error}; edit the loras text or add rows.` }));
    this.list.replaceChildren(...children);
    this.element.dataset.rows = String(this.rows.length);
    this.fit();
  }

  height() {
    // the drawn height when the rows are on screen, else an estimate
    const drawn = this.element.isConnected && !this.element.hidden ? this.element.scrollHeight : 0;
    if (drawn > 0) return drawn + 4;
    const triggerLines = this.list.querySelectorAll(".lora-lab-triggers:not([hidden])").length;
    return 20 + this.rows.length * ROW_HEIGHT + triggerLines * TRIGGER_HEIGHT + 30 + (this.error ? 20 : 0);
  }

  /** Classic renderer: the node as tall as its rows need (rows are the user's own additions). */
  fit() {
    const node = this.node;
    if (!node.graph) return;
    if (node.size[0] < MIN_WIDTH) node.setSize([MIN_WIDTH, node.size[1]]);
    growNode(node, 0);
  }

  async setNames(refresh = false) {
    this.names = await loraList(refresh);
    this.render();
  }
}

app.registerExtension({
  name: "LoraLab.MultiLoader",

  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData?.name !== NODE_TYPE) return;

    const onNodeCreated = nodeType.prototype.onNodeCreated;
    nodeType.prototype.onNodeCreated = function () {
      const result = onNodeCreated?.apply(this, arguments);
      const text = findWidget(this, ROWS_INPUT);
      const node = this;
      if (text) {
        // the text set from elsewhere (a loaded API workflow, a paste, another extension): draw it again
        const callback = text.callback;
        text.callback = function () {
          const r = callback?.apply(this, arguments);
          if (!node.loraLabRows?.committing) node.loraLabRows?.load();
          return r;
        };
        text.hidden = true; // the classic renderer
        text.computeLayoutSize = () => ({ minHeight: 0, maxHeight: 0, minWidth: 0 }); // 1.32 lays out hidden ones
        text.options ??= {};
        text.options.hidden = true; // Nodes 2.0
        if (text.element) text.element.hidden = true;
      }
      const view = new RowsView(this);
      const widget = addContentWidget(this, ROWS_WIDGET, view.element, {
        minHeight: () => view.height(), maxHeight: () => view.height(), margin: 6 });
      widget.view = view;
      showWidget(widget, true);
      this.loraLabRows = view;
      view.load();
      view.setNames();
      return result;
    };

    const onConfigure = nodeType.prototype.onConfigure;
    nodeType.prototype.onConfigure = function () {
      const result = onConfigure?.apply(this, arguments);
      this.loraLabRows?.load();
      return result;
    };

    const onRemoved = nodeType.prototype.onRemoved;
    nodeType.prototype.onRemoved = function () {
      if (panel.isOpenOn(this)) panel.close();
      return onRemoved?.apply(this, arguments);
    };
  },

  async refreshComboInNodes() {
    await loraList(true);
    for (const node of app.graph?.nodes ?? []) {
      if (node.type === NODE_TYPE) node.loraLabRows?.setNames();
    }
  },
});
