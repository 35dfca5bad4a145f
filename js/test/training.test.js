import { test } from "node:test";
import assert from "node:assert/strict";
import { setupDom, FakeModel } from "./helpers.js";
import { createTrainingView } from "../src/training.js";

setupDom();

const png = () => new DataView(new Uint8Array([137, 80, 78, 71]).buffer);
function state(steps = [0, 50, 100], layers = [0, 4, 8]) {
  const frames = [];
  for (const step of steps) for (const layer of layers) frames.push({ step, layer, png: png() });
  return { view: "training", prompt: "a xon triangle", steps, layers, frames, selected_step: steps.at(-1),
    similarity: { "xon~triangle": { steps, layers, values: layers.map(() => steps.map(() => 0.5)) } } };
}
function mount(s = state()) {
  const model = new FakeModel(s);
  const el = document.createElement("div");
  document.body.append(el);
  const cleanup = createTrainingView({ model, el });
  return { model, el, cleanup };
}

test("a grid of layers × training steps and a filmstrip of the selected step", () => {
  const { el } = mount();
  assert.equal(el.querySelectorAll(".dl-train-grid .dl-thumb img").length, 9);
  assert.equal(el.querySelectorAll(".dl-train-row[data-layer]").length, 3);
  assert.equal(el.querySelectorAll(".dl-train-film img").length, 3);
  assert.match(el.querySelector(".dl-train-film img").alt, /training step 100/);
  assert.equal(el.querySelector(".dl-step-slider").max, "2");
  assert.equal(el.querySelector(".dl-step-slider").value, "2");
  assert.equal(el.querySelectorAll(".dl-thumb.dl-selected").length, 3);
  assert.match(el.querySelector(".dl-slider-label").textContent, /training step 100 \(3 of 3\)/);
});

test("the slider and a click on a cell select a step", () => {
  const { model, el } = mount();
  const slider = el.querySelector(".dl-step-slider");
  slider.value = "0";
  slider.dispatchEvent(new Event("input"));
  assert.equal(model.get("selected_step"), 0);
  assert.match(el.querySelector(".dl-train-film img").alt, /training step 0/);
  el.querySelector('.dl-thumb[data-step="50"][data-layer="4"]').click();
  assert.equal(model.get("selected_step"), 50);
  assert.equal(el.querySelector(".dl-step-slider").value, "1");
});

test("new records arriving from Python extend the grid live", () => {
  const { model, el } = mount(state([0], [0, 4, 8]));
  assert.equal(el.querySelectorAll(".dl-train-grid .dl-thumb").length, 3);
  const next = state([0, 50], [0, 4, 8]);
  model.set("steps", next.steps);
  model.set("frames", next.frames);
  assert.equal(el.querySelectorAll(".dl-train-grid .dl-thumb img").length, 6);
});

test("similarity heatmaps: steps across, layers down, the selected step marked, a click selects it", () => {
  const { model, el, cleanup } = mount();
  const map = el.querySelector('[data-heatmap="xon~triangle"]');
  assert.deepEqual([...map.querySelectorAll(".dl-hm-xlabel")].map((d) => d.textContent), ["0", "50", "100"]);
  assert.equal(map.querySelectorAll(".dl-hm-cell").length, 9);
  assert.deepEqual([...map.querySelectorAll(".dl-hm-cell.dl-hm-marked")].map((c) => c.dataset.x), ["100", "100", "100"]);
  map.querySelector('.dl-hm-cell[data-x="50"][data-y="4"]').click();
  assert.equal(model.get("selected_step"), 50);
  cleanup();
});

test("an empty tracker renders without errors", () => {
  const { el } = mount({ view: "training", prompt: "p", steps: [], layers: [], frames: [], selected_step: 0, similarity: {} });
  assert.match(el.querySelector(".dl-slider-label").textContent, /no record yet/);
});
