import { test } from "node:test";
import assert from "node:assert/strict";
import { setupDom, FakeModel, frames } from "./helpers.js";
import widget from "../src/widget.js";

setupDom();

test("the sweep view: family and prompt menus over stored images, no run controls", () => {
  const model = new FakeModel({
    view: "sweep", status: "done", run_layers: [0, 4, 8], run_seeds: [0], selected_layer: 8,
    model_info: { num_layers: 8, frozen: true, browse: true, annotator: true },
    frames: frames([0, 4, 8], [0]).map((f) => ({ ...f, kind: "lens" })), sweep_selected: 1,
    sweep_entries: [{ id: 0, prompt: "a red circle", family: "colored" }, { id: 1, prompt: "a red circle above a blue star", family: "relation" },
      { id: 2, prompt: "a blue star", family: "colored" }],
  });
  const el = document.createElement("div");
  document.body.append(el);
  const cleanup = widget.render({ model, el });
  const family = el.querySelector('[data-field="sweep_family"]');
  const prompt = el.querySelector('[data-field="sweep_selected"]');
  assert.deepEqual([...family.options].map((o) => o.value), ["(all families)", "colored", "relation"]);
  assert.equal(prompt.value, "1");
  assert.equal(el.querySelectorAll(".dl-thumb img").length, 3);
  assert.equal(el.querySelector(".dl-controls").hidden, true);
  assert.equal(el.querySelector(".dl-options").hidden, true);
  family.value = "colored";
  family.dispatchEvent(new Event("change", { bubbles: true }));
  assert.deepEqual([...prompt.options].map((o) => o.textContent), ["a red circle", "a blue star"]);
  assert.equal(model.get("sweep_selected"), 0); // the family's first prompt is shown
  prompt.value = "2";
  prompt.dispatchEvent(new Event("change", { bubbles: true }));
  assert.equal(model.get("sweep_selected"), 2);
  assert.match(el.querySelector(".dl-sweep-count").textContent, /2 of 3 prompts/);
  cleanup();
});
