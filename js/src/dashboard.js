// The LensDashboard front-end: builds the DOM from the model's state and keeps the two in sync.
// Everything shown is derived from model traits, so re-rendering the widget (re-display, page reload,
// VS Code re-run) shows the last result again.

import { EL, ImageUrls } from "./common.js";
import { drawHeatmap } from "./heatmap.js";

// ---- validation (mirrors difflens_widgets/options.py, so bad input never starts a run) -----------------------

export function parseSeeds(text) {
  const parts = String(text).split(",").map((p) => p.trim()).filter(Boolean);
  if (!parts.length) return { error: "give at least one seed, e.g. 0 or 0,1,2" };
  const seeds = [];
  for (const part of parts) {
    if (!/^\d+$/.test(part)) return { error: `seed "${part}" is not a whole number ≥ 0` };
    seeds.push(Number(part));
  }
  if (new Set(seeds).size !== seeds.length) return { error: "a seed is repeated" };
  return { seeds };
}

export function parseLayers(text, numLayers) {
  const all = Array.from({ length: numLayers + 1 }, (_, i) => i);
  const valid = `valid layers are 0..${numLayers}`;
  const spec = String(text).trim();
  if (!spec) return { layers: all };
  if (spec.includes(":")) {
    const parts = spec.split(":");
    if (parts.length > 3 || parts.some((p) => p.trim() && !/^-?\d+$/.test(p.trim())))
      return { error: `layer range "${spec}" must look like start:stop[:step], e.g. 0:9:2; ${valid}` };
    let [start, stop, step] = parts.map((p) => (p.trim() ? Number(p) : undefined));
    step = step ?? 1;
    if (step === 0) return { error: "layer range step cannot be 0" };
    const n = all.length;
    const clamp = (v, dflt) => {
      if (v === undefined) return dflt;
      if (v < 0) v += n;
      return step > 0 ? Math.min(Math.max(v, 0), n) : Math.min(Math.max(v, -1), n - 1);
    };
    start = clamp(start, step > 0 ? 0 : n - 1);
    stop = clamp(stop, step > 0 ? n : -1);
    const layers = [];
    for (let i = start; step > 0 ? i < stop : i > stop; i += step) layers.push(all[i]);
    if (!layers.length) return { error: `layer range "${spec}" selects no layer; ${valid}` };
    return { layers: [...new Set(layers)].sort((a, b) => a - b) };
  }
  const layers = [];
  for (const part of spec.split(",").map((p) => p.trim()).filter(Boolean)) {
    if (!/^-?\d+$/.test(part)) return { error: `layer "${part}" is not a whole number; ${valid}` };
    let layer = Number(part);
    if (layer < 0) layer += numLayers + 1;
    if (layer < 0 || layer > numLayers) return { error: `layer ${part} is out of range; ${valid}` };
    layers.push(layer);
  }
  return { layers: [...new Set(layers)].sort((a, b) => a - b) };
}

export function validate(model) {
  if (!String(model.get("prompt")).trim()) return "the prompt is empty: type what the model should draw";
  const seeds = parseSeeds(model.get("seeds"));
  if (seeds.error) return seeds.error;
  const numLayers = (model.get("model_info") || {}).num_layers ?? 0;
  const layers = parseLayers(model.get("layer_range"), numLayers);
  if (layers.error) return layers.error;
  const steps = Number(model.get("steps"));
  if (!Number.isInteger(steps) || steps < 1) return "steps must be a whole number ≥ 1";
  const guidance = Number(model.get("guidance"));
  if (!Number.isFinite(guidance) || guidance < 0) return "guidance must be a number ≥ 0";
  return "";
}

// ---- images ---------------------------------------------------------------------------------------------------

