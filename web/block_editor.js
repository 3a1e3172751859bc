// Block-weight editor: a button on every LoRA Lab node with a `block_weights` field opens a panel with one
// slider per block of the model's family (grouped IN / MID / OUT, or double / single for Flux), a preset
// menu (built-in and the user's presets) and the text kept in sync both ways. The text stays the source
// of truth: the sliders show what it means (lib/block_syntax.js) and rewrite it only where that keeps its
// meaning; workflows saved without this extension work unchanged.
//
// The family's blocks and presets come from the pack's route GET /lora_lab/blocks; the family itself is
// the user's choice in the panel, or the family of the model file upstream (GET /lora_lab/family, which
// reads the file's safetensors header), or the family the node's last report names.

import { api } from "../../scripts/api.js";
import { app } from "../../scripts/app.js";
import { makeSpec, numericValue, readText, roundWeight, setBlockValue } from "./lib/block_syntax.js";
import { findModelFile } from "./lib/graph_trace.js";
import { familyFromReport } from "./lib/report_format.js";
import { ensureStyles } from "./lib/style.js";

const TEXT_WIDGET = "block_weights";
const BUTTON_WIDGET = "lora_lab_edit_blocks";
const FAMILY_PROPERTY = "lora_lab_family";
const FAMILY_CHOICES = [
  ["auto", "family: auto"],
  ["sd1", "SD1.x"],
  ["sd2", "SD2.x"],
  ["sdxl", "SDXL"],
  ["flux", "Flux"],
  ["sd3", "SD3"],
];
const SLIDER = { min: -1, max: 2, step: 0.05 };

function findWidget(node, name) {
  return node.widgets?.find((w) => w.name === name) ?? null;
}

function el(tag, attrs = {}, children = []) {
  const e = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "text") e.textContent = value;
    else if (key === "class") e.className = value;
    else e.setAttribute(key, value);
  }
  for (const child of children) e.append(child);
  return e;
}

async function getJson(route) {
  const res = await api.fetchApi(route);
  if (!res.ok) throw new Error(`${route} answered HTTP ${res.status}`);
  return res.json();
}

function hasBlockWeights(nodeData) {
  const input = nodeData?.input ?? {};
  return Boolean(input.required?.[TEXT_WIDGET] ?? input.optional?.[TEXT_WIDGET]);
}

/** The family to show: the user's choice, the model file upstream, or the node's last report. */
async function resolveFamily(node) {
  const chosen = node.properties?.[FAMILY_PROPERTY];
  if (chosen && chosen !== "auto") return { family: chosen, source: "chosen in this panel" };
  const notes = [];
  const file = findModelFile(node);
  if (file) {
    const query = `kind=${encodeURIComponent(file.kind)}&name=${encodeURIComponent(file.name)}`;
    try {
      const info = await getJson(`/lora_lab/family?${query}`);
      if (info.family) return { family: info.family, source: `detected from ${file.name}` };
      notes.push(info.reason ?? `no family found for ${file.name}`);
    } catch (err) {
      notes.push(`cannot ask for the family of ${file.name}: ${err.message}`);
    }
  }
  const reported = familyFromReport(node.loraLabReport ?? "");
  if (reported) return { family: reported, source: "from the node's last report", notes };
  notes.push("no model connected and no report yet: showing SD1.x; pick the family above");
  return { family: "sd1", source: "not detected", notes, guessed: true };
}

class BlockPanel {
  constructor() {
    this.node = null;
    this.spec = null;
    this.rows = new Map();
    this.loading = 0;
    this.lastError = null;
  }

  get textWidget() {
    return this.node ? findWidget(this.node, TEXT_WIDGET) : null;
  }

  build() {
    if (this.root) return;
    ensureStyles();
    this.title = el("span", { class: "ll-title" });
    this.closeButton = el("button", { text: "×", title: "Close", "data-role": "close" });
    this.closeButton.addEventListener("click", () => this.close());
    this.familySelect = el("select", { "data-role": "family-choice", title: "Model family of the sliders" });
    for (const [value, label] of FAMILY_CHOICES) this.familySelect.append(el("option", { value, text: label }));
    this.familySelect.addEventListener("change", () => {
      if (!this.node) return;
      this.node.properties ??= {};
      this.node.properties[FAMILY_PROPERTY] = this.familySelect.value;
      this.load();
    });
    this.familyInfo = el("span", { class: "ll-family", "data-role": "family" });
    this.presetSelect = el("select", { "data-role": "presets", title: "A preset replaces the text" });
    this.presetSelect.addEventListener("change", () => {
      const name = this.presetSelect.value;
      this.presetSelect.value = "";
      if (name) this.setText(name);
    });
    this.reloadButton = el("button", { text: "↻", title: "Detect the family again and reload the presets" });
    this.reloadButton.addEventListener("click", () => this.load());
    this.status = el("div", { class: "ll-status", "data-role": "status" });
    this.groups = el("div", { class: "ll-groups" });
    this.root = el("div", { class: "lora-lab-panel", "data-lora-lab-panel": "", hidden: "" }, [
      el("header", {}, [this.title, this.closeButton]),
      el("div", { class: "ll-toolbar" }, [this.familySelect, this.familyInfo, this.presetSelect, this.reloadButton]),
      this.status,
      this.groups,
    ]);
    // keys typed in the panel are not canvas shortcuts
    this.root.addEventListener("keydown", (e) => e.stopPropagation());
    this.makeDraggable(this.root.querySelector("header"));
    document.body.append(this.root);
  }

