import { test } from "node:test";
import assert from "node:assert/strict";
import { setupDom, FakeModel, frames } from "./helpers.js";
import { createDashboard, parseLayers, parseSeeds, validate } from "../src/dashboard.js";

setupDom();

function mount(state = {}) {
  const model = new FakeModel(state);
  const el = document.createElement("div");
  document.body.append(el);
  const cleanup = createDashboard({ model, el });
  return { model, el, cleanup };
}

const done = (layers = [0, 1, 2, 3], seeds = [0, 1]) => ({
  status: "done", run_layers: layers, run_seeds: seeds, frames: frames(layers, seeds), selected_layer: layers.at(-1),
});

test("layer parsing mirrors the Python rules", () => {
  assert.deepEqual(parseLayers("", 6).layers, [0, 1, 2, 3, 4, 5, 6]);
  assert.deepEqual(parseLayers("0:12:2", 6).layers, [0, 2, 4, 6]);
  assert.deepEqual(parseLayers("::3", 6).layers, [0, 3, 6]);
  assert.deepEqual(parseLayers("-2:", 6).layers, [5, 6]);
  assert.deepEqual(parseLayers("5,1,1", 6).layers, [1, 5]);
  assert.deepEqual(parseLayers("-1", 6).layers, [6]);
  assert.match(parseLayers("7", 6).error, /out of range; valid layers are 0\.\.6/);
  assert.match(parseLayers("10:20", 6).error, /selects no layer/);
  assert.match(parseLayers("a:b", 6).error, /start:stop/);
  assert.match(parseLayers("0:6:0", 6).error, /step cannot be 0/);
});

test("seed parsing rejects non-numbers and repeats", () => {
  assert.deepEqual(parseSeeds("0, 1,2").seeds, [0, 1, 2]);
  assert.match(parseSeeds("x").error, /not a whole number/);
  assert.match(parseSeeds("1.5").error, /not a whole number/);
  assert.match(parseSeeds("").error, /at least one seed/);
  assert.match(parseSeeds("1,1").error, /repeated/);
});

test("renders a filmstrip of every layer for every seed, and a large view", () => {
  const { el } = mount(done());
  assert.equal(el.querySelectorAll(".dl-strip").length, 2);
  assert.equal(el.querySelectorAll(".dl-thumb img").length, 8);
  assert.equal(el.querySelectorAll(".dl-large-img img").length, 2);
  assert.match(el.querySelector(".dl-large-img figcaption").textContent, /layer 3, seed 0/);
  assert.equal(el.querySelector(".dl-thumb.dl-selected").dataset.layer, "3");
  assert.equal(el.querySelector(".dl-slider").max, "3");
  assert.equal(el.querySelector(".dl-root").dataset.lmSuppressShortcuts, "true");
  assert.equal(el.querySelector(".dl-slider").dataset.lmSuppressShortcuts, "true");
});

test("the final-norm checkbox is two-way bound", () => {
  const { model, el } = mount();
  const box = el.querySelector('[data-field="final_norm"]');
  assert.equal(box.checked, true);
  box.checked = false;
  box.dispatchEvent(new Event("change", { bubbles: true }));
  assert.equal(model.get("final_norm"), false);
  model.set("final_norm", true);
  assert.equal(box.checked, true);
});

test("keyboard arrows and thumbnail clicks move the selected layer", () => {
  const { model, el } = mount(done());
  const root = el.querySelector(".dl-root");
  root.dispatchEvent(new KeyboardEvent("keydown", { key: "ArrowLeft", bubbles: true }));
  assert.equal(model.get("selected_layer"), 2);
  assert.match(el.querySelector(".dl-large-img figcaption").textContent, /layer 2/);
  root.dispatchEvent(new KeyboardEvent("keydown", { key: "ArrowRight", bubbles: true }));
  root.dispatchEvent(new KeyboardEvent("keydown", { key: "ArrowRight", bubbles: true }));
  assert.equal(model.get("selected_layer"), 3); // stays at the last layer
  el.querySelector('.dl-thumb[data-layer="1"]').dispatchEvent(new MouseEvent("click", { bubbles: true }));
  assert.equal(model.get("selected_layer"), 1);
  const slider = el.querySelector(".dl-slider");
  const key = new KeyboardEvent("keydown", { key: "ArrowRight", bubbles: true, cancelable: true });
  slider.dispatchEvent(key);
  assert.equal(model.get("selected_layer"), 2);
  assert.equal(key.defaultPrevented, true); // one step per key press, even where the host page interferes
  slider.value = "0";
  slider.dispatchEvent(new Event("input", { bubbles: true }));
  assert.equal(model.get("selected_layer"), 0);
});

