// The DenoiserView: what each denoiser block knows at each timestep. A probe-accuracy heatmap per label (click a
// cell to open that state); the state's k-SAE latents as galleries of their top images, with purity and label; the
// PCA maps of one chosen image's features, one per block.
import { EL, bytesOf } from "./common.js";
import { drawHeatmap } from "./heatmap.js";

export function createDenoiserView({ model, el }) {
  const save = (key, value) => { model.set(key, value); model.save_changes(); };
  const pools = { gallery: [], picker: [], pca: [] }; // object URLs per section, revoked when it redraws
  const url = (pool, png) => {
    const u = URL.createObjectURL(new Blob([bytesOf(png)], { type: "image/png" }));
    pools[pool].push(u);
    return u;
  };
  const release = (pool) => { for (const u of pools[pool].splice(0)) URL.revokeObjectURL(u); };
  const label = EL("select", { "data-field": "label", title: "the property the probes and the SAE purity are about" });
  const status = EL("span", { class: "dl-status" });
  const progress = EL("progress", { class: "dl-progress", max: "1", value: "0" });
  const cancel = EL("button", { class: "dl-cancel", text: "Cancel", title: "stop the probing or the k-SAE training",
    onclick: () => model.send({ action: "cancel" }) });
  const heatmap = EL("div", { class: "dl-heatmap dl-probe-heatmap" });
  const summary = EL("div", { class: "dl-sae-summary" });
  const gallery = EL("div", { class: "dl-sae-gallery" });
  const picker = EL("div", { class: "dl-probe-picker" });
  const pca = EL("div", { class: "dl-pca" });
  const root = EL("div", { class: "dl-root dl-denoiser", tabindex: "0" }, [
    EL("div", { class: "dl-controls" }, [EL("label", {}, [EL("span", { text: "Label" }), label]), progress, status,
      cancel]),
    EL("div", { class: "dl-legend", text: "Each cell: how well a linear probe reads the label from that denoiser " +
      "block's features at that noise level (held-out accuracy; the scale starts at chance). Click a cell: its k-SAE's purest latents and PCA maps." }),
    heatmap, summary,
    EL("div", { class: "dl-legend dl-sae-help", text: "k-SAE: a sparse autoencoder on the state's features, k latents " +
      "active per image. Purity: the share of a latent's 10 top images that carry its commonest label; random " +
      "directions: the same measured on random projections of the features, so an SAE worth reading beats it. " +
      "Reconstruction error: the share of the features' variance the SAE misses (0 with few images means it " +
      "memorised them). Dead latents: never active." }),
    gallery,
    EL("div", { class: "dl-axis-y", text: "PCA of one image's features per block (pick the image): the first three " +
      "principal components as red, green and blue, so regions a block represents alike share a colour" }),
    picker, pca,
  ]);
  el.replaceChildren(root);

  const cellParts = () => { const [block, t] = String(model.get("cell")).split("@"); return { y: block, x: Number(t) }; };
  function renderLabels() {
    const names = Object.keys(model.get("tables") || {});
    label.replaceChildren(...names.map((n) => EL("option", { value: n, text: n })));
    label.value = model.get("label");
  }
  function renderHeatmap() {
    const spec = (model.get("tables") || {})[model.get("label")];
    if (!spec) { heatmap.replaceChildren(); return; }
    drawHeatmap(heatmap, spec, { selectedCell: cellParts(), onSelect: (t, block) => save("cell", `${block}@${t}`) });
  }
  function renderStatus() {
    status.textContent = model.get("message") || model.get("status");
    status.dataset.state = model.get("status");
    progress.hidden = cancel.hidden = model.get("status") !== "running";
    progress.value = model.get("progress") || 0;
  }
  function renderGallery() {
    release("gallery");
    renderStatus();
    const g = (model.get("galleries") || {})[`${model.get("cell")}:${model.get("label")}`];
    if (!g) { summary.textContent = `${model.get("cell")}: no SAE yet`; gallery.replaceChildren(); renderPca(); return; }
    summary.textContent = `${model.get("cell")} · k-SAE, k=${g.k} · dead latents ${g.dead} · reconstruction error ${g.error}` +
      ` · mean purity for ${g.label} ${g.purity} (random directions ${g.random_purity})`;
    gallery.replaceChildren(...g.latents.map((latent) => EL("div", { class: "dl-sae-latent", "data-latent": String(latent.latent) }, [
      EL("div", { class: "dl-sae-caption", text: `#${latent.latent} · ${latent.label} · purity ${latent.purity}`,
        title: "share of the latent's top images with its commonest label" }),
      EL("div", { class: "dl-sae-images" }, latent.images.map((png) => EL("img", { src: url("gallery", png), alt: `latent ${latent.latent}` }))),
    ])));
    renderPca();
  }
  function renderPicker() {
    release("picker");
    picker.replaceChildren(...(model.get("thumbs") || []).map((png, i) => EL("img", {
      src: url("picker", png), class: i === model.get("image_index") ? "dl-selected" : "", "data-index": String(i),
      alt: `image ${i}`, onclick: () => save("image_index", i) })));
  }
  function renderPca() {
    release("pca");
    pca.replaceChildren(...Object.entries(model.get("pca") || {}).map(([block, png]) =>
      EL("figure", { class: "dl-large-img", "data-block": block }, [EL("img", { src: url("pca", png), alt: `PCA ${block}` }),
        EL("figcaption", { text: `${block} @ t=${cellParts().x}` })])));
  }
  label.addEventListener("change", () => save("label", label.value));

  renderLabels(); renderHeatmap(); renderGallery(); renderPicker();
  const handlers = {
    "change:tables": () => { renderLabels(); renderHeatmap(); },
    "change:label": () => { label.value = model.get("label"); renderHeatmap(); renderGallery(); },
    "change:cell": () => { renderHeatmap(); renderGallery(); },
    "change:galleries": renderGallery, "change:status": renderGallery, "change:message": renderStatus,
    "change:progress": renderStatus,
    "change:pca": renderPca, "change:thumbs": renderPicker, "change:image_index": renderPicker,
  };
  for (const [event, fn] of Object.entries(handlers)) model.on(event, fn);
  return () => {
    for (const [event, fn] of Object.entries(handlers)) model.off(event, fn);
    for (const pool of Object.keys(pools)) release(pool);
  };
}
