"""DenoiserView: the "Denoiser" face of the dashboard — what each U-Net / transformer block knows at each timestep.

A block × timestep heatmap of probe accuracy per label (scale from chance to 1); a click on a cell trains (once) the
k-SAE of that state and shows its purest latents as galleries of their top-activating images, each with its purity
and the label it fires for; the PCA→RGB maps of one chosen image's features at that timestep, one per block.
"""

from __future__ import annotations

import threading

import anywidget
import traitlets as t

from ..denoiser import image_features
from ..probes import ProbeResult, pca_rgb
from .dashboard import STATIC, png_bytes

GALLERY_LATENTS = 8  # latents shown per state
GALLERY_IMAGES = 6  # top images per latent
THUMB = 48


class DenoiserView(anywidget.AnyWidget):
    """``dl.DenoiserView(dl.probe(pipe, 240), pipe)``; without ``pipe`` there are no PCA maps."""

    _esm = STATIC / "widget.js"
    _css = STATIC / "widget.css"
    view = t.Unicode("denoiser").tag(sync=True)
    tables = t.Dict().tag(sync=True)  # label → heatmap spec (x: timesteps, y: blocks, z: accuracy, zmin: chance)
    label = t.Unicode("").tag(sync=True)  # the label whose table and purity are shown
    cell = t.Unicode("").tag(sync=True)  # "block@t": the state whose SAE and PCA maps are shown
    galleries = t.Dict().tag(sync=True)  # "block@t" → {k, dead, error, latents: [{latent, label, purity, images}]}
    thumbs = t.List().tag(sync=True)  # PNGs of the probed images (the first few), to pick one for the PCA maps
    image_index = t.Int(0).tag(sync=True)
    pca = t.Dict().tag(sync=True)  # block → PNG of the chosen image's PCA map at the cell's timestep
    status = t.Unicode("idle").tag(sync=True)
    message = t.Unicode("").tag(sync=True)

    @classmethod
    def synced_traits(cls) -> dict:
        return DenoiserView.class_own_traits(sync=True)

    def __init__(self, result: ProbeResult, pipe=None, *, thumbs: int = 24, **kwargs):
        super().__init__(**kwargs)
        self.result, self.pipe = result, pipe
        self._lock = threading.Lock()
        self.tables = {label: {"title": f"linear probe for {label!r}: held-out accuracy",
                               "x": list(result.timesteps), "y": list(result.blocks), "z": acc.round(3).tolist(),
                               "zmin": float(result.chance[label]), "zmax": 1.0, "scale": "accuracy",
                               "x_title": "timestep", "y_title": "block", "chance": float(result.chance[label])}
                       for label, acc in result.accuracy.items()}
        self.thumbs = [png_bytes(im.resize((THUMB, THUMB))) for im in result.features.images[:thumbs]]
        self.label = next(iter(result.accuracy))
        self.observe(lambda _: self._show_cell(), names=["cell", "label"])
        self.observe(lambda _: self._show_pca(), names=["image_index"])
        best = result.accuracy[self.label].argmax()
        block, step = divmod(int(best), len(result.timesteps))
        self.cell = f"{result.blocks[block]}@{result.timesteps[step]}"  # open on the best state for the label

    def _parse_cell(self) -> tuple[str, int]:
        block, _, step = self.cell.partition("@")
        if block not in self.result.blocks or not step.isdigit() or int(step) not in self.result.timesteps:
            raise ValueError(f"cell {self.cell!r} must be BLOCK@T with a block of {self.result.blocks} and t in "
                             f"{self.result.timesteps}")
        return block, int(step)

    def _show_cell(self) -> None:
        try:
            block, step = self._parse_cell()
            self.status, self.message = "running", f"training the k-SAE of {block} at t={step}…"
            with self._lock:
                sae = self.result.sae(block, step)
            images = self.result.features.images
            live = [j for j, p in enumerate(sae.purity[self.label]) if p == p]
            order = sorted(live, key=lambda j: (sae.purity[self.label][j], len(sae.top_images(j)), -j), reverse=True)
            latents = [{"latent": j, "label": sae.label_of(j, self.label),
                        "purity": round(float(sae.purity[self.label][j]), 3),
                        "images": [png_bytes(images[i].resize((THUMB, THUMB)))
                                   for i in sae.top_images(j)[:GALLERY_IMAGES]] if images else []}
                       for j in order[:GALLERY_LATENTS]]
            gallery = {"k": sae.k, "dead": round(sae.dead_share, 3), "error": round(sae.reconstruction_error, 4),
                       "purity": round(sae.mean_purity(self.label), 3),
                       "random_purity": round(sae.random_purity[self.label], 3), "label": self.label,
                       "latents": latents}
            self.galleries = {**self.galleries, f"{self.cell}:{self.label}": gallery}
            self._show_pca()
            self.status, self.message = "done", ""
        except ValueError as err:
            self.status, self.message = "error", str(err)

    def _show_pca(self) -> None:
        if self.pipe is None or not self.result.features.images:
            self.pca = {}
            return
        _, step = self._parse_cell()
        index = min(max(self.image_index, 0), len(self.result.features.images) - 1)
        features = image_features(self.pipe, [self.result.features.images[index]], [step], self.result.blocks,
                                  keep_spatial=True)
        self.pca = {block: png_bytes(pca_rgb(features.spatial[(block, step)][0], size=96))
                    for block in self.result.blocks}


def lens_and_denoiser(pipe, probe_result: ProbeResult | None = None, *, images: int = 240, **dashboard_inputs):
    """The dashboard with its two faces as tabs: "Lens" (a LensDashboard on ``pipe``) and "Denoiser" (a DenoiserView
    of ``probe_result``, or of a fresh probe on ``images`` toy-world renders when the model is the toy one)."""
    import ipywidgets

    from ..engine import Lens
    from ..probes import probe
    from .dashboard import LensDashboard

    lens = Lens.of(pipe)
    if probe_result is None:
        probe_result = probe(lens.pipe, images)
    tabs = ipywidgets.Tab(children=[LensDashboard(lens, **dashboard_inputs), DenoiserView(probe_result, lens.pipe)])
    tabs.titles = ("Lens", "Denoiser")
    return tabs
