// Which model file feeds a node: walk the graph from a node with a block_weights field to the loader
// that names the model file, so the editor can ask the pack for that file's family. Pure functions over
// LiteGraph's node interface (inputs, outputs, widgets, getInputNode(slot), getOutputNodes(slot)).

const MODEL_WIDGETS = [
  ["ckpt_name", "checkpoints"],
  ["unet_name", "diffusion_models"],
];
const MAX_NODES = 64;

function widgetValue(node, name) {
  const w = (node.widgets ?? []).find((x) => x.name === name);
  return w && typeof w.value === "string" && w.value ? w.value : null;
}

function modelInputSlots(node) {
  const inputs = node.inputs ?? [];
  const typed = [];
  inputs.forEach((input, slot) => {
    if (input.type === "MODEL") typed.push(slot);
  });
  if (typed.length) return typed;
  if (node.type === "Reroute" && inputs.length === 1) return [0];
  return [];
}

// LoRA Lab's stack type, and the other packs' one (a stack row may feed either kind of consumer).
export const STACK_TYPES = Object.freeze(["LORA_LAB_STACK", "LORA_STACK"]);

function isStackType(type) {
  return String(type ?? "").split(",").some((t) => STACK_TYPES.includes(t.trim()));
}

function stackOutputSlots(node) {
  const slots = [];
  (node.outputs ?? []).forEach((output, slot) => {
    if (isStackType(output.type)) slots.push(slot);
  });
  if (!slots.length && node.type === "Reroute" && (node.outputs ?? []).length === 1) slots.push(0);
  return slots;
}

/**
 * The model file upstream of `node`: `{kind, name, node}` with kind `checkpoints` or
 * `diffusion_models`, or null. Follows MODEL inputs upstream; a node without one (a LoraLabStack row)
 * follows its stack output (LORA_LAB_STACK or LORA_STACK, through reroutes) downstream to the node that
 * applies the stack, then that node's model.
 */
export function findModelFile(node) {
  const seen = new Set();
  const upstream = (n) => {
    if (!n || seen.has(n) || seen.size > MAX_NODES) return null;
    seen.add(n);
    for (const [widget, kind] of MODEL_WIDGETS) {
      const name = widgetValue(n, widget);
      if (name) return { kind, name, node: n };
    }
    for (const slot of modelInputSlots(n)) {
      const found = upstream(n.getInputNode?.(slot) ?? null);
      if (found) return found;
    }
    return null;
  };
  const downstream = (n) => {
    if (!n || seen.has(n) || seen.size > MAX_NODES) return null;
    if (modelInputSlots(n).length && n.type !== "Reroute") return upstream(n);
    seen.add(n);
    for (const slot of stackOutputSlots(n)) {
      for (const next of n.getOutputNodes?.(slot) ?? []) {
        const found = downstream(next);
        if (found) return found;
      }
    }
    return null;
  };
  if (modelInputSlots(node).length) return upstream(node);
  return downstream(node);
}

const TEXT_WIDGETS = ["text", "text_g", "prompt", "positive"];

function textWidgetName(node) {
  const names = (node.widgets ?? []).map((w) => w.name);
  return TEXT_WIDGETS.find((n) => names.includes(n)) ?? null;
}

/** `[{node, input}]` fed by output `slot` of `n` (input: the target's input slot object, when known). */
function targetsOf(n, slot) {
  const links = n.graph?.links;
  const ids = n.outputs?.[slot]?.links ?? [];
  if (links && ids.length) {
    const out = [];
    for (const id of ids) {
      const info = typeof links.get === "function" ? links.get(id) : links[id];
      const target = info ? n.graph.getNodeById(info.target_id) : null;
      if (target) out.push({ node: target, input: target.inputs?.[info.target_slot] ?? null });
    }
    return out;
  }
  return (n.getOutputNodes?.(slot) ?? []).map((t) => ({ node: t, input: null }));
}

/** "positive"/"negative" when a CONDITIONING output of `node` feeds an input of that name, else null. */
function conditioningRole(node) {
  const seen = new Set();
  const walk = (n) => {
    if (!n || seen.has(n) || seen.size > MAX_NODES) return null;
    seen.add(n);
    for (const [slot, output] of (n.outputs ?? []).entries()) {
      if (output.type !== "CONDITIONING" && n.type !== "Reroute") continue;
      for (const { node: target, input } of targetsOf(n, slot)) {
        if (input && /positive/i.test(input.name)) return "positive";
        if (input && /negative/i.test(input.name)) return "negative";
        const deeper = walk(target);
        if (deeper) return deeper;
      }
    }
    return null;
  };
  return walk(node);
}

/**
 * The prompt fields fed by `node`'s CLIP output: `[{node, widget, role}]` for every node downstream along CLIP
 * links (through other CLIP-passing nodes and reroutes) that has a text widget, positive prompts first. `role`
 * is "positive", "negative" or null (from where its CONDITIONING goes).
 */
export function findPromptTargets(node) {
  const found = [];
  const seen = new Set([node]);
  const queue = [node];
  while (queue.length && seen.size <= MAX_NODES) {
    const n = queue.shift();
    for (const [slot, output] of (n.outputs ?? []).entries()) {
      if (output.type !== "CLIP" && n.type !== "Reroute") continue;
      for (const { node: target } of targetsOf(n, slot)) {
        if (seen.has(target)) continue;
        seen.add(target);
        const widget = textWidgetName(target);
        if (widget) found.push({ node: target, widget, role: conditioningRole(target) });
        else queue.push(target);
      }
    }
  }
  const rank = (role) => (role === "positive" ? 0 : role === "negative" ? 2 : 1);
  return found.sort((a, b) => rank(a.role) - rank(b.role));
}