test("invalid fields show an inline message and do not start a run", () => {
  const { model, el } = mount();
  const prompt = el.querySelector('[data-field="prompt"]');
  prompt.value = "   ";
  el.querySelector(".dl-run").click();
  assert.deepEqual(model.sent, []);
  assert.match(el.querySelector(".dl-message").textContent, /prompt is empty/);
  prompt.value = "a red circle";
  el.querySelector('[data-field="seeds"]').value = "one";
  el.querySelector(".dl-run").click();
  assert.match(el.querySelector(".dl-message").textContent, /not a whole number/);
  el.querySelector('[data-field="seeds"]').value = "0,1";
  el.querySelector('[data-field="layer_range"]').value = "0:99:2,";
  el.querySelector(".dl-run").click();
  assert.deepEqual(model.sent, []);
  el.querySelector('[data-field="layer_range"]').value = "12";
  el.querySelector(".dl-run").click();
  assert.match(el.querySelector(".dl-message").textContent, /valid layers are 0\.\.8/);
  el.querySelector('[data-field="layer_range"]').value = "0:9:2";
  el.querySelector(".dl-run").click();
  assert.deepEqual(model.sent, [{ action: "run" }]);
  assert.equal(model.get("seeds"), "0,1");
  assert.equal(validate(model), "");
});

test("progress, live previews and cancel while running", () => {
  const { model, el } = mount({ status: "running", progress: 0.25, run_layers: [0, 1], run_seeds: [0],
    previews: frames([0, 1], [0]) });
  assert.equal(el.querySelector(".dl-progress").hidden, false);
  assert.match(el.querySelector(".dl-status").textContent, /25%/);
  assert.equal(el.querySelectorAll(".dl-thumb img").length, 2); // previews fill the filmstrip
  assert.equal(el.querySelector(".dl-cancel").disabled, false);
  el.querySelector(".dl-cancel").click();
  assert.deepEqual(model.sent, [{ action: "cancel" }]);
  model.set("message", "cancelled: showing the layers that finished");
  model.set("status", "cancelled");
  assert.equal(el.querySelector(".dl-cancel").disabled, true);
  assert.match(el.querySelector(".dl-message").textContent, /cancelled/);
});

test("errors from a run are shown and the widget stays usable", () => {
  const { model, el } = mount(done());
  model.set("message", "RuntimeError: boom");
  model.set("status", "error");
  assert.equal(el.querySelector(".dl-message").dataset.kind, "error");
  assert.match(el.querySelector(".dl-message").textContent, /boom/);
  el.querySelector(".dl-run").click();
  assert.deepEqual(model.sent, [{ action: "run" }]);
});

test("raw vs tuned: two filmstrips, one slider, a difference toggle", () => {
  const { model, el } = mount({ ...done([0, 1], [0]), model_info: { num_layers: 8, tuned: true },
    tuned_frames: frames([0, 1], [0]) });
  assert.deepEqual([...el.querySelectorAll(".dl-strip")].map((s) => s.dataset.kind), ["raw", "tuned"]);
  assert.equal(el.querySelectorAll('.dl-large-img[data-kind="tuned"] img').length, 1);
  const toggle = el.querySelector(".dl-diff-toggle input");
  toggle.checked = true;
  toggle.dispatchEvent(new Event("change", { bubbles: true }));
  assert.equal(model.get("show_difference"), true);
  assert.match(el.querySelector('.dl-large-img[data-kind="tuned"] figcaption').textContent, /raw − tuned/);
  model.set("selected_layer", 0);
  assert.match(el.querySelector('.dl-large-img[data-kind="raw"] figcaption').textContent, /layer 0/);
});

const spec = (title, x, y, z, extra = {}) => ({ title, x, y, z, zmin: Math.min(...z.flat()), zmax: Math.max(...z.flat()),
  scale: "cos", x_title: "layer", y_title: "token", y_selectable: false, ...extra });