function differenceInto(canvas, urlA, urlB) {
  // |raw − tuned| per pixel, amplified ×4 so small changes show.
  const ctx = canvas.getContext && canvas.getContext("2d");
  if (!ctx) return false;
  const load = (src) => new Promise((resolve, reject) => {
    const img = new Image(); img.onload = () => resolve(img); img.onerror = reject; img.src = src;
  });
  Promise.all([load(urlA), load(urlB)]).then(([a, b]) => {
    canvas.width = a.naturalWidth; canvas.height = a.naturalHeight;
    ctx.drawImage(a, 0, 0); const da = ctx.getImageData(0, 0, canvas.width, canvas.height);
    ctx.drawImage(b, 0, 0); const db = ctx.getImageData(0, 0, canvas.width, canvas.height);
    for (let i = 0; i < da.data.length; i += 4) {
      for (let c = 0; c < 3; c++) da.data[i + c] = Math.min(255, 4 * Math.abs(da.data[i + c] - db.data[i + c]));
    }
    ctx.putImageData(da, 0, 0);
  }).catch(() => {});
  return true;
}

// ---- the dashboard --------------------------------------------------------------------------------------------

export function createDashboard({ model, el }) {
  const urls = new ImageUrls();
  const save = (key, value) => { model.set(key, value); model.save_changes(); };

  const input = (key, attrs, parse = (v) => v) => {
    const node = EL("input", { ...attrs, "data-field": key });
    node.value = model.get(key);
    node.addEventListener("change", () => { save(key, parse(node.value)); showInvalid(); });
    node.addEventListener("input", () => showInvalid());
    return node;
  };
  const fields = {
    prompt: input("prompt", { type: "text", class: "dl-prompt", placeholder: "prompt" }),
    negative_prompt: input("negative_prompt", { type: "text", placeholder: "negative prompt (optional)" }),
    seeds: input("seeds", { type: "text", size: "8", title: "seeds, e.g. 0,1" }),
    steps: input("steps", { type: "number", min: "1", step: "1", title: "denoising steps" }, Number),
    guidance: input("guidance", { type: "number", min: "0", step: "0.5", title: "guidance scale" }, Number),
    layer_range: input("layer_range", { type: "text", size: "8", placeholder: "all", title: "layers, e.g. 0:9:2" }),
  };
  const label = (text, node) => EL("label", {}, [EL("span", { text }), node]);
  const finalNorm = EL("input", { type: "checkbox", "data-field": "final_norm",
    title: "off = the paper's ablation: condition on the raw hidden state" });
  finalNorm.checked = model.get("final_norm");
  finalNorm.addEventListener("change", () => save("final_norm", finalNorm.checked));
  const runButton = EL("button", { class: "dl-run", text: "Run" });
  const cancelButton = EL("button", { class: "dl-cancel", text: "Cancel" });
  const progress = EL("progress", { class: "dl-progress", max: "1", value: "0" });
  const status = EL("span", { class: "dl-status" });
  const message = EL("div", { class: "dl-message", role: "alert" });
  const slider = EL("input", { type: "range", class: "dl-slider", min: "0", max: "0", step: "1", value: "0",
    "aria-label": "layer" });
  const sliderLabel = EL("span", { class: "dl-slider-label" });
  const diffToggle = EL("label", { class: "dl-diff-toggle" }, [EL("input", { type: "checkbox" }), " difference"]);
  const large = EL("div", { class: "dl-large" });
  const strips = EL("div", { class: "dl-strips" });
  const heatmaps = EL("div", { class: "dl-heatmaps" });
  const exportsBar = EL("div", { class: "dl-exports" }, ["grid", "gif", "html"].map((kind) =>
    EL("button", { "data-export": kind, text: `Export ${kind}`, onclick: () => model.send({ action: "export", kind }) })));

  const root = EL("div", { class: "dl-root", tabindex: "0" }, [
    EL("div", { class: "dl-controls" }, [
      label("Prompt", fields.prompt), label("Negative", fields.negative_prompt), label("Seeds", fields.seeds),
      label("Steps", fields.steps), label("Guidance", fields.guidance), label("Layers", fields.layer_range),
      label("Final norm", finalNorm), runButton, cancelButton,
    ]),
    EL("div", { class: "dl-statusbar" }, [progress, status]),
    message,
    EL("div", { class: "dl-sliderbar" }, [sliderLabel, slider, diffToggle]),
    large, strips, heatmaps, exportsBar,
  ]);
  // JupyterLab / Notebook 7 (Lumino) match shortcuts against the focused element itself, so every focusable part of
  // the widget says it wants its keys (else the slider's arrow keys move between notebook cells instead).
  for (const node of [root, ...root.querySelectorAll("input, button")]) node.setAttribute("data-lm-suppress-shortcuts", "true");
  el.replaceChildren(root);

  // ---- helpers
  const layers = () => model.get("run_layers") || [];
  const seeds = () => model.get("run_seeds") || [];
  const running = () => model.get("status") === "running";
  const selected = () => model.get("selected_layer");
  const select = (layer) => { if (layers().includes(layer)) save("selected_layer", layer); };

  function showInvalid() {
    const error = validate(model);
    if (error) { message.textContent = error; message.dataset.kind = "invalid"; }
    else if (message.dataset.kind === "invalid") renderStatus();
    return error;
  }

  runButton.addEventListener("click", () => {
    for (const [key, node] of Object.entries(fields)) {
      const value = node.type === "number" ? Number(node.value) : node.value;
      if (model.get(key) !== value) model.set(key, value);
    }
    model.save_changes();
    if (showInvalid()) return; // inline message; no run starts
    model.send({ action: "run" });
  });
  cancelButton.addEventListener("click", () => model.send({ action: "cancel" }));
  slider.addEventListener("input", () => select(layers()[Number(slider.value)]));
  diffToggle.firstChild.addEventListener("change", (e) => save("show_difference", e.target.checked));
  root.addEventListener("keydown", (event) => {
    // Arrows move the layer, on the slider too: handled here (not natively) and kept from the host page, since
    // JupyterLab's notebook shortcuts otherwise swallow them. Text fields keep their arrows.
    const target = event.target;
    if (target.tagName === "INPUT" && target !== slider && target.type !== "checkbox") return;
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
    message.textContent = model.get("message");
    message.dataset.kind = state === "error" ? "error" : state === "invalid" ? "invalid" : "info";
  }

  // While running, a cell shows its newest preview (the predicted clean image at a denoising step); frames marked
  // "preview" are what a Cancel left when no image had finished. Either way the caption says which step it is.
  const previewSteps = new Map();
  const frameSteps = new Map();
  function setPreviews() {
    const previews = model.get("previews") || [];
    previewSteps.clear();
    for (const p of previews) previewSteps.set(`${p.kind || "raw"}:${p.layer}:${p.seed}`, `step ${p.step}/${p.steps}`);
    for (const kind of ["raw", "tuned"]) urls.set(`preview-${kind}`, previews.filter((p) => (p.kind || "raw") === kind));
  }
  function setFrames(kind) {
    const frames = model.get(kind === "raw" ? "frames" : "tuned_frames") || [];
    for (const key of [...frameSteps.keys()]) if (key.startsWith(kind + ":")) frameSteps.delete(key);
    for (const f of frames) if (f.preview) frameSteps.set(`${kind}:${f.layer}:${f.seed}`, `preview, step ${f.step}/${f.steps}`);
    urls.set(kind, frames);
  }
  function imageOrPreview(kind, layer, seed) {
    if (running()) return urls.get(`preview-${kind}`, layer, seed) || urls.get(kind, layer, seed);
    return urls.get(kind, layer, seed);
  }
  function stepOf(kind, layer, seed) {
    const key = `${kind}:${layer}:${seed}`;
    if (running() && urls.get(`preview-${kind}`, layer, seed)) return previewSteps.get(key) || "";
    return frameSteps.get(key) || "";
  }

  function renderStrips() {
    const tuned = (model.get("model_info") || {}).tuned;
    const kinds = tuned ? ["raw", "tuned"] : ["raw"];
    const rows = [];
    for (const kind of kinds) {
      for (const seed of seeds()) {
        const cells = layers().map((layer) => {
          const src = imageOrPreview(kind, layer, seed);
          const cell = EL("figure", { class: "dl-thumb" + (layer === selected() ? " dl-selected" : ""),
            "data-layer": String(layer), "data-seed": String(seed), "data-kind": kind, onclick: () => select(layer) },
            [src ? EL("img", { src, alt: `${kind} layer ${layer} seed ${seed}` }) : EL("div", { class: "dl-empty" }),
              EL("figcaption", { text: [`L${layer}`, stepOf(kind, layer, seed)].filter(Boolean).join(" · ") })]);
          return cell;
        });
        rows.push(EL("div", { class: "dl-strip", "data-kind": kind, "data-seed": String(seed) },
          [EL("span", { class: "dl-row-label", text: `${tuned ? kind + " " : ""}seed ${seed}` }), ...cells]));
      }
    }
    strips.replaceChildren(...rows);
  }

  function renderLarge() {
    const list = layers();
    slider.max = String(Math.max(0, list.length - 1));
    slider.value = String(Math.max(0, list.indexOf(selected())));
    slider.disabled = !list.length;
    sliderLabel.textContent = list.length ? `layer ${selected()} of 0..${(model.get("model_info") || {}).num_layers}` : "no result yet";
    const tuned = (model.get("model_info") || {}).tuned;
    diffToggle.hidden = !tuned;
    diffToggle.firstChild.checked = model.get("show_difference");
    const panels = [];
    for (const seed of seeds()) {
      const raw = imageOrPreview("raw", selected(), seed);
      const panel = [EL("figure", { class: "dl-large-img", "data-seed": String(seed), "data-kind": "raw" },
        [raw ? EL("img", { src: raw, alt: `layer ${selected()} seed ${seed}` }) : EL("div", { class: "dl-empty" }),
          EL("figcaption", { text: [`${tuned ? "raw, " : ""}layer ${selected()}, seed ${seed}`,
            stepOf("raw", selected(), seed)].filter(Boolean).join(" — ") })])];
      if (tuned) {
        const other = imageOrPreview("tuned", selected(), seed);
        let view;
        if (model.get("show_difference") && raw && other) {
          view = EL("canvas", { class: "dl-diff" });
          if (!differenceInto(view, raw, other)) view = EL("div", { class: "dl-empty", text: "difference unavailable" });
        } else view = other ? EL("img", { src: other, alt: `tuned layer ${selected()} seed ${seed}` }) : EL("div", { class: "dl-empty" });
        panel.push(EL("figure", { class: "dl-large-img", "data-seed": String(seed), "data-kind": "tuned" },
          [view, EL("figcaption", { text: model.get("show_difference") ? "|raw − tuned| ×4" : `tuned, layer ${selected()}` })]));
      }
      panels.push(EL("div", { class: "dl-large-pair" }, panel));
    }
    large.replaceChildren(...panels);
  }

  function renderHeatmaps() {
    heatmaps.replaceChildren();
    for (const [name, spec] of Object.entries(model.get("heatmaps") || {})) {
      const div = EL("div", { class: "dl-heatmap", "data-heatmap": name });
      heatmaps.append(div);
      drawHeatmap(div, spec, { selected: selected(), onSelect: (layer) => select(Number(layer)) });
    }
  }

  function renderAll() { renderStatus(); renderLarge(); renderStrips(); }

  setFrames("raw");
  setFrames("tuned");
  setPreviews();
  renderAll();
  renderHeatmaps();

  const handlers = {
    "change:status": renderAll,
    "change:progress": renderStatus,
    "change:message": renderStatus,
    "change:frames": () => { setFrames("raw"); renderAll(); },
    "change:tuned_frames": () => { setFrames("tuned"); renderAll(); },
    "change:previews": () => { setPreviews(); renderLarge(); renderStrips(); },
    "change:run_layers": renderAll,
    "change:run_seeds": renderAll,
    "change:selected_layer": () => { renderLarge(); renderStrips(); renderHeatmaps(); },
    "change:show_difference": renderLarge,
    "change:heatmaps": renderHeatmaps,
    "change:model_info": renderAll,
    "change:final_norm": () => { finalNorm.checked = model.get("final_norm"); },
  };
  for (const key of Object.keys(fields)) {
    handlers[`change:${key}`] = () => { if (document.activeElement !== fields[key]) fields[key].value = model.get(key); };
  }
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
