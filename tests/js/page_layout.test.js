// Unit tests of web/lib/layout.js (how far a node may grow, where the block panel goes) and
// web/lib/widget_values.js (old saved values of seeds that lost their "control after generate").
import assert from "node:assert/strict";
import { test } from "node:test";

import { grownHeight, overlaps, placePanel, roomBelow } from "../../web/lib/layout.js";
import { CONTROL_VALUES, dropSeedControls, seedsWithoutControl } from "../../web/lib/widget_values.js";

test("overlaps: touching edges do not overlap", () => {
  assert.equal(overlaps({ x: 0, y: 0, w: 10, h: 10 }, { x: 10, y: 0, w: 5, h: 5 }), false);
  assert.equal(overlaps({ x: 0, y: 0, w: 10, h: 10 }, { x: 9, y: 9, w: 5, h: 5 }), true);
});

test("roomBelow: up to the nearest node below that shares columns, minus a gap", () => {
  const node = { x: 100, y: 100, w: 200, h: 150 };
  const below = { x: 250, y: 400, w: 100, h: 100 }; // overlaps horizontally, 150 below the bottom
  const further = { x: 120, y: 600, w: 50, h: 50 };
  const aside = { x: 400, y: 260, w: 100, h: 100 }; // beside, not below
  const covered = { x: 150, y: 200, w: 50, h: 50 }; // already under the node: not a limit
  assert.equal(roomBelow(node, [below, further, aside, covered], 10), 400 - 100 - 10);
  assert.equal(roomBelow(node, [aside]), Infinity);
});

test("grownHeight: never shrinks, always fits the widgets, grows into the room only", () => {
  assert.equal(grownHeight({ current: 200, needed: 150, wanted: 400, room: 300 }), 300);
  assert.equal(grownHeight({ current: 200, needed: 150, wanted: 250, room: 1000 }), 250);
  assert.equal(grownHeight({ current: 350, needed: 150, wanted: 250, room: 1000 }), 350);
  assert.equal(grownHeight({ current: 100, needed: 180, wanted: 400, room: 120 }), 180); // the widgets win
});

test("placePanel: top right unless that covers the Run button, then below it", () => {
  const viewport = { w: 1400, h: 900 };
  assert.deepEqual(placePanel(viewport, { w: 640, h: 500 }, []), { x: 744, y: 16, w: 640, h: 500 });
  const run = { x: 1060, y: 45, w: 320, h: 40 };
  const box = placePanel(viewport, { w: 640, h: 500 }, [run]);
  assert.equal(overlaps(box, run), false);
  assert.deepEqual([box.x, box.y], [744, 93]);
  // a tall panel is shortened to the viewport
  const tall = placePanel(viewport, { w: 640, h: 2000 }, [run]);
  assert.equal(tall.y + tall.h, 900 - 16);
  // a bar too low to go under: the panel goes to its left
  const low = { x: 1000, y: 700, w: 380, h: 150 };
  const side = placePanel({ w: 1400, h: 900 }, { w: 400, h: 800 }, [low]);
  assert.equal(overlaps(side, low), false);
});

test("dropSeedControls removes the saved control value after each seed of an old workflow", () => {
  const names = ["method", "rank", "energy", "density", "seed", "normalization", "normalization_target", "name"];
  const old = ["dare", 0, 0, 0.5, 42, "randomize", "none", 1, "merged"];
  assert.deepEqual(dropSeedControls(names, ["seed"], old), ["dare", 0, 0, 0.5, 42, "none", 1, "merged"]);
  const fixed = [...old];
  fixed[5] = "fixed";
  assert.deepEqual(dropSeedControls(names, ["seed"], fixed)[5], "none");
  // a new workflow, or values that do not look like the old layout, stay as they are
  const current = ["dare", 0, 0, 0.5, 42, "none", 1, "merged"];
  assert.equal(dropSeedControls(names, ["seed"], current), current);
  const odd = ["dare", 0, 0, 0.5, 42, "sum", "none", 1, "merged"];
  assert.equal(dropSeedControls(names, ["seed"], odd), odd);
  assert.equal(dropSeedControls(names, [], old), old);
  assert.ok(CONTROL_VALUES.includes("increment"));
});

test("seedsWithoutControl reads the node definition", () => {
  const nodeData = { input: { required: {
    seed: ["INT", { default: 0, control_after_generate: false }],
    noise_seed: ["INT", { default: 0 }],
    model: ["MODEL"],
  }, optional: { other: ["INT", { control_after_generate: true }] } } };
  assert.deepEqual(seedsWithoutControl(nodeData), ["seed"]);
  assert.deepEqual(seedsWithoutControl({}), []);
});
