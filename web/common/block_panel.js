// The block-weight panel: one slider per block of the model's family (grouped IN / MID / OUT, or double /
// single for Flux), a preset menu (built-in and the user's presets), the text kept in sync both ways, and, for
// the LoRA being edited, which blocks it touches and how strongly. The text stays the source of truth: the
// sliders show what it means (lib/block_syntax.js) and rewrite it only where that keeps its meaning.
//
// The panel edits a *target*: a node's `block_weights` field (web/block_editor.js) or one row of the multi-LoRA
// loader (web/multi_loader.js). A target is
//   {node, key, title, getText(), setText(text), loraName(), linked(), inputs()}
// where setText makes the change as a user edit would.
//
// The family's blocks and presets come from GET /lora_lab/blocks; the family itself is the user's choice in the
// panel, the model file upstream (GET /lora_lab/family), the node's last report, or the LoRA's own family
// (GET /lora_lab/lora_info, which also gives the blocks it touches). The panel sits where it does not cover the
// page's Run button (lib/layout.js).
//
// Not an extension: the extensions import it (ComfyUI also loads it, which does nothing).

import { api } from "../../../scripts/api.js";
import { app } from "../../../scripts/app.js";
import { makeSpec, numericValue, readText, roundWeight, setBlockValue } from "../lib/block_syntax.js";
import { findModelFile } from "../lib/graph_trace.js";
import { placePanel } from "../lib/layout.js";
import { familyFromReport } from "../lib/report_format.js";
import { ensureStyles } from "../lib/style.js";
import { el, keepKeys } from "./node_dom.js";

export const FAMILY_PROPERTY = "lora_lab_family";
const FAMILY_CHOICES = [
  ["auto", "family: auto"],
  ["sd1", "SD1.x"],
  ["sd2", "SD2.x"],
  ["sdxl", "SDXL"],
  ["flux", "Flux"],
  ["sd3", "SD3"],
];
const SLIDER = { min: -1, max: 2, step: 0.05 };
const PANEL_WIDTH = 640;
// The page's own controls the panel must not cover: the Run button and its bar (frontend 1.32 - 1.35).
const AVOID_SELECTORS = [".actionbar", "[data-testid='queue-button']", ".comfyui-queue-button", ".comfy-menu"];

async function getJson(route) {
  const res = await api.fetchApi(route);
  if (!res.ok) throw new Error(`${route} answered HTTP ${res.status}`);
  return res.json();
}

const infoCache = new Map();

/**
 * GET /lora_lab/lora_info for `name`, remembered per name: trigger words (from the file's header and the files
 * next to it), and with `blocks` also the family it was made for and the blocks it touches (reads the file).
 */
export function loraInfo(name, { blocks = false } = {}) {
  if (!name) return Promise.resolve(null);
  const key = `${blocks ? "blocks" : "words"}:${name}`;
  if (!infoCache.has(key)) {
    const query = `name=${encodeURIComponent(name)}${blocks ? "&blocks=1" : ""}`;
    const p = getJson(`/lora_lab/lora_info?${query}`).catch((err) => {
      infoCache.delete(key);
      return { name, error: err.message, triggers: [], blocks: {} };
    });
    infoCache.set(key, p);
  }
  return infoCache.get(key);
}

/** Forget what is known about LoRA files (after a save: a name may now be another file). */
export function forgetLoraInfo() {
  infoCache.clear();
}

/** The family to show: the user's choice, the model file upstream, the node's last report, or the LoRA's. */
async function resolveFamily(target) {
  const node = target.node;
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
  const lora = target.loraName();
  if (lora) {
    const info = await loraInfo(lora, { blocks: true });
    if (info?.family) return { family: info.family, source: `the family ${lora} was made for`, notes };
  }
  notes.push("no model connected and no report yet: showing SD1.x; pick the family above");
  return { family: "sd1", source: "not detected", notes, guessed: true };
}