  /** Drag the panel by its header, so it can be moved off the node it edits. */
  makeDraggable(handle) {
    handle.style.cursor = "move";
    handle.addEventListener("pointerdown", (down) => {
      if (down.target !== handle && down.target !== this.title) return;
      const box = this.root.getBoundingClientRect();
      const dx = down.clientX - box.left;
      const dy = down.clientY - box.top;
      const move = (e) => {
        this.root.style.left = `${Math.max(0, Math.min(window.innerWidth - 80, e.clientX - dx))}px`;
        this.root.style.top = `${Math.max(0, Math.min(window.innerHeight - 40, e.clientY - dy))}px`;
        this.root.style.right = "auto";
      };
      const up = () => {
        window.removeEventListener("pointermove", move);
        window.removeEventListener("pointerup", up);
      };
      window.addEventListener("pointermove", move);
      window.addEventListener("pointerup", up);
      down.preventDefault();
    });
  }

  open(node) {
    this.build();
    this.node = node;
    this.root.hidden = false;
    this.root.dataset.nodeId = String(node.id);
    this.title.textContent = `Block weights · ${node.title ?? node.type} #${node.id}`;
    this.familySelect.value = node.properties?.[FAMILY_PROPERTY] ?? "auto";
    return this.load();
  }

  close() {
    if (!this.root) return;
    this.root.hidden = true;
    this.node = null;
    this.spec = null;
  }

  async load() {
    const node = this.node;
    if (!node) return;
    const ticket = ++this.loading;
    this.root.dataset.state = "loading";
    this.familyInfo.textContent = "…";
    let payload;
    let family;
    try {
      family = await resolveFamily(node);
      payload = await getJson(`/lora_lab/blocks?family=${encodeURIComponent(family.family)}`);
    } catch (err) {
      if (ticket !== this.loading) return;
      this.spec = null;
      this.groups.replaceChildren();
      this.showStatus([{ kind: "error", text: `Cannot load the blocks: ${err.message}` }]);
      this.root.dataset.state = "error";
      return;
    }
    if (ticket !== this.loading || node !== this.node) return;
    this.family = family;
    this.spec = makeSpec(payload);
    this.userPresetError = payload.user_presets_error;
    this.familyInfo.textContent = `${payload.label} (${family.source})`;
    this.buildPresets(payload);
    this.buildSliders();
    this.refresh();
    this.root.dataset.state = "ready";
    this.root.dataset.family = payload.family;
  }

  buildPresets(payload) {
    const select = this.presetSelect;
    select.replaceChildren(el("option", { value: "", text: "preset…" }));
    for (const source of ["built-in", "user"]) {
      const presets = payload.presets.filter((p) => p.source === source);
      if (!presets.length) continue;
      const group = el("optgroup", { label: source === "user" ? "user presets" : "built-in" });
      for (const p of presets) {
        const title = [p.doc, p.syntax].filter(Boolean).join(" — ");
        group.append(el("option", { value: p.name, text: p.name, title }));
      }
      select.append(group);
    }
    select.value = "";
  }

  buildSliders() {
    this.rows.clear();
    const spec = this.spec;
    const fieldsets = [];
    const groups = [...spec.groups];
    if (spec.encoders.length) groups.splice(1, 0, { name: "TEXT ENCODERS", blocks: spec.encoders });
    for (const group of groups) {
      const fieldset = el("fieldset", { "data-group": group.name }, [el("legend", { text: group.name })]);
      for (const name of group.blocks) fieldset.append(this.buildRow(name));
      fieldsets.push(fieldset);
    }
    this.groups.replaceChildren(...fieldsets);
  }

  buildRow(name) {
    const label = el("label", { text: name });
    const range = el("input", {
      type: "range", min: SLIDER.min, max: SLIDER.max, step: SLIDER.step, "data-block": name, "aria-label": name,
    });
    const number = el("input", { type: "number", step: SLIDER.step, "data-block-number": name, "aria-label": `${name} value` });
    range.addEventListener("input", () => this.move(name, roundWeight(range.value)));
    number.addEventListener("change", () => {
      const value = Number(number.value);
      if (number.value.trim() !== "" && Number.isFinite(value)) this.move(name, roundWeight(value));
      else this.refresh();
    });
    const row = el("div", { class: "ll-row", "data-row": name }, [label, range, number]);
    this.rows.set(name, { row, label, range, number });
    return row;
  }

  inputs() {
    const value = (n) => Number(findWidget(this.node, n)?.value ?? 1);
    return { A: value("block_a"), B: value("block_b") };
  }

