// The TrainingView front-end: lens images of one prompt at every layer (rows) and every recorded training
// step (columns), a slider over the steps driving a large filmstrip, and word-pair similarity heatmaps
// (layers × steps; clicking a cell selects that step). Everything is derived from the model's traits.

import { EL, ImageUrls } from "./common.js";
import { drawHeatmap } from "./heatmap.js";

export function createTrainingView({ model, el }) {
  const urls = new ImageUrls();
  const save = (key, value) => { model.set(key, value); model.save_changes(); };
  const steps = () => model.get("steps") || [];
  const layers = () => model.get("layers") || [];
  const selectedIndex = () => Math.max(0, steps().indexOf(model.get("selected_step")));

  const title = EL("div", { class: "dl-train-title" });
  const slider = EL("input", { type: "range", class: "dl-slider dl-step-slider", min: "0", max: "0", step: "1",
    value: "0", "aria-label": "training step", "data-lm-suppress-shortcuts": "true" });
  const sliderLabel = EL("span", { class: "dl-slider-label" });
  const film = EL("div", { class: "dl-train-film" });
  const grid = EL("div", { class: "dl-train-grid" });
  const plots = EL("div", { class: "dl-heatmaps" });
  const root = EL("div", { class: "dl-root dl-training", "data-lm-suppress-shortcuts": "true" }, [
    title, EL("div", { class: "dl-slider-row" }, [slider, sliderLabel]), film, grid, plots]);
  el.append(root);

  const selectStep = (step) => { if (steps().includes(step)) save("selected_step", step); };
  slider.addEventListener("input", () => selectStep(steps()[Number(slider.value)]));
  slider.addEventListener("keydown", (e) => e.stopPropagation());

  function image(step, layer, cls) {
    const src = urls.get("train", layer, step);
    return src ? EL("img", { src, alt: `layer ${layer} at training step ${step}`, class: cls })
      : EL("div", { class: "dl-empty" });
  }

  function renderSelection() {
    const all = steps();
    const step = all[selectedIndex()];
    slider.max = String(Math.max(0, all.length - 1));
    slider.value = String(selectedIndex());
    sliderLabel.textContent = all.length ? `training step ${step} (${selectedIndex() + 1} of ${all.length})` : "no record yet";
    film.replaceChildren(...layers().map((layer) => EL("figure", { class: "dl-large-img", "data-layer": String(layer) },
      [image(step, layer), EL("figcaption", { text: `layer ${layer}` })])));
    for (const cell of grid.querySelectorAll("[data-step]")) {
      cell.classList.toggle("dl-selected", Number(cell.dataset.step) === step);
    }
  }

  function renderGrid() {
    title.textContent = `${model.get("prompt")}: lens image per layer (rows) and training step (columns)`;
    const header = EL("div", { class: "dl-train-row" }, [EL("span", { class: "dl-row-label" }),
      ...steps().map((step) => EL("span", { class: "dl-col-label", "data-step": String(step), text: String(step) }))]);
    const rows = layers().map((layer) => EL("div", { class: "dl-train-row", "data-layer": String(layer) }, [
      EL("span", { class: "dl-row-label", text: `L${layer}` }),
      ...steps().map((step) => EL("button", { class: "dl-thumb", "data-step": String(step), "data-layer": String(layer),
        title: `layer ${layer}, step ${step}`, onclick: () => selectStep(step) }, [image(step, layer)]))]));
    grid.replaceChildren(header, ...rows);
    renderSelection();
  }

  function renderPlots() {
    plots.replaceChildren();
    for (const [name, table] of Object.entries(model.get("similarity") || {})) {
      const div = EL("div", { class: "dl-heatmap", "data-heatmap": name });
      plots.append(div);
      drawHeatmap(div, {
        title: `cos(${name.replace("~", ", ")}) per layer and training step`, x: table.steps, y: table.layers,
        z: table.values, scale: "cos", x_title: "training step", y_title: "layer",
      }, { selected: model.get("selected_step"), onSelect: (step) => selectStep(Number(step)) });
    }
  }

  const setFrames = () => urls.set("train", (model.get("frames") || []).map((f) => ({ layer: f.layer, seed: f.step, png: f.png })));
  setFrames();
  renderGrid();
  renderPlots();
  const handlers = {
    "change:frames": () => { setFrames(); renderGrid(); },
    "change:steps": renderGrid,
    "change:layers": renderGrid,
    "change:selected_step": () => { renderSelection(); renderPlots(); },
    "change:similarity": renderPlots,
  };
  for (const [event, fn] of Object.entries(handlers)) model.on(event, fn);
  return () => {
    for (const [event, fn] of Object.entries(handlers)) model.off(event, fn);
    urls.clear();
  };
}
