// The LensDashboard front-end: builds the DOM from the model's state and keeps the two in sync.
// Everything shown is derived from model traits, so re-rendering the widget (re-display, page reload,
// VS Code re-run, the standalone HTML export) shows the last result again.
//
// The option controls are drawn from `option_specs`, which Python writes from the one definition of every lens
// option (difflens_widgets/lens_options.py); the inputs are checked by Python alone and its verdict arrives as
// `input_error`, so the browser can never disagree with Lens.run.

import { EL, ImageUrls } from "./common.js";
import { colour, drawHeatmap } from "./heatmap.js";
import { drawEmergence } from "./emergence.js";

const QUESTIONS = [["objects", "obj"], ["colors", "col"], ["both", "bind"], ["relation", "rel"]];

function optionControl(spec, model, save) {
  let node;
  if (spec.kind === "flag") {
    node = EL("input", { type: "checkbox" });
    node.checked = Boolean(model.get(spec.name));
    node.addEventListener("change", () => save(spec.name, node.checked));
  } else if (spec.kind === "choice" || spec.name === "encoder") {
    const choices = spec.name === "encoder" ? (model.get("model_info") || {}).encoders || [] : spec.choices;
    node = EL("select", {}, choices.map((c) => EL("option", { value: c, text: c })));
    node.value = model.get(spec.name) || choices[0] || "";
    node.addEventListener("change", () => save(spec.name, node.value));
  } else {
    const number = spec.kind === "int" || spec.kind === "float";
    node = EL("input", number ? { type: "number", step: spec.kind === "int" ? "1" : "0.5" } : { type: "text" });
    if (spec.name === "layers") node.placeholder = "all";
    node.value = model.get(spec.name);
    node.addEventListener("change", () => save(spec.name, number ? Number(node.value) : node.value));
  }
  node.dataset.field = spec.name;
  node.title = spec.help;
  return node;
}

function readValue(node) {
  if (node.type === "checkbox") return node.checked;
  if (node.type === "number") return Number(node.value);
  return node.value;
}

