import { test } from "node:test";
import assert from "node:assert/strict";
import { setupDom, FakeModel, frames } from "./helpers.js";
import { createDashboard } from "../src/dashboard.js";

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

test("option controls are drawn from the Python option specs, with tooltips, and shown where the model has them", () => {
  const { model, el } = mount();
  const names = [...el.querySelectorAll(".dl-options [data-field]")].map((n) => n.dataset.field);
  const specs = model.get("option_specs");
  assert.ok(specs.length >= 12);
  const shown = specs.filter((s) => !s.needs).map((s) => s.name);
  assert.deepEqual(names, shown); // other_encoders, lens_pooled and encoder need a multi-encoder model
  for (const spec of specs.filter((s) => !s.needs)) {
    const node = el.querySelector(`[data-field="${spec.name}"]`);
    assert.equal(node.title, spec.help);
    assert.ok(node.title.length > 20, spec.name);
  }
  assert.equal(el.querySelector('[data-field="tokens"]').tagName, "SELECT");
  assert.equal(el.querySelector('[data-field="per_token"]').type, "checkbox");
  for (const node of el.querySelectorAll("button, .dl-toggles label")) assert.ok(node.title, node.textContent);
  model.set("model_info", { num_layers: 32, several_encoders: true, pooled: true, encoders: ["text_encoder", "text_encoder_2"] });
  const encoder = el.querySelector('[data-field="encoder"]');
  assert.deepEqual([...encoder.options].map((o) => o.value), ["text_encoder", "text_encoder_2"]);
  encoder.value = "text_encoder_2";
  encoder.dispatchEvent(new Event("change", { bubbles: true }));
  assert.equal(model.get("encoder"), "text_encoder_2");
  assert.ok(el.querySelector('[data-field="lens_pooled"]'));
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

test("the final norm is three-way (the family's default, on, off) and two-way bound", () => {
  const { model, el } = mount({ final_norm: null, model_info: { num_layers: 8, own_final_norm: false } });
  const menu = el.querySelector('[data-field="final_norm"]');
  assert.equal(menu.value, "");
  assert.equal(menu.selectedOptions[0].textContent, "default (off)"); // what "default" means for this encoder
  menu.value = "on";
  menu.dispatchEvent(new Event("change", { bubbles: true }));
  assert.equal(model.get("final_norm"), true);
  menu.value = "";
  menu.dispatchEvent(new Event("change", { bubbles: true }));
  assert.equal(model.get("final_norm"), null);
  model.set("final_norm", false);
  assert.equal(menu.value, "off");
});

test("keyboard arrows, Home, End and thumbnail clicks move the selected layer", () => {
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
  const end = new KeyboardEvent("keydown", { key: "End", bubbles: true, cancelable: true });
  root.dispatchEvent(end);
  assert.equal(model.get("selected_layer"), 3); // the last layer, and the page does not scroll to its end
  assert.equal(end.defaultPrevented, true);
  root.dispatchEvent(new KeyboardEvent("keydown", { key: "Home", bubbles: true }));
  assert.equal(model.get("selected_layer"), 0);
});

test("Python's verdict on the inputs is shown inline; Run sends the fields first and lets Python refuse", () => {
  const { model, el } = mount();
  model.set("input_error", "layer 12 is out of range; valid layers for this model are 0..8");
  assert.equal(el.querySelector(".dl-message").dataset.kind, "invalid");
  assert.match(el.querySelector(".dl-message").textContent, /valid layers for this model are 0\.\.8/);
  el.querySelector('[data-field="seeds"]').value = "0,1";
  el.querySelector('[data-field="layers"]').value = "0:9:2";
  el.querySelector('[data-field="num_inference_steps"]').value = "12";
  el.querySelector(".dl-run").click();
  assert.deepEqual(model.sent, [{ action: "run" }]);
  assert.equal(model.get("seeds"), "0,1");
  assert.equal(model.get("layers"), "0:9:2");
  assert.equal(model.get("num_inference_steps"), 12);
  model.set("input_error", "");
  assert.equal(el.querySelector(".dl-message").textContent, "");
});

test("explains itself: axis titles, legend naming the normal layer, the run's line, presentation size", () => {
  const { model, el } = mount({ ...done([0, 3, 4, 8], [0]), run_info: { prompt: "a red circle", model: "toy",
    encoder: "text_encoder", num_layers: 8, normal_layer: 8, final_norm: true, steps: 20, guidance: 7.5, compare: "none",
    options: { skip_layers: [3] } } });
  assert.match(el.querySelector(".dl-axis-x").textContent, /layer →/);
  assert.match(el.querySelector(".dl-axis-y").textContent, /seed ↓/);
  assert.match(el.querySelector(".dl-legend").textContent, /layer 8 = the model's normal image/);
  const line = el.querySelector(".dl-runinfo").textContent;
  for (const part of ["“a red circle”", "encoder text_encoder", "layers 0,3,4,8 of 0..8", "final norm on", "20 steps", "skip_layers 3"]) {
    assert.ok(line.includes(part), part);
  }
  assert.match(el.querySelector('.dl-thumb[data-layer="8"] figcaption').textContent, /L8 · normal/);
  assert.match(el.querySelector('.dl-thumb[data-layer="3"] figcaption').textContent, /L3 · skipped/);
  assert.equal(el.querySelector(".dl-slider-label").textContent, "layer 8 of 0..8"); // a fixed-width label
  assert.match(el.querySelector(".dl-large-img figcaption").textContent, /layer 8 \(the model's normal image\)/);
  el.querySelector('[data-field="presentation"]').click();
  assert.equal(model.get("presentation"), true);
  assert.ok(el.querySelector(".dl-root").classList.contains("dl-present"));
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

const tunedState = () => ({ ...done([0, 1], [0, 1]), model_info: { num_layers: 8, tuned: true },
  panels: [{ key: "raw", label: "raw" }, { key: "tuned", label: "tuned" },
    { key: "difference", label: "|raw − tuned|", scale: { title: "|raw − tuned| (0–255)", min: 0, max: 87.5 } }],
  frames: ["raw", "tuned", "difference"].flatMap((kind) => frames([0, 1], [0, 1]).map((f) => ({ ...f, kind }))) });

test("raw vs tuned: raw, tuned and difference together, rows interleaved by seed, the difference's scale shown", () => {
  const { model, el } = mount(tunedState());
  assert.deepEqual([...el.querySelectorAll(".dl-strip")].map((s) => `${s.dataset.seed}:${s.dataset.kind}`),
    ["0:raw", "0:tuned", "0:difference", "1:raw", "1:tuned", "1:difference"]);
  assert.equal(el.querySelector('.dl-strip[data-kind="tuned"] .dl-row-label').textContent, "seed 0 · tuned");
  assert.equal(el.querySelectorAll('.dl-large-img[data-seed="0"] img').length, 3);
  assert.match(el.querySelector('.dl-large-img[data-kind="difference"] figcaption').textContent, /raw − tuned/);
  const scale = el.querySelector('[data-scale="difference"]');
  assert.equal(scale.querySelector(".dl-hm-max").textContent, "87.5");
  assert.match(scale.textContent, /0–255/);
  model.set("selected_layer", 0);
  assert.match(el.querySelector('.dl-large-img[data-kind="tuned"] figcaption').textContent, /tuned, layer 0 \(token embeddings\), seed 0/);
});

test("annotator verdicts overlay every image on demand, and the prompt's emergence curve marks the layer", () => {
  const checks = (ok) => ({ objects: true, colors: ok, both: ok, relation: false });
  const questions = [["objects", "obj"], ["colors", "col"], ["both", "bind"], ["relation", "rel"]]
    .map(([name, short]) => ({ name, short, rule: `the rule of ${name}` }));
  const { model, el } = mount({ ...done([0, 4, 8], [0]), model_info: { num_layers: 8, annotator: true, questions },
    verdicts: [0, 4, 8].map((layer) => ({ kind: "lens", layer, seed: 0, checks: checks(layer > 0) })),
    emergence: { layers: [0, 4, 8], curves: { objects: [1, 1, 1], colors: [0, 1, 1], both: [0, 1, 1], relation: [0, 0, 0] } } });
  assert.equal(el.querySelectorAll(".dl-verdict").length, 0);
  el.querySelector('[data-field="show_verdicts"]').click();
  assert.equal(model.get("show_verdicts"), true);
  const thumb = el.querySelector('.dl-thumb[data-layer="0"] .dl-verdict');
  assert.equal(thumb.textContent, "obj✓col✗bind✗rel✗");
  assert.equal(el.querySelectorAll('.dl-thumb[data-layer="8"] .dl-ok').length, 3);
  const lines = el.querySelectorAll(".dl-emergence polyline");
  assert.deepEqual([...lines].map((l) => l.dataset.question), ["objects", "colors", "both", "relation"]);
  assert.equal(lines[1].getAttribute("points").split(" ").length, 3);
  const marker = () => el.querySelector(".dl-em-selected").getAttribute("x1");
  const before = marker();
  model.set("selected_layer", 4);
  assert.notEqual(marker(), before);
});

test("per-token rows and compare rows share the seed's noise and one slider", () => {
  const { el } = mount({ ...done([0, 8], [0]), run_info: { prompt: "a red circle", num_layers: 8, normal_layer: 8 }, panels: [{ key: "lens", label: "lens" }, { key: "no_final_norm", label: "no final norm" }],
    frames: ["lens", "no_final_norm"].flatMap((kind) => frames([0, 8], [0]).map((f) => ({ ...f, kind }))) });
  assert.deepEqual([...el.querySelectorAll(".dl-row-label")].map((n) => n.textContent), ["seed 0 · lens", "seed 0 · no final norm"]);
  assert.equal(el.querySelectorAll(".dl-large-img img").length, 2);
  assert.match(el.querySelector(".dl-legend").textContent, /lens, no final norm/);
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
  model.set("previews", [{ layer: 0, seed: 0, png, kind: "lens", step: 4, steps: 20 },
    { layer: 8, seed: 0, png, kind: "lens", step: 4, steps: 20 }]);
  assert.equal(el.querySelectorAll(".dl-thumb img").length, 2);
  assert.equal(el.querySelector('.dl-thumb[data-layer="0"] figcaption').textContent, "L0 · step 4/20");
  assert.match(el.querySelector('.dl-large-img[data-kind="lens"] figcaption').textContent, /layer 8, seed 0 — step 4\/20/);
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
  assert.equal(el.querySelector('.dl-thumb[data-layer="0"] img').alt, "lens layer 0 seed 0");
  cleanup();
});

test("verdicts sit below their image, the rules are one click away, and only judged runs offer them", () => {
  const questions = [["objects", "obj"], ["relation", "rel"]].map(([name, short]) => ({ name, short, rule: `rule of ${name}` }));
  const { model, el } = mount({ ...done([0, 8], [0]), show_verdicts: true,
    model_info: { num_layers: 8, annotator: true, questions },
    verdicts: [0, 8].map((layer) => ({ kind: "lens", layer, seed: 0, checks: { objects: layer > 0, relation: false } })) });
  const thumb = el.querySelector('.dl-thumb[data-layer="8"]');
  const box = thumb.querySelector(".dl-img-box");
  assert.equal(box.querySelector(".dl-verdict"), null); // not over the image
  assert.equal(thumb.lastElementChild.className, "dl-verdict"); // below it, after the caption
  const rules = el.querySelector(".dl-rules");
  assert.equal(rules.hidden, true);
  el.querySelector(".dl-rules-button").click();
  assert.equal(rules.hidden, false);
  assert.match(rules.textContent, /rel — relation.*rule of relation/);
  model.set("verdicts", []); // e.g. per token: nothing judged, nothing offered
  assert.equal(el.querySelector(".dl-verdict-toggle").hidden, true);
});

test("the filmstrip has one column per layer and many rows make a compact large view", () => {
  const panels = [0, 1, 2, 3, 4].map((p) => ({ key: `token${p}`, label: `token ${p}` }));
  const { el } = mount({ ...done([0, 2, 4, 6, 8], [0]), panels });
  assert.equal(el.querySelector(".dl-strips").style.getPropertyValue("--dl-cols"), "5");
  assert.ok(el.querySelector(".dl-large").classList.contains("dl-many"));
});

test("a frozen page says it is a snapshot; a Run nobody answers says the kernel is missing", async () => {
  const frozen = mount({ ...done([0, 8], [0]), model_info: { num_layers: 8, frozen: true } });
  assert.equal(frozen.el.querySelector(".dl-frozen-note").hidden, false);
  const { model, el } = mount({ ...done([0, 8], [0]) });
  assert.equal(el.querySelector(".dl-frozen-note").hidden, true);
  const realTimeout = globalThis.setTimeout;
  let fire;
  globalThis.setTimeout = (fn) => { fire = fn; return 0; };
  try {
    el.querySelector(".dl-run").click();
  } finally {
    globalThis.setTimeout = realTimeout;
  }
  assert.deepEqual(model.sent.at(-1), { action: "run" });
  fire(); // no status came back from Python within the wait
  assert.match(el.querySelector(".dl-message").textContent, /not connected to one/);
});

test("where each word lands: a word's map over every image, from a chip or a token row, with its strip", () => {
  const grid = [2, 2];
  const maps = (hot) => new DataView(Uint8Array.from([0, 0, 0, 0, 255, 0, 0, 0, 0, 0, 0, hot]).buffer); // 3 tokens
  const attention_maps = { words: [{ label: "<|startoftext|>", positions: [0] }, { label: "red", positions: [1] },
    { label: "circle", positions: [2] }], grid, tokens: 3,
  frames: [0, 8].map((layer) => ({ kind: "lens", layer, seed: 0, maps: maps(layer ? 255 : 10),
    mass: [[0.1, 0.5, 0.4], [0.2, 0.3, 0.5]] })) };
  const heatmaps = { tokens: spec("tokens", [0, 8], ["<|startoftext|>", "red", "circle"], [[1, 1], [0.5, 1], [0.6, 1]]) };
  const { model, el } = mount({ ...done([0, 8], [0]), attention_maps, heatmaps });
  assert.equal(el.querySelector(".dl-attn").hidden, false);
  assert.deepEqual([...el.querySelectorAll(".dl-attn-word")].map((b) => b.textContent), ["<|startoftext|>", "red", "circle"]);
  assert.equal(el.querySelectorAll("canvas.dl-attn-overlay").length, 0); // nothing chosen: no overlay
  el.querySelector('.dl-attn-word[data-word="2"]').dispatchEvent(new Event("mouseenter"));
  const overlays = el.querySelectorAll("canvas.dl-attn-overlay");
  assert.equal(overlays.length, 3); // two thumbnails and the large view
  assert.equal(overlays[0].dataset.word, "circle");
  assert.match(el.querySelector(".dl-attn-strip").textContent, /"circle": share of attention per layer/);
  el.querySelector('.dl-attn-word[data-word="2"]').dispatchEvent(new Event("mouseleave"));
  assert.equal(el.querySelectorAll("canvas.dl-attn-overlay").length, 0);
  el.querySelectorAll('[data-heatmap="tokens"] .dl-hm-label')[1].click(); // the "red" row of the token heatmap
  assert.equal(model.get("attention_word"), 1);
  assert.equal(el.querySelector("canvas.dl-attn-overlay").dataset.word, "red");
  model.set("attention_opacity", 0.3);
  assert.equal(el.querySelector("canvas.dl-attn-overlay").style.opacity, "0.3");
});