/** A target for a node's own `block_weights` widget. */
export function widgetTarget(node, textWidget = "block_weights") {
  const widget = () => node.widgets?.find((w) => w.name === textWidget) ?? null;
  return {
    node,
    key: textWidget,
    title: `${node.title ?? node.type} #${node.id}`,
    getText: () => String(widget()?.value ?? ""),
    setText(text) {
      const w = widget();
      if (!w) return;
      const old = w.value;
      if (old === text) return;
      w.value = text;
      w.callback?.(w.value, app.canvas, node);
      node.onWidgetChanged?.(w.name, text, old, w);
      node.setDirtyCanvas?.(true, true);
    },
    loraName() {
      const name = node.widgets?.find((w) => w.name === "lora_name")?.value;
      return typeof name === "string" && name && name !== "None" ? name : null;
    },
    linked: () => (node.inputs ?? []).some((i) => i.widget?.name === textWidget && i.link != null),
    inputs() {
      const value = (n) => Number(node.widgets?.find((w) => w.name === n)?.value ?? 1);
      return { A: value("block_a"), B: value("block_b") };
    },
  };
}

export class BlockPanel {
  constructor() {
    this.target = null;
    this.spec = null;
    this.rows = new Map();
    this.loading = 0;
    this.lastError = null;
    this.moved = false;
  }