export function createDashboard({ model, el }) {
  const urls = new ImageUrls();
  const save = (key, value) => { model.set(key, value); model.save_changes(); };
  const info = () => model.get("model_info") || {};
  const frozen = () => Boolean(info().frozen);

  // ---- controls, from the option specs (a control appears only where the model has what it needs)
  const prompt = EL("input", { type: "text", class: "dl-prompt", placeholder: "prompt", "data-field": "prompt",
    title: "what the model should draw" });
  prompt.value = model.get("prompt");
  prompt.addEventListener("change", () => save("prompt", prompt.value));
  const fields = { prompt };
  const controls = EL("div", { class: "dl-controls" });
  const optionsRow = EL("div", { class: "dl-options" });
  function buildOptions() {
    for (const key of Object.keys(fields)) if (key !== "prompt") delete fields[key];
    const wanted = (spec) => !spec.needs || info()[spec.needs];
    optionsRow.replaceChildren(...(model.get("option_specs") || []).filter(wanted).map((spec) => {
      fields[spec.name] = optionControl(spec, model, save);
      return EL("label", { title: spec.help, class: `dl-opt dl-opt-${spec.kind}` },
        [EL("span", { text: spec.label }), fields[spec.name]]);
    }));
  }
  const runButton = EL("button", { class: "dl-run", text: "Run", title: "lens the prompt at every chosen layer" });
  const cancelButton = EL("button", { class: "dl-cancel", text: "Cancel",
    title: "stop the run; the last complete result stays on screen" });
  const present = EL("input", { type: "checkbox", "data-field": "presentation" });
  const verdictsBox = EL("input", { type: "checkbox", "data-field": "show_verdicts" });
  const toggles = EL("div", { class: "dl-toggles" }, [
    EL("label", { title: "large type and images, for a projector" }, [present, " presentation size"]),
    EL("label", { class: "dl-verdict-toggle",
      title: "the toy model's annotator on every image: objects, colours, binding, relation (✓ right, ✗ wrong)" },
    [verdictsBox, " annotator verdicts"]),
  ]);
  present.addEventListener("change", () => save("presentation", present.checked));
  verdictsBox.addEventListener("change", () => save("show_verdicts", verdictsBox.checked));
  controls.append(EL("label", { class: "dl-prompt-label", title: "what the model should draw" },
    [EL("span", { text: "Prompt" }), prompt]), runButton, cancelButton);

  const progress = EL("progress", { class: "dl-progress", max: "1", value: "0" });
  const status = EL("span", { class: "dl-status" });
  const message = EL("div", { class: "dl-message", role: "alert" });
  const runLine = EL("div", { class: "dl-runinfo" });
  const legend = EL("div", { class: "dl-legend" });
  const slider = EL("input", { type: "range", class: "dl-slider", min: "0", max: "0", step: "1", value: "0",
    "aria-label": "layer", title: "text-encoder layer shown large (← → keys too)" });
  const sliderLabel = EL("span", { class: "dl-slider-label" });
  const large = EL("div", { class: "dl-large" });
  const curve = EL("div", { class: "dl-emergence" });
  const strips = EL("div", { class: "dl-strips" });
  const scales = EL("div", { class: "dl-scales" });
  const heatmaps = EL("div", { class: "dl-heatmaps" });
  const exportsBar = EL("div", { class: "dl-exports" }, [["grid", "PNG of every image, labelled"],
    ["gif", "an animation across layers"], ["html", "this dashboard in one file: slider and heatmaps, no kernel"]]
    .map(([kind, help]) => EL("button", { "data-export": kind, text: `Export ${kind}`, title: help,
      onclick: () => model.send({ action: "export", kind }) })));

  const root = EL("div", { class: "dl-root", tabindex: "0" }, [
    controls, optionsRow, toggles,
    EL("div", { class: "dl-statusbar" }, [progress, status]),
    message, runLine, legend,
    EL("div", { class: "dl-sliderbar" }, [sliderLabel, slider]),
    EL("div", { class: "dl-large-row" }, [large, curve]),
    EL("div", { class: "dl-axis-x", text: "text-encoder layer →" }),
    strips, scales, heatmaps, exportsBar,
  ]);
  el.replaceChildren(root);
  // JupyterLab / Notebook 7 (Lumino) match shortcuts against the focused element itself, so every focusable part of
  // the widget says it wants its keys (else the slider's arrow keys move between notebook cells instead).
  const suppressShortcuts = () => {
    for (const node of [root, ...root.querySelectorAll("input, button, select")]) {
      node.setAttribute("data-lm-suppress-shortcuts", "true");
    }
  };

  // ---- helpers
  const layers = () => model.get("run_layers") || [];
  const seeds = () => model.get("run_seeds") || [];
  const panels = () => (model.get("panels") || []).length ? model.get("panels") : [{ key: "lens", label: "lens" }];
  const running = () => model.get("status") === "running";
  const selected = () => model.get("selected_layer");
  const select = (layer) => { if (layers().includes(layer)) save("selected_layer", layer); };
  const ownLayer = () => (model.get("run_info") || {}).own_layer ?? info().own_layer ?? info().num_layers;

  runButton.addEventListener("click", () => {
    for (const [key, node] of Object.entries(fields)) {
      const value = readValue(node);
      if (model.get(key) !== value) model.set(key, value);
    }
    model.save_changes();
    model.send({ action: "run" }); // Python checks the inputs; a refusal comes back as status "invalid"
  });
  cancelButton.addEventListener("click", () => model.send({ action: "cancel" }));
  slider.addEventListener("input", () => select(layers()[Number(slider.value)]));
  root.addEventListener("keydown", (event) => {
    // Arrows move the layer, on the slider too: handled here (not natively) and kept from the host page, since
    // JupyterLab's notebook shortcuts otherwise swallow them. Text fields and menus keep their arrows.
    const target = event.target;
    if ((target.tagName === "INPUT" && target !== slider && target.type !== "checkbox") || target.tagName === "SELECT") return;
    const index = layers().indexOf(selected());
    if (event.key === "ArrowRight" || event.key === "ArrowUp") select(layers()[Math.min(layers().length - 1, index + 1)]);
    else if (event.key === "ArrowLeft" || event.key === "ArrowDown") select(layers()[Math.max(0, index - 1)]);
    else return;
    event.preventDefault();
    event.stopPropagation();
  });

  // ---- renderers
  function renderStatus() {
    const state = model.get("status");
    progress.value = model.get("progress");
    progress.hidden = state !== "running";
    status.textContent = state === "running" ? `running… ${Math.round(100 * model.get("progress"))}%` : state;
    status.dataset.state = state;
    cancelButton.disabled = !running();
    const inputError = model.get("input_error");
    if (inputError && state !== "running") {
      message.textContent = inputError;
      message.dataset.kind = "invalid";
    } else {
      message.textContent = model.get("message");
      message.dataset.kind = state === "error" ? "error" : state === "invalid" ? "invalid" : "info";
    }
    controls.hidden = optionsRow.hidden = Boolean(info().browse); // a sweep's stored images: nothing to set
    if (frozen()) { // the standalone HTML export or a sweep: nothing can run, so nothing offers to
      for (const node of [...Object.values(fields), present]) node.disabled = node !== present;
      for (const node of [runButton, cancelButton, exportsBar]) node.hidden = true;
    }
  }

  function renderInfo() {
    const run = model.get("run_info") || {};
    const i = info();
    root.classList.toggle("dl-present", Boolean(model.get("presentation")));
    present.checked = Boolean(model.get("presentation"));
    verdictsBox.checked = Boolean(model.get("show_verdicts"));
    toggles.querySelector(".dl-verdict-toggle").hidden = !i.annotator;
    if (!run.prompt) { runLine.textContent = ""; legend.textContent = ""; return; }
    const list = layers();
    const extras = Object.entries(run.options || {}).map(([k, v]) => `${k} ${Array.isArray(v) ? v.join(",") : v}`);
    runLine.textContent = [
      `“${run.prompt}”`, run.model, `encoder ${run.encoder}` + (run.text_from ? ` of ${run.text_from}` : ""),
      list.length ? `layers ${list.join(",")} of 0..${run.num_layers}` : "",
      `final norm ${run.final_norm ? "on" : "off"}`, `${run.steps} steps`, `guidance ${run.guidance}`,
      run.compare && run.compare !== "none" ? `compare: ${run.compare}` : "", ...extras,
    ].filter(Boolean).join(" · ");
    legend.textContent = "Each column: the image the model draws when it reads the prompt only up to that " +
      `text-encoder layer; layer ${ownLayer()} = the model's normal image. Each row: one seed (the same starting ` +
      "noise along the row)" + (panels().length > 1 ? ", one row per panel: " + panels().map((p) => p.label).join(", ") : "") + ".";
  }

  // While running, a cell shows its newest preview (the predicted clean image at a denoising step); frames marked
  // "preview" are what a Cancel left when no image had finished. Either way the caption says which step it is.
  const previewSteps = new Map();
  const frameSteps = new Map();
  const kindOf = (f) => f.kind || "lens";
  function setPreviews() {
    const previews = model.get("previews") || [];
    previewSteps.clear();
    for (const p of previews) previewSteps.set(`${kindOf(p)}:${p.layer}:${p.seed}`, `step ${p.step}/${p.steps}`);
    urls.set("preview", previews.map((p) => ({ ...p, layer: `${kindOf(p)}/${p.layer}` })));
  }
  function setFrames() {
    const frames = model.get("frames") || [];
    frameSteps.clear();
    for (const f of frames) if (f.preview) frameSteps.set(`${kindOf(f)}:${f.layer}:${f.seed}`, `preview, step ${f.step}/${f.steps}`);
    urls.set("frame", frames.map((f) => ({ ...f, layer: `${kindOf(f)}/${f.layer}` })));
  }
  function imageOf(kind, layer, seed) {
    const final = urls.get("frame", `${kind}/${layer}`, seed);
    if (running()) return urls.get("preview", `${kind}/${layer}`, seed) || final;
    return final;
  }
  function stepOf(kind, layer, seed) {
    const key = `${kind}:${layer}:${seed}`;
    if (running() && urls.get("preview", `${kind}/${layer}`, seed)) return previewSteps.get(key) || "";
    return frameSteps.get(key) || "";
  }
  const verdictMap = new Map();
  function setVerdicts() {
    verdictMap.clear();
    for (const v of model.get("verdicts") || []) verdictMap.set(`${v.kind}:${v.layer}:${v.seed}`, v.checks);
  }
  function badge(kind, layer, seed) {
    const checks = verdictMap.get(`${kind}:${layer}:${seed}`);
    if (!model.get("show_verdicts") || !checks) return null;
    return EL("div", { class: "dl-verdict" }, QUESTIONS.filter(([q]) => q in checks).map(([q, short]) =>
      EL("span", { class: checks[q] ? "dl-ok" : "dl-bad", title: `${q}: ${checks[q] ? "right" : "wrong"}`,
        text: `${short}${checks[q] ? "✓" : "✗"}` })));
  }
  function figure(cls, kind, layer, seed, caption, extra = {}) {
    const src = imageOf(kind, layer, seed);
    return EL("figure", { class: cls, "data-layer": String(layer), "data-seed": String(seed), "data-kind": kind, ...extra },
      [EL("div", { class: "dl-img-box" }, [src ? EL("img", { src, alt: `${kind} layer ${layer} seed ${seed}` })
        : EL("div", { class: "dl-empty" }), badge(kind, layer, seed)].filter(Boolean)),
      EL("figcaption", { text: caption })]);
  }

  function renderStrips() {
    const several = panels().length > 1;
    const rows = [];
    for (const seed of seeds()) {
      for (const panel of panels()) {
        const cells = layers().map((layer) => {
          const text = [`L${layer}`, layer === ownLayer() ? "normal" : "", stepOf(panel.key, layer, seed)]
            .filter(Boolean).join(" · ");
          return figure("dl-thumb" + (layer === selected() ? " dl-selected" : ""), panel.key, layer, seed, text,
            { onclick: () => select(layer), title: `layer ${layer}, seed ${seed}${several ? ", " + panel.label : ""}` });
        });
        rows.push(EL("div", { class: "dl-strip" + (several && panel === panels()[0] ? " dl-strip-first" : ""),
          "data-kind": panel.key, "data-seed": String(seed) },
        [EL("span", { class: "dl-row-label", text: `seed ${seed}${several ? " · " + panel.label : ""}` }), ...cells]));
      }
    }
    strips.replaceChildren(EL("div", { class: "dl-axis-y", text: several ? "seed · panel ↓" : "seed ↓" }), ...rows);
    scales.replaceChildren(...panels().filter((p) => p.scale).map((p) => {
      const bar = EL("div", { class: "dl-hm-bar" });
      bar.style.background = `linear-gradient(to right, ${[0, 0.25, 0.5, 0.75, 1].map((t) => colour(t, 0, 1)).join(", ")})`;
      return EL("div", { class: "dl-hm-scale", "data-scale": p.key }, [EL("span", { text: p.label }),
        EL("span", { class: "dl-hm-min", text: String(p.scale.min) }), bar,
        EL("span", { class: "dl-hm-max", text: String(p.scale.max) }), EL("span", { class: "dl-hm-scale-title", text: p.scale.title })]);
    }));
  }

  function renderLarge() {
    const list = layers();
    slider.max = String(Math.max(0, list.length - 1));
    slider.value = String(Math.max(0, list.indexOf(selected())));
    slider.disabled = !list.length;
    const own = selected() === ownLayer() ? " (the model's normal image)" : selected() === 0 ? " (token embeddings)" : "";
    sliderLabel.textContent = list.length ? `layer ${selected()} of 0..${(model.get("run_info") || {}).num_layers ?? info().num_layers}${own}` : "no result yet";
    const several = panels().length > 1;
    large.replaceChildren(...seeds().map((seed) => EL("div", { class: "dl-large-pair" }, panels().map((panel) =>
      figure("dl-large-img", panel.key, selected(), seed, [`${several ? panel.label + ", " : ""}layer ${selected()}, seed ${seed}`,
        stepOf(panel.key, selected(), seed)].filter(Boolean).join(" — "))))));
  }

  function renderCurve() {
    const data = model.get("emergence") || {};
    curve.hidden = !data.curves;
    if (data.curves) drawEmergence(curve, data, selected());
  }

  function renderHeatmaps() {
    heatmaps.replaceChildren();
    for (const [name, spec] of Object.entries(model.get("heatmaps") || {})) {
      const div = EL("div", { class: "dl-heatmap", "data-heatmap": name });
      heatmaps.append(div);
      drawHeatmap(div, spec, { selected: selected(), onSelect: (layer) => select(Number(layer)) });
    }
  }

  function renderImages() { renderLarge(); renderStrips(); renderCurve(); }
  function renderAll() { renderStatus(); renderInfo(); renderImages(); }

  buildOptions();
  suppressShortcuts();
  setFrames();
  setPreviews();
  setVerdicts();
  renderAll();
  renderHeatmaps();

  const handlers = {
    "change:status": renderAll,
    "change:progress": renderStatus,
    "change:message": renderStatus,
    "change:input_error": renderStatus,
    "change:frames": () => { setFrames(); renderAll(); },
    "change:previews": () => { setPreviews(); renderImages(); },
    "change:panels": renderAll,
    "change:run_layers": renderAll,
    "change:run_seeds": renderAll,
    "change:run_info": renderAll,
    "change:verdicts": () => { setVerdicts(); renderImages(); },
    "change:emergence": renderCurve,
    "change:show_verdicts": () => { renderInfo(); renderImages(); },
    "change:presentation": renderInfo,
    "change:selected_layer": () => { renderImages(); renderHeatmaps(); },
    "change:heatmaps": renderHeatmaps,
    "change:model_info": () => { buildOptions(); suppressShortcuts(); renderAll(); },
    "change:option_specs": () => { buildOptions(); suppressShortcuts(); },
  };
  for (const spec of model.get("option_specs") || []) {
    handlers[`change:${spec.name}`] = () => {
      const node = fields[spec.name];
      if (!node || document.activeElement === node) return;
      if (node.type === "checkbox") node.checked = Boolean(model.get(spec.name));
      else node.value = model.get(spec.name);
    };
  }
  handlers["change:prompt"] = () => { if (document.activeElement !== prompt) prompt.value = model.get("prompt"); };
  const onCustom = (msg, buffers) => {
    if (!msg || msg.action !== "download" || !buffers || !buffers.length) return;
    const data = buffers[0];
    const bytes = data instanceof DataView ? new Uint8Array(data.buffer, data.byteOffset, data.byteLength) : data;
    const url = URL.createObjectURL(new Blob([bytes]));
    const a = EL("a", { href: url, download: msg.name });
    root.append(a); a.click(); a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10_000);
  };
  for (const [event, fn] of Object.entries(handlers)) model.on(event, fn);
  model.on("msg:custom", onCustom);

  return () => {
    for (const [event, fn] of Object.entries(handlers)) model.off(event, fn);
    model.off("msg:custom", onCustom);
    urls.clear();
  };
}
