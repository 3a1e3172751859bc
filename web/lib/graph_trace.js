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

function stackOutputSlots(node) {
  const slots = [];
  (node.outputs ?? []).forEach((output, slot) => {
    if (output.type === "LORA_STACK") slots.push(slot);
  });
  return slots;
}

/**
 * The model file upstream of `node`: `{kind, name, node}` with kind `checkpoints` or
 * `diffusion_models`, or null. Follows MODEL inputs upstream; a node without one (a LoraLabStack row)
 * follows its LORA_STACK output downstream to the node that applies the stack, then that node's model.
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
    if (modelInputSlots(n).length) return upstream(n);
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
