// The LensDashboard front-end: builds the DOM from the model's state and keeps the two in sync.
// Everything shown is derived from model traits, so re-rendering the widget (re-display, page reload,
// VS Code re-run, the standalone HTML export) shows the last result again.
//
// The option controls are drawn from `option_specs`, which Python writes from the one definition of every lens
// option (difflens_widgets/core/options.py); the inputs are checked by Python alone and its verdict arrives as
// `input_error`, so the browser can never disagree with Lens.run.

import { EL, ImageUrls, bytesOf } from "./common.js";
import { colour, colourRgb, drawHeatmap } from "./heatmap.js";
import { drawEmergence } from "./emergence.js";

// A flag whose default is null means "the family's own choice" (the final norm: on for most encoders, off for SDXL's
// and SD3's CLIPs): three states, and "default" says which it is for the encoder lensed now.
const TRI_STATE = { "": null, on: true, off: false };
const triStateText = (value) => (value === true ? "on" : value === false ? "off" : "");

function optionControl(spec, model, save) {
  let node;
  if (spec.kind === "flag" && spec.default === null) {
    const own = (model.get("model_info") || {})[`own_${spec.name}`];
    const fallback = own === undefined ? "default" : `default (${own ? "on" : "off"})`;
    node = EL("select", { "data-tristate": "true" }, [["", fallback], ["on", "on"], ["off", "off"]]
      .map(([value, text]) => EL("option", { value, text })));
    node.value = triStateText(model.get(spec.name));
    node.addEventListener("change", () => save(spec.name, TRI_STATE[node.value]));
  } else if (spec.kind === "flag") {
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
  if (node.dataset.tristate) return TRI_STATE[node.value];
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
  const rules = EL("dl", { class: "dl-rules", hidden: "" });
  const rulesButton = EL("button", { class: "dl-rules-button", text: "?", title: "how the annotator judges",
    "aria-label": "how the annotator judges", onclick: () => { rules.hidden = !rules.hidden; } });
  const toggles = EL("div", { class: "dl-toggles" }, [
    EL("label", { title: "large type and images, for a projector" }, [present, " presentation size"]),
    EL("span", { class: "dl-verdict-toggle" }, [EL("label", {
      title: "the toy model's annotator on every image: objects, colours, binding, relation (✓ right, ✗ wrong)" },
    [verdictsBox, " annotator verdicts"]), " ", rulesButton]),
  ]);
  // where each word lands (runs with attention maps): a chip per word; hover or click one to lay its map over
  // every image (the token heatmap's rows work too), an opacity slider, and the word's layer × step mass
  const attnWords = EL("div", { class: "dl-attn-words" });
  const attnOpacity = EL("input", { type: "range", min: "0", max: "1", step: "0.05", "data-field": "attention_opacity",
    "aria-label": "map opacity", title: "how strongly the map covers the images" });
  const attnStrip = EL("div", { class: "dl-attn-strip" });
  const attnBar = EL("div", { class: "dl-attn", hidden: "" }, [
    EL("div", { class: "dl-attn-row" }, [EL("span", { class: "dl-attn-title", text: "Where each word lands:" }),
      attnWords, EL("label", { class: "dl-attn-opacity" }, [" opacity ", attnOpacity])]),
    attnStrip]);
  attnOpacity.addEventListener("input", () => { save("attention_opacity", Number(attnOpacity.value)); });
  const frozenNote = EL("div", { class: "dl-frozen-note", hidden: "", text: "A frozen snapshot of a finished run: " +
    "the slider, arrow keys, heatmaps and toggles work; the fields are greyed because running needs the notebook." });
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
    frozenNote, controls, optionsRow, toggles, rules,
    EL("div", { class: "dl-statusbar" }, [progress, status]),
    message, runLine, legend, attnBar,
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
  // the column that is the pipeline's own image under the run's options (null when no column is: another norm,
  // tokens or knock-outs, per token, another model's text encoder...)
  const ownLayer = () => (model.get("run_info") || {}).normal_layer ?? null;

  let heardSinceRun = true;
  runButton.addEventListener("click", () => {
    for (const [key, node] of Object.entries(fields)) {
      const value = readValue(node);
      if (model.get(key) !== value) model.set(key, value);
    }
    model.save_changes();
    model.send({ action: "run" }); // Python checks the inputs; a refusal comes back as status "invalid"
    heardSinceRun = false;
    setTimeout(() => { // a saved notebook reopened with a fresh kernel: the widget renders, nobody answers
      if (heardSinceRun) return;
      message.textContent = "No answer from the kernel: this dashboard is not connected to one (a reopened " +
        "notebook, or a restarted kernel). Run its cell again.";
      message.dataset.kind = "error";
    }, 4000);
  });
  cancelButton.addEventListener("click", () => model.send({ action: "cancel" }));
  slider.addEventListener("input", () => select(layers()[Number(slider.value)]));
  root.addEventListener("keydown", (event) => {
    // Arrows move the layer, Home and End go to the first and the last, on the slider too: handled here (not
    // natively) and kept from the host page, since JupyterLab's notebook shortcuts otherwise swallow them and a
    // bare End would scroll the page. Text fields and menus keep their keys.
    const target = event.target;
    if ((target.tagName === "INPUT" && target !== slider && target.type !== "checkbox") || target.tagName === "SELECT") return;
    const index = layers().indexOf(selected());
    if (event.key === "ArrowRight" || event.key === "ArrowUp") select(layers()[Math.min(layers().length - 1, index + 1)]);
    else if (event.key === "ArrowLeft" || event.key === "ArrowDown") select(layers()[Math.max(0, index - 1)]);
    else if (event.key === "Home") select(layers()[0]);
    else if (event.key === "End") select(layers()[layers().length - 1]);
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
    frozenNote.hidden = !frozen() || Boolean(info().browse);
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
    toggles.querySelector(".dl-verdict-toggle").hidden = !i.annotator || !(model.get("verdicts") || []).length;
    rules.replaceChildren(...(i.questions || []).flatMap((q) => [EL("dt", { text: `${q.short} — ${q.name}` }),
      EL("dd", { text: q.rule })]));
    if (!run.prompt) { runLine.textContent = ""; legend.textContent = ""; return; }
    const list = layers();
    const extras = Object.entries(run.options || {}).map(([k, v]) => `${k} ${Array.isArray(v) ? v.join(",") : v}`);
    runLine.textContent = [
      `“${run.prompt}”`, run.model, `encoder ${run.encoder}` + (run.text_from ? ` of ${run.text_from}` : ""),
      list.length ? `layers ${list.join(",")} of 0..${run.num_layers}` : "",
      `final norm ${run.final_norm ? "on" : "off"}`, `${run.steps} steps`, `guidance ${run.guidance}`,
      run.compare && run.compare !== "none" ? `compare: ${run.compare}` : "", ...extras,
    ].filter(Boolean).join(" · ");
    const normal = ownLayer() === null ? "" : `; layer ${ownLayer()} = the model's normal image`;
    legend.textContent = "Each column: the image the model draws when it reads the prompt only up to that " +
      `text-encoder layer${normal}. Each row: one seed (the same starting ` +
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
    // the annotator's questions, their short labels and rules come from Python (toy.annotate.QUESTIONS)
    return EL("div", { class: "dl-verdict" }, (info().questions || []).filter((q) => q.name in checks).map((q) =>
      EL("span", { class: checks[q.name] ? "dl-ok" : "dl-bad",
        title: `${q.name}: ${checks[q.name] ? "right" : "wrong"} (${q.rule})`,
        text: `${q.short}${checks[q.name] ? "✓" : "✗"}` })));
  }
  function figure(cls, kind, layer, seed, caption, extra = {}) {
    const src = imageOf(kind, layer, seed);
    return EL("figure", { class: cls, "data-layer": String(layer), "data-seed": String(seed), "data-kind": kind, ...extra },
      [EL("div", { class: "dl-img-box" }, [src ? EL("img", { src, alt: `${kind} layer ${layer} seed ${seed}` })
        : EL("div", { class: "dl-empty" })]),
      EL("figcaption", { text: caption }), badge(kind, layer, seed)].filter(Boolean)); // verdicts below, never over
  }
  // what a column is, beyond its layer: the pipeline's own image, or a block knocked out (h^l = h^(l-1))
  const skipped = () => new Set(((model.get("run_info") || {}).options || {}).skip_layers || []);
  const columnNote = (layer) => (layer === ownLayer() ? "normal" : skipped().has(layer) ? "skipped" : "");

  function renderStrips() {
    const several = panels().length > 1;
    const rows = [];
    for (const seed of seeds()) {
      for (const panel of panels()) {
        const cells = layers().map((layer) => {
          const text = [`L${layer}`, columnNote(layer), stepOf(panel.key, layer, seed)].filter(Boolean).join(" · ");
          return figure("dl-thumb" + (layer === selected() ? " dl-selected" : ""), panel.key, layer, seed, text,
            { onclick: () => select(layer), title: `layer ${layer}, seed ${seed}${several ? ", " + panel.label : ""}` });
        });
        rows.push(EL("div", { class: "dl-strip" + (several && panel === panels()[0] ? " dl-strip-first" : ""),
          "data-kind": panel.key, "data-seed": String(seed) },
        [EL("span", { class: "dl-row-label", text: `seed ${seed}${several ? " · " + panel.label : ""}` }), ...cells]));
      }
    }
    strips.style.setProperty("--dl-cols", String(Math.max(1, layers().length)));
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
    // the label has a fixed width of its own (the slider never moves while dragged); what the layer is goes below
    sliderLabel.textContent = list.length ? `layer ${selected()} of 0..${(model.get("run_info") || {}).num_layers ?? info().num_layers}` : "no result yet";
    const note = { normal: "the model's normal image", skipped: "its block knocked out" }[columnNote(selected())]
      || (selected() === 0 ? "token embeddings" : "");
    const several = panels().length > 1;
    large.classList.toggle("dl-many", panels().length > 3); // per token: rows of small images, bounded
    large.replaceChildren(...seeds().map((seed) => EL("div", { class: "dl-large-pair" }, panels().map((panel) =>
      figure("dl-large-img", panel.key, selected(), seed, [`${several ? panel.label + ", " : ""}layer ${selected()}` +
        `${note ? " (" + note + ")" : ""}, seed ${seed}`, stepOf(panel.key, selected(), seed)].filter(Boolean).join(" — "))))));
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
      if (name === "tokens") { // a token's row: hover or click it to see where that word lands
        div.querySelectorAll(".dl-hm-label").forEach((label, row) => {
          const wordOf = () => (attention().words || []).findIndex((w) => w.positions.includes(row));
          label.addEventListener("mouseenter", () => { if (wordOf() >= 0) { hoverWord = wordOf(); renderAttention(); } });
          label.addEventListener("mouseleave", () => { hoverWord = null; renderAttention(); });
          label.addEventListener("click", () => { if (wordOf() >= 0) save("attention_word", wordOf()); });
        });
      }
    }
  }

  // ---- attention overlays
  let hoverWord = null;
  const attention = () => model.get("attention_maps") || {};
  const currentWord = () => { const w = hoverWord ?? model.get("attention_word"); return w >= 0 ? w : null; };
  const attnFrames = new Map();
  function setAttention() {
    attnFrames.clear();
    for (const f of attention().frames || []) attnFrames.set(`${f.kind}:${f.layer}:${f.seed}`, f);
  }
  function wordMap(frame, word) { // the mean of the word's pieces' maps, 0..1, on the maps' grid
    const [h, w] = attention().grid;
    const bytes = bytesOf(frame.maps);
    const out = new Float32Array(h * w);
    for (const position of word.positions) {
      for (let i = 0; i < h * w; i++) out[i] += bytes[position * h * w + i] / 255 / word.positions.length;
    }
    let top = 0;
    for (const v of out) top = Math.max(top, v);
    return { h, w, values: top > 0 ? out.map((v) => v / top) : out };
  }
  function drawOverlays() {
    const index = currentWord();
    const word = index === null ? null : (attention().words || [])[index];
    for (const box of root.querySelectorAll(".dl-img-box")) {
      box.querySelector("canvas.dl-attn-overlay")?.remove();
      const figureNode = box.closest("figure");
      const frame = word && attnFrames.get(`${figureNode.dataset.kind}:${figureNode.dataset.layer}:${figureNode.dataset.seed}`);
      if (!frame || !box.querySelector("img")) continue;
      const { h, w, values } = wordMap(frame, word);
      const canvas = EL("canvas", { class: "dl-attn-overlay", width: String(w), height: String(h),
        "data-word": word.label });
      canvas.style.opacity = String(model.get("attention_opacity") ?? 0.6);
      const context = canvas.getContext && canvas.getContext("2d");
      if (context) {
        const pixels = context.createImageData(w, h);
        values.forEach((v, i) => pixels.data.set([...colourRgb(v, 0, 1), 255], i * 4));
        context.putImageData(pixels, 0, 0);
      }
      box.append(canvas);
    }
  }
  function buildWords() { // the chips, once per run (a hover only changes which is marked)
    const data = attention();
    attnBar.hidden = !(data.words || []).length;
    attnWords.replaceChildren(...(data.words || []).map((word, i) => EL("button", {
      class: "dl-attn-word", text: word.label, "data-word": String(i),
      title: `where "${word.label}" lands (pieces ${word.positions.join(", ")}); click to keep it`,
      onmouseenter: () => { hoverWord = i; renderAttention(); }, onmouseleave: () => { hoverWord = null; renderAttention(); },
      onclick: () => save("attention_word", model.get("attention_word") === i ? -1 : i) })));
    renderAttention();
  }
  function renderAttention() {
    attnOpacity.value = String(model.get("attention_opacity") ?? 0.6);
    const selected = currentWord();
    for (const chip of attnWords.children) chip.classList.toggle("dl-selected", Number(chip.dataset.word) === selected);
    renderStrip(selected === null ? null : (attention().words || [])[selected]);
    drawOverlays();
  }
  function renderStrip(word) { // the word's share of the attention per layer (rows) and denoising step (columns)
    const frames = (attention().frames || []).filter((f) => f.kind === panels()[0].key && f.mass.length);
    if (!word || !frames.length) { attnStrip.replaceChildren(); return; }
    const layersWith = [...new Set(frames.map((f) => f.layer))].sort((a, b) => a - b);
    const steps = frames[0].mass.length;
    const z = layersWith.map((layer) => {
      const rows = frames.filter((f) => f.layer === layer);
      return [...Array(steps).keys()].map((step) => rows.reduce((sum, f) =>
        sum + word.positions.reduce((a, p) => a + (f.mass[step][p] || 0), 0), 0) / rows.length);
    });
    drawHeatmap(attnStrip, { title: `"${word.label}": share of attention per layer and step`,
      x: [...Array(steps).keys()].map((s) => s + 1), y: layersWith, z, scale: "attention mass", x_title: "step",
      y_title: "layer" }, { selected: null });
  }

  function renderImages() { renderLarge(); renderStrips(); renderCurve(); drawOverlays(); }
  function renderAll() { renderStatus(); renderInfo(); renderImages(); }

  buildOptions();
  suppressShortcuts();
  setAttention();
  setFrames();
  setPreviews();
  setVerdicts();
  renderAll();
  renderHeatmaps();
  buildWords();

  const handlers = {
    "change:status": () => { heardSinceRun = true; renderAll(); },
    "change:progress": renderStatus,
    "change:message": renderStatus,
    "change:input_error": renderStatus,
    "change:frames": () => { setFrames(); renderAll(); },
    "change:previews": () => { setPreviews(); renderImages(); },
    "change:panels": renderAll,
    "change:run_layers": renderAll,
    "change:run_seeds": renderAll,
    "change:run_info": renderAll,
    "change:verdicts": () => { setVerdicts(); renderInfo(); renderImages(); },
    "change:emergence": renderCurve,
    "change:show_verdicts": () => { renderInfo(); renderImages(); },
    "change:presentation": renderInfo,
    "change:selected_layer": () => { renderImages(); renderHeatmaps(); },
    "change:heatmaps": renderHeatmaps,
    "change:attention_maps": () => { setAttention(); buildWords(); },
    "change:attention_word": renderAttention,
    "change:attention_opacity": () => { for (const c of root.querySelectorAll("canvas.dl-attn-overlay")) {
      c.style.opacity = String(model.get("attention_opacity")); } attnOpacity.value = String(model.get("attention_opacity")); },
    "change:model_info": () => { buildOptions(); suppressShortcuts(); renderAll(); },
    "change:option_specs": () => { buildOptions(); suppressShortcuts(); },
  };
  for (const spec of model.get("option_specs") || []) {
    handlers[`change:${spec.name}`] = () => {
      const node = fields[spec.name];
      if (!node || document.activeElement === node) return;
      if (node.dataset.tristate) node.value = triStateText(model.get(spec.name));
      else if (node.type === "checkbox") node.checked = Boolean(model.get(spec.name));
      else node.value = model.get(spec.name);
    };
  }
  handlers["change:prompt"] = () => { if (document.activeElement !== prompt) prompt.value = model.get("prompt"); };
  const onCustom = (msg, buffers) => {
    if (!msg || msg.action !== "download" || !buffers || !buffers.length) return;
    const url = URL.createObjectURL(new Blob([bytesOf(buffers[0])]));
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