test("heatmaps: fitted colour scale shown, values on hover, selected layer marked, a click selects", () => {
  const heatmaps = {
    tokens: spec("tokens", [0, 1, 2, 3], ["a", "red"], [[0.5, 0.7, 0.9, 1.0], [0.6, 0.8, 0.95, 1.0]]),
    layers: spec("layers", [0, 1, 2, 3], [0, 1, 2, 3], [[1, .9, .8, .7], [.9, 1, .9, .8], [.8, .9, 1, .9], [.7, .8, .9, 1]],
      { y_title: "layer", y_selectable: true }),
  };
  const { model, el, cleanup } = mount({ ...done(), heatmaps });
  assert.deepEqual([...el.querySelectorAll(".dl-heatmap")].map((d) => d.dataset.heatmap), ["tokens", "layers"]);
  const tokens = el.querySelector('[data-heatmap="tokens"]');
  assert.equal(tokens.querySelectorAll(".dl-hm-cell").length, 8);
  assert.equal(tokens.querySelector(".dl-hm-min").textContent, "0.500");  // the data's own range, not −1..1
  assert.equal(tokens.querySelector(".dl-hm-max").textContent, "1.000");
  const low = tokens.querySelector('.dl-hm-cell[data-x="0"][data-y="a"]');
  const high = tokens.querySelector('.dl-hm-cell[data-x="3"][data-y="a"]');
  assert.notEqual(low.style.background, high.style.background);
  assert.equal(low.title, "token a, layer 0: cos 0.500");
  const marked = (root) => [...root.querySelectorAll(".dl-hm-cell.dl-hm-marked")].map((c) => c.dataset.x);
  assert.deepEqual(marked(tokens), ["3", "3"]);  // the selected (last) layer's column
  tokens.querySelector('.dl-hm-cell[data-x="1"][data-y="red"]').click();
  assert.equal(model.get("selected_layer"), 1);
  assert.deepEqual(marked(el.querySelector('[data-heatmap="tokens"]')), ["1", "1"]);
  assert.equal(el.querySelectorAll('[data-heatmap="layers"] .dl-hm-cell.dl-hm-marked').length, 7);  // row + column
  cleanup();
});

test("export buttons ask Python, and a download message saves the file", () => {
  const { model, el } = mount(done());
  el.querySelector('[data-export="gif"]').click();
  assert.deepEqual(model.sent, [{ action: "export", kind: "gif" }]);
  let clicked = null;
  const original = window.HTMLAnchorElement.prototype.click;
  window.HTMLAnchorElement.prototype.click = function () { clicked = this.getAttribute("download"); };
  model.emit("msg:custom", { action: "download", name: "lens.gif" }, [new DataView(new ArrayBuffer(4))]);
  window.HTMLAnchorElement.prototype.click = original;
  assert.equal(clicked, "lens.gif");
});

test("re-rendering the same model restores the last result", () => {
  const { model, el, cleanup } = mount(done());
  model.set("selected_layer", 1);
  cleanup();
  const again = document.createElement("div");
  createDashboard({ model, el: again });
  assert.equal(again.querySelectorAll(".dl-thumb img").length, 8);
  assert.equal(again.querySelector(".dl-thumb.dl-selected").dataset.layer, "1");
  assert.equal(el.querySelectorAll(".dl-thumb img").length, 8);
});

test("a run shows every cell at once, each preview labelled with its step, then the final images", () => {
  const { model, el, cleanup } = mount({ status: "running", run_layers: [0, 4, 8], run_seeds: [0], selected_layer: 8 });
  assert.equal(el.querySelectorAll(".dl-thumb").length, 3);  // cells exist before any image
  assert.equal(el.querySelectorAll(".dl-thumb img").length, 0);
  const png = frames([0], [0])[0].png;
  model.set("previews", [{ layer: 0, seed: 0, png, kind: "raw", step: 4, steps: 20 },
    { layer: 8, seed: 0, png, kind: "raw", step: 4, steps: 20 }]);
  assert.equal(el.querySelectorAll(".dl-thumb img").length, 2);
  assert.equal(el.querySelector('.dl-thumb[data-layer="0"] figcaption').textContent, "L0 · step 4/20");
  assert.match(el.querySelector('.dl-large-img[data-kind="raw"] figcaption').textContent, /layer 8, seed 0 — step 4\/20/);
  model.set("frames", frames([0, 4, 8], [0]));
  model.set("status", "done");
  model.set("previews", []);
  assert.equal(el.querySelectorAll(".dl-thumb img").length, 3);
  assert.equal(el.querySelector('.dl-thumb[data-layer="0"] figcaption').textContent, "L0");
  cleanup();
});

test("after a Cancel, frames kept from previews stay labelled as previews", () => {
  const png = frames([0], [0])[0].png;
  const { el, cleanup } = mount({ status: "cancelled", run_layers: [0, 4], run_seeds: [0], selected_layer: 4,
    frames: [{ layer: 0, seed: 0, png, preview: true, step: 8, steps: 20 }], message: "cancelled: showing previews" });
  assert.equal(el.querySelector('.dl-thumb[data-layer="0"] figcaption').textContent, "L0 · preview, step 8/20");
  assert.equal(el.querySelector('.dl-thumb[data-layer="4"] figcaption').textContent, "L4");
  cleanup();
});