  get node() {
    return this.target?.node ?? null;
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
    this.loraLine = el("div", { class: "ll-lora", "data-role": "lora-blocks" });
    this.status = el("div", { class: "ll-status", "data-role": "status" });
    this.groups = el("div", { class: "ll-groups" });
    this.root = el("div", { class: "lora-lab-panel", "data-lora-lab-panel": "", hidden: true }, [
      el("header", {}, [this.title, this.closeButton]),
      el("div", { class: "ll-toolbar" }, [this.familySelect, this.familyInfo, this.presetSelect, this.reloadButton]),
      this.loraLine,
      this.status,
      this.groups,
    ]);
    keepKeys(this.root);
    this.makeDraggable(this.root.querySelector("header"));
    document.body.append(this.root);
    window.addEventListener("resize", () => this.place());
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
        this.moved = true;
        this.root.style.left = `${Math.max(0, Math.min(window.innerWidth - 80, e.clientX - dx))}px`;
        this.root.style.top = `${Math.max(0, Math.min(window.innerHeight - 40, e.clientY - dy))}px`;
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

  /** Put the panel at the top right, clear of the Run button and its bar (unless the user moved it). */
  place() {
    if (!this.root || this.root.hidden || this.moved) return;
    const avoid = [];
    for (const selector of AVOID_SELECTORS) {
      for (const e of document.querySelectorAll(selector)) {
        const r = e.getBoundingClientRect();
        if (r.width > 0 && r.height > 0) avoid.push({ x: r.left, y: r.top, w: r.width, h: r.height });
      }
    }
    this.root.style.maxHeight = "none";
    const natural = this.root.scrollHeight;
    const box = placePanel({ w: window.innerWidth, h: window.innerHeight }, { w: PANEL_WIDTH, h: natural }, avoid);
    Object.assign(this.root.style, { left: `${box.x}px`, top: `${box.y}px`, width: `${box.w}px`,
      maxHeight: `${box.h}px`, right: "auto" });
  }

  open(target) {
    this.build();
    this.target = target;
    this.root.hidden = false;
    this.root.dataset.nodeId = String(target.node.id);
    this.root.dataset.target = target.key;
    this.title.textContent = `Block weights · ${target.title}`;
    this.familySelect.value = target.node.properties?.[FAMILY_PROPERTY] ?? "auto";
    this.place();
    return this.load();
  }

  close() {
    if (!this.root) return;
    this.root.hidden = true;
    this.target = null;
    this.spec = null;
  }

  /** Whether the panel is open on `node` (any of its targets, or the one with `key`). */
  isOpenOn(node, key = null) {
    return this.target?.node === node && (key === null || this.target.key === key);
  }

  async load() {
    const target = this.target;
    if (!target) return;
    const ticket = ++this.loading;
    this.root.dataset.state = "loading";
    this.familyInfo.textContent = "…";
    let payload;
    let family;
    let info = null;
    try {
      family = await resolveFamily(target);
      payload = await getJson(`/lora_lab/blocks?family=${encodeURIComponent(family.family)}`);
      info = await loraInfo(target.loraName(), { blocks: true });
    } catch (err) {
      if (ticket !== this.loading) return;
      this.spec = null;
      this.groups.replaceChildren();
      this.showStatus([{ kind: "error", text: `Cannot load the blocks: ${err.message}` }]);
      this.root.dataset.state = "error";
      return;
    }
    if (ticket !== this.loading || target !== this.target) return;
    this.family = family;
    this.spec = makeSpec(payload);
    this.userPresetError = payload.user_presets_error;
    this.familyInfo.textContent = `${payload.label} (${family.source})`;
    this.buildPresets(payload);
    this.buildSliders();
    this.showTouched(info, payload);
    this.refresh();
    this.root.dataset.state = "ready";
    this.root.dataset.family = payload.family;
    this.place();
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
    const energy = el("div", { class: "ll-energy", "data-energy": name, hidden: true });
    const row = el("div", { class: "ll-row", "data-row": name }, [label, range, number, energy]);
    this.rows.set(name, { row, label, range, number, energy });
    return row;
  }

  /** Mark the blocks the edited LoRA touches (a bar: its share of the LoRA's change) and those it does not. */
  showTouched(info, payload) {
    this.touched = null;
    this.root.classList.remove("ll-has-lora");
    for (const parts of this.rows.values()) {
      parts.row.classList.remove("ll-untouched");
      parts.energy.hidden = true;
      delete parts.row.dataset.touched;
    }
    const lora = this.target?.loraName();
    if (!lora || !info || info.error) {
      this.loraLine.textContent = lora && info?.error ? `Blocks of ${lora}: ${info.error}` : "";
      return;
    }
    if (info.block_family && info.block_family !== payload.family) {
      this.loraLine.textContent = `${lora} is made for ${info.family_label ?? info.block_family}; the blocks it touches `
        + `are shown with that family's sliders.`;
      return;
    }
    const blocks = info.blocks ?? {};
    this.root.classList.add("ll-has-lora"); // every row keeps room for its bar, so the rows stay aligned
    let touched = 0;
    for (const [name, parts] of this.rows) {
      const b = blocks[name];
      const hit = Boolean(b && b.targets > 0);
      parts.row.dataset.touched = String(hit);
      parts.row.classList.toggle("ll-untouched", !hit);
      if (hit) {
        touched += 1;
        parts.energy.hidden = false;
        if (b.energy === null || b.energy === undefined) parts.energy.dataset.unknown = "";
        else delete parts.energy.dataset.unknown;
        parts.energy.style.width = `${Math.max(4, Math.round(100 * (b.energy ?? 1)))}%`;
        parts.energy.title = `${b.targets} layers` + (b.energy == null ? "" : `, ${Math.round(100 * b.energy)}% of the strongest block`);
      }
      parts.label.title = hit ? `${lora} has ${b.targets} layers here` : `${lora} has no layer in ${name}`;
    }
    this.touched = touched;
    this.loraLine.textContent = `${lora} touches ${touched} of ${this.rows.size} blocks: bars show each block's share `
      + "of its change, struck-through blocks it does not touch (their weight changes nothing).";
  }

  /** Text -> sliders. */
  refresh() {
    if (!this.target || !this.spec) return;
    const text = this.target.getText();
    const reading = readText(text, this.spec);
    const lines = [];
    const linked = this.target.linked();
    const locked = Boolean(reading.error) || reading.readOnly.length > 0 || linked;
    if (linked) lines.push({ kind: "warning", text: "block_weights comes from a link; edit it at its source." });
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
    const inputs = this.target.inputs();
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
    if (!this.target || !this.spec) return;
    try {
      this.lastError = null;
      this.setText(setBlockValue(this.target.getText(), this.spec, name, value));
    } catch (err) {
      this.lastError = err.message;
      this.refresh();
    }
  }

  /** Set the target's text as a user edit would, so other extensions and the undo history see it. */
  setText(text) {
    this.target?.setText(text);
    this.refresh();
  }
}

/** The one panel of the page. */
export const panel = new BlockPanel();
