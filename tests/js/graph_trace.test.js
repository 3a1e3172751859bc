// Unit tests of web/lib/graph_trace.js on small fake graphs with LiteGraph's node interface.
import assert from "node:assert/strict";
import { test } from "node:test";

import { findModelFile, findPromptTargets } from "../../web/lib/graph_trace.js";

function node(type, { inputs = [], outputs = [], widgets = {} } = {}) {
  const n = {
    type,
    inputs: inputs.map(([name, t]) => ({ name, type: t, link: null })),
    outputs: outputs.map(([name, t]) => ({ name, type: t, links: [] })),
    widgets: Object.entries(widgets).map(([name, value]) => ({ name, value })),
    sources: new Map(),
    targets: new Map(),
    getInputNode(slot) {
      return this.sources.get(slot) ?? null;
    },
    getOutputNodes(slot) {
      return this.targets.get(slot) ?? null;
    },
  };
  return n;
}

function link(from, outSlot, to, inSlot) {
  to.sources.set(inSlot, from);
  from.targets.set(outSlot, [...(from.targets.get(outSlot) ?? []), to]);
}

const checkpoint = () => node("CheckpointLoaderSimple", {
  outputs: [["MODEL", "MODEL"], ["CLIP", "CLIP"], ["VAE", "VAE"]],
  widgets: { ckpt_name: "sd15.safetensors" },
});
const loader = () => node("LoraLabLoader", {
  inputs: [["model", "MODEL"], ["clip", "CLIP"]],
  outputs: [["MODEL", "MODEL"], ["CLIP", "CLIP"]],
  widgets: { lora_name: "a.safetensors", block_weights: "" },
});

test("a loader finds the checkpoint through other model nodes and reroutes", () => {
  const ckpt = checkpoint();
  const first = loader();
  const reroute = node("Reroute", { inputs: [["", "*"]], outputs: [["", "*"]] });
  const second = loader();
  link(ckpt, 0, first, 0);
  link(first, 0, reroute, 0);
  link(reroute, 0, second, 0);
  const found = findModelFile(second);
  assert.equal(found.kind, "checkpoints");
  assert.equal(found.name, "sd15.safetensors");
  assert.equal(found.node, ckpt);
});

test("a diffusion model loader (unet_name)", () => {
  const unet = node("UNETLoader", { outputs: [["MODEL", "MODEL"]], widgets: { unet_name: "flux1-dev.safetensors" } });
  const l = loader();
  link(unet, 0, l, 0);
  assert.deepEqual({ ...findModelFile(l), node: undefined }, { kind: "diffusion_models", name: "flux1-dev.safetensors", node: undefined });
});

test("a stack row finds the model of the node that applies the stack", () => {
  const ckpt = checkpoint();
  const row1 = node("LoraLabStack", { inputs: [["lora_stack", "LORA_STACK"]], outputs: [["lora_stack", "LORA_STACK"]] });
  const row2 = node("LoraLabStack", { inputs: [["lora_stack", "LORA_STACK"]], outputs: [["lora_stack", "LORA_STACK"]] });
  const apply = node("LoraLabApplyStack", { inputs: [["model", "MODEL"], ["clip", "CLIP"], ["lora_stack", "LORA_STACK"]] });
  link(row1, 0, row2, 0);
  link(row2, 0, apply, 2);
  link(ckpt, 0, apply, 0);
  assert.equal(findModelFile(row1).name, "sd15.safetensors");
});

test("a LoRA Lab stack row finds the model through a reroute and another pack's consumer", () => {
  const ckpt = checkpoint();
  const row = node("LoraLabStack", { inputs: [["lora_stack", "LORA_LAB_STACK,LORA_STACK"]], outputs: [["lora_stack", "LORA_LAB_STACK"]] });
  const reroute = node("Reroute", { inputs: [["", "*"]], outputs: [["", "*"]] });
  const sweep = node("LoraLabSweep", { inputs: [["model", "MODEL"], ["lora_stack", "LORA_LAB_STACK,LORA_STACK"]] });
  link(row, 0, reroute, 0);
  link(reroute, 0, sweep, 1);
  link(ckpt, 0, sweep, 0);
  assert.equal(findModelFile(row).name, "sd15.safetensors");
});

test("nothing connected, or a cycle, gives null", () => {
  assert.equal(findModelFile(loader()), null);
  const a = loader();
  const b = loader();
  link(a, 0, b, 0);
  link(b, 0, a, 0);
  assert.equal(findModelFile(a), null);
  const lonely = node("LoraLabStack", { outputs: [["lora_stack", "LORA_STACK"]] });
  assert.equal(findModelFile(lonely), null);
});

// A tiny graph with LiteGraph's link table, for the walk that needs the target input's name.
function graph() {
  const g = { links: new Map(), nodes: new Map(), next: 1, getNodeById: (id) => g.nodes.get(id) };
  return g;
}

function add(g, type, { inputs = [], outputs = [], widgets = {} } = {}) {
  const n = node(type, { inputs, outputs, widgets });
  n.id = g.next++;
  n.graph = g;
  g.nodes.set(n.id, n);
  return n;
}

function wire(g, from, outSlot, to, inSlot) {
  const id = g.links.size + 100;
  g.links.set(id, { origin_id: from.id, origin_slot: outSlot, target_id: to.id, target_slot: inSlot });
  from.outputs[outSlot].links.push(id);
  to.inputs[inSlot].link = id;
}

test("findPromptTargets: the prompts a loader's CLIP feeds, the positive one first", () => {
  const g = graph();
  const lora = add(g, "LoraLabLoader", { outputs: [["MODEL", "MODEL"], ["CLIP", "CLIP"]] });
  const skip = add(g, "CLIPSetLastLayer", { inputs: [["clip", "CLIP"]], outputs: [["CLIP", "CLIP"]] });
  const neg = add(g, "CLIPTextEncode", { inputs: [["clip", "CLIP"]], outputs: [["CONDITIONING", "CONDITIONING"]], widgets: { text: "blurry" } });
  const pos = add(g, "CLIPTextEncode", { inputs: [["clip", "CLIP"]], outputs: [["CONDITIONING", "CONDITIONING"]], widgets: { text: "a cat" } });
  const ks = add(g, "KSampler", { inputs: [["model", "MODEL"], ["positive", "CONDITIONING"], ["negative", "CONDITIONING"]] });
  wire(g, lora, 1, skip, 0);
  wire(g, skip, 0, neg, 0);
  wire(g, skip, 0, pos, 0);
  wire(g, neg, 0, ks, 2);
  wire(g, pos, 0, ks, 1);
  const found = findPromptTargets(lora);
  assert.deepEqual(found.map((t) => [t.node, t.widget, t.role]), [[pos, "text", "positive"], [neg, "text", "negative"]]);
  assert.deepEqual(findPromptTargets(pos), []);
});
