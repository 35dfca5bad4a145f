// The SweepView: a family menu and a prompt menu over a sweep's stored images, above the dashboard's own display
// (which shows the chosen prompt's layers and seeds, the annotator's verdicts and the family's emergence curve).
import { EL } from "./common.js";
import { createDashboard } from "./dashboard.js";

export function createSweepView({ model, el }) {
  const family = EL("select", { "data-field": "sweep_family", title: "show the prompts of one family" });
  const prompt = EL("select", { "data-field": "sweep_selected", title: "the prompt whose stored images are shown" });
  const count = EL("span", { class: "dl-sweep-count" });
  const bar = EL("div", { class: "dl-sweep-bar" }, [
    EL("label", {}, [EL("span", { text: "Family" }), family]),
    EL("label", {}, [EL("span", { text: "Prompt" }), prompt]), count,
  ]);
  const body = EL("div");
  el.replaceChildren(bar, body);
  const cleanup = createDashboard({ model, el: body });

  const entries = () => model.get("sweep_entries") || [];
  const ALL = "(all families)";
  function fillFamilies() {
    const names = [...new Set(entries().map((e) => e.family || "(none)"))].sort();
    family.closest("label").hidden = names.length === 1 && names[0] === "(none)"; // a plain list of prompts
    family.replaceChildren(...[ALL, ...names].map((n) => EL("option", { value: n, text: n })));
    const current = entries().find((e) => e.id === model.get("sweep_selected"));
    family.value = ALL;
    fillPrompts(current);
  }
  function fillPrompts(current) {
    const shown = entries().filter((e) => family.value === ALL || (e.family || "(none)") === family.value);
    prompt.replaceChildren(...shown.map((e) => EL("option", { value: String(e.id), text: e.prompt })));
    count.textContent = `${shown.length} of ${entries().length} prompts`;
    if (current && shown.includes(current)) prompt.value = String(current.id);
    else if (shown.length) choose(shown[0].id);
  }
  function choose(id) { model.set("sweep_selected", id); model.save_changes(); }
  family.addEventListener("change", () => fillPrompts(null));
  prompt.addEventListener("change", () => choose(Number(prompt.value)));
  const onSelected = () => { prompt.value = String(model.get("sweep_selected")); };
  model.on("change:sweep_selected", onSelected);
  model.on("change:sweep_entries", fillFamilies);
  fillFamilies();
  return () => {
    model.off("change:sweep_selected", onSelected);
    model.off("change:sweep_entries", fillFamilies);
    cleanup();
  };
}
