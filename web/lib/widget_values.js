// Saved workflows keep widget values by position (`widgets_values`), so a widget that goes away shifts every
// value after it. LoRA Lab's Merge Stack and Train LoRA had an input named `seed`, to which the page added a
// "control after generate" widget (saved right after the seed, usually as "randomize"); they now declare
// `control_after_generate: false` and have no such widget. `dropSeedControls` removes those saved control
// values so old workflows load with every value in its widget. Pure functions, no DOM.

export const CONTROL_VALUES = Object.freeze(["fixed", "increment", "decrement", "randomize", "increment-wrap"]);

/**
 * `values` (a node's saved `widgets_values`) without the control values that followed the widgets named in
 * `seedNames`, when the list has exactly one extra value per such seed and each extra value is a control
 * mode; otherwise `values` unchanged. `widgetNames` are the node's saved widgets now, in order.
 */
export function dropSeedControls(widgetNames, seedNames, values) {
  if (!Array.isArray(values)) return values;
  const seeds = widgetNames.filter((n) => seedNames.includes(n));
  if (!seeds.length || values.length !== widgetNames.length + seeds.length) return values;
  const out = [];
  let j = 0;
  for (const name of widgetNames) {
    out.push(values[j]);
    j += 1;
    if (seedNames.includes(name)) {
      if (!CONTROL_VALUES.includes(values[j])) return values;
      j += 1;
    }
  }
  return out;
}

/** Names of a node definition's inputs that declare `control_after_generate: false` (from `/object_info`). */
export function seedsWithoutControl(nodeData) {
  const names = [];
  for (const group of ["required", "optional"]) {
    for (const [name, spec] of Object.entries(nodeData?.input?.[group] ?? {})) {
      if (Array.isArray(spec) && spec[1]?.control_after_generate === false) names.push(name);
    }
  }
  return names;
}