  linkedText() {
    return (this.node?.inputs ?? []).some((i) => i.widget?.name === TEXT_WIDGET && i.link != null);
  }

  /** Text -> sliders. */
  refresh() {
    if (!this.node || !this.spec) return;
    const text = String(this.textWidget?.value ?? "");
    const reading = readText(text, this.spec);
    const lines = [];
    const locked = Boolean(reading.error) || reading.readOnly.length > 0 || this.linkedText();
    if (this.linkedText()) lines.push({ kind: "warning", text: "block_weights comes from a link; edit it at its source." });
    if (reading.error) lines.push({ kind: "error", text: `The text does not parse: ${reading.error}` });
    for (const reason of reading.readOnly) {
      lines.push({ kind: "warning", text: `The sliders cannot rewrite this text without changing it: ${reason}. Edit the text.` });
    }
    if (reading.extras.length) {
      lines.push({ kind: "note", text: `Kept as written, after the block entries: ${reading.extras.map((e) => e.text).join(", ")}` });
    }
    for (const note of reading.notes) lines.push({ kind: "note", text: `${note}; a slider move rewrites it as named entries.` });
    for (const note of this.family?.notes ?? []) lines.push({ kind: this.family.guessed ? "warning" : "note", text: note });
    if (this.userPresetError) lines.push({ kind: "warning", text: `User presets not loaded: ${this.userPresetError}` });
    if (this.lastError) lines.push({ kind: "error", text: this.lastError });
    this.showStatus(lines);
    this.root.classList.toggle("ll-readonly", locked);
    this.root.dataset.readonly = String(locked);
    const inputs = this.inputs();
    for (const [name, parts] of this.rows) {
      const isEncoder = this.spec.encoders.includes(name);
      const entry = isEncoder ? reading.encoders[name] : { value: reading.values[name], explicit: true };
      const value = entry?.value ?? 1;
      const shown = numericValue(value, inputs);
      parts.range.value = String(Number.isFinite(shown) ? shown : 1);
      if (document.activeElement !== parts.number) parts.number.value = Number.isFinite(shown) ? String(shown) : "";
      parts.range.disabled = locked;
      parts.number.disabled = locked;
      const symbolic = typeof value === "string";
      parts.row.classList.toggle("ll-symbolic", symbolic);
      if (symbolic) parts.label.dataset.token = value;
      else delete parts.label.dataset.token;
      parts.row.classList.toggle("ll-follows", isEncoder && !entry?.explicit);
      parts.row.title = isEncoder && !entry?.explicit ? `${name} follows BASE until you move it` : "";
      parts.row.classList.toggle("ll-changed", shown !== 1);
      parts.row.dataset.value = String(value);
    }
  }

  showStatus(lines) {
    this.status.replaceChildren(...lines.map((l) => el("div", { class: `ll-${l.kind}`, text: l.text })));
  }

  move(name, value) {
    if (this.node && this.node.graph !== app.canvas?.graph) {
      this.close(); // the node's workflow is no longer the one on screen
      return;
    }
    const widget = this.textWidget;
    if (!widget || !this.spec) return;
    try {
      this.lastError = null;
      this.setText(setBlockValue(String(widget.value ?? ""), this.spec, name, value));
    } catch (err) {
      this.lastError = err.message;
      this.refresh();
    }
  }

  /** Set the node's text as a user edit would, so other extensions and the undo history see it. */
  setText(text) {
    const node = this.node;
    const widget = this.textWidget;
    if (!node || !widget) return;
    const old = widget.value;
    if (old !== text) {
      widget.value = text;
      widget.callback?.(widget.value, app.canvas, node);
      node.onWidgetChanged?.(widget.name, text, old, widget);
      node.setDirtyCanvas?.(true, true);
    }
    this.refresh();
  }
}

const panel = new BlockPanel();

app.registerExtension({
  name: "LoraLab.BlockEditor",

  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!nodeData?.name?.startsWith("LoraLab") || !hasBlockWeights(nodeData)) return;

    const onNodeCreated = nodeType.prototype.onNodeCreated;
    nodeType.prototype.onNodeCreated = function () {
      const result = onNodeCreated?.apply(this, arguments);
      const node = this;
      const text = findWidget(node, TEXT_WIDGET);
      if (text) {
        const callback = text.callback;
        text.callback = function () {
          const r = callback?.apply(this, arguments);
          if (panel.node === node) panel.refresh();
          return r;
        };
      }
      const button = node.addWidget("button", BUTTON_WIDGET, null, () => panel.open(node), { serialize: false });
      button.label = "edit block weights";
      button.serialize = false;
      return result;
    };

    const onRemoved = nodeType.prototype.onRemoved;
    nodeType.prototype.onRemoved = function () {
      if (panel.node === this) panel.close();
      return onRemoved?.apply(this, arguments);
    };

    const onConfigure = nodeType.prototype.onConfigure;
    nodeType.prototype.onConfigure = function () {
      const result = onConfigure?.apply(this, arguments);
      if (panel.node === this) panel.load();
      return result;
    };
  },
});
