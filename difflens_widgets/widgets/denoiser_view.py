"""DenoiserView: the "Denoiser" face of the dashboard — what each U-Net / transformer block knows at each timestep.

A block × timestep heatmap of probe accuracy per label (scale from chance to 1); a click on a cell trains (once) the
k-SAE of that state and shows its purest latents as galleries of their top-activating images, each with its purity
and the label it fires for; the PCA→RGB maps of one chosen image's features at that timestep, one per block.
"""

from __future__ import annotations

import threading

import traitlets as t

from ..core import lifecycle
from ..denoiser.probes import ProbeResult, pca_rgb
from ..denoiser.taps import image_features
from .assets import BundledWidget, png_bytes

GALLERY_LATENTS = 8  # latents shown per state
GALLERY_IMAGES = 6  # top images per latent
THUMB = 48


class DenoiserView(BundledWidget):
    """``dl.DenoiserView(dl.probe(pipe, 240), pipe)``; without ``pipe`` there are no PCA maps.

    Long work runs in the background with its progress on screen and a Cancel: the k-SAE a click on a cell trains,
    and the probing itself for :meth:`probing` (what :func:`lens_and_denoiser` shows at once)."""

    view = t.Unicode("denoiser").tag(sync=True)
    tables = t.Dict().tag(sync=True)  # label → heatmap spec (x: timesteps, y: blocks, z: accuracy, zmin: chance)
    label = t.Unicode("").tag(sync=True)  # the label whose table and purity are shown
    cell = t.Unicode("").tag(sync=True)  # "block@t": the state whose SAE and PCA maps are shown
    galleries = t.Dict().tag(sync=True)  # "block@t" → {k, dead, error, latents: [{latent, label, purity, images}]}
    thumbs = t.List().tag(sync=True)  # PNGs of the probed images (the first few), to pick one for the PCA maps
    image_index = t.Int(0).tag(sync=True)
    pca = t.Dict().tag(sync=True)  # block → PNG of the chosen image's PCA map at the cell's timestep
    status = t.Unicode("idle").tag(sync=True)  # idle | running | done | cancelled | error
    message = t.Unicode("").tag(sync=True)
    progress = t.Float(0.0).tag(sync=True)  # 0..1 of the work going on (probing, or the k-SAE being trained)

    @classmethod
    def synced_traits(cls) -> dict:
        return DenoiserView.class_own_traits(sync=True)

    def __init__(self, result: ProbeResult | None = None, pipe=None, *, thumbs: int = 24, **kwargs):
        super().__init__(**kwargs)
        self.result, self.pipe, self._thumbs = None, pipe, thumbs
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._quiet = False  # set_result moves cell and label itself
        self.observe(self._on_cell, names=["cell", "label"])
        self.observe(lambda _: self._show_pca(), names=["image_index"])
        self.on_msg(self._on_message)
        if result is not None:
            self.set_result(result)
            self._start(self._show_cell)

    @classmethod
    def probing(cls, pipe, images=240, labels=None, **probe_options) -> DenoiserView:
        """A view shown at once, filled when probing ``images`` (see :func:`~difflens_widgets.probe`) finishes in
        the background; its progress and a Cancel are on screen meanwhile."""
        view = cls(pipe=pipe)
        count = images if isinstance(images, int) else len(images)
        view.message = f"probing the denoiser on {count} images…"

        def work():
            from ..denoiser.probes import probe

            view.set_result(probe(pipe, images, labels, progress=view._progress, **probe_options))
            view._show_cell()

        view._start(work)
        return view

    def set_result(self, result: ProbeResult) -> None:
        """Show ``result``: its tables, its images to pick from, and the best state for the first label."""
        self.result = result
        self.tables = {
            label: {
                "title": f"linear probe for {label!r}: held-out accuracy",
                "x": list(result.timesteps),
                "y": list(result.blocks),
                "z": acc.round(3).tolist(),
                "zmin": float(result.chance[label]),
                "zmax": 1.0,
                "scale": "accuracy",
                "x_title": "timestep",
                "y_title": "block",
                "chance": float(result.chance[label]),
            }
            for label, acc in result.accuracy.items()
        }
        self.thumbs = [png_bytes(im.resize((THUMB, THUMB))) for im in result.features.images[: self._thumbs]]
        label = next(iter(result.accuracy))
        best = result.accuracy[label].argmax()
        block, step = divmod(int(best), len(result.timesteps))
        self._quiet = True
        try:
            self.label = label
            self.cell = f"{result.blocks[block]}@{result.timesteps[step]}"  # open on the best state for the label
        finally:
            self._quiet = False

    # ---- background work: one job at a time, the newest wins, Cancel stops it ----------------------------------
    def _progress(self, done: int, total: int, what: str) -> bool:
        self.progress = done / max(1, total)
        self.message = f"{what}: {done} of {total}…"
        return self._stop.is_set()

    def _on_cell(self, _change) -> None:
        if not self._quiet and self.result is not None:
            self._start(self._show_cell)  # a click on a cell (or another label): its k-SAE, in the background

    def _start(self, job) -> None:
        """Run ``job`` in the background, after stopping the one going (the newest request wins)."""
        self.cancel()
        self.wait()
        self._stop = threading.Event()
        self.status, self.progress = "running", 0.0
        self._thread = threading.Thread(target=self._run, args=(job,), daemon=True, name="difflens-probe")
        lifecycle.track_worker(self._thread)
        self._thread.start()

    def _run(self, job) -> None:
        try:
            job()
            self.status, self.message, self.progress = "done", "", 1.0
        except lifecycle.Cancelled:
            self.status, self.message = "cancelled", "cancelled: click a cell to train its k-SAE again"
        except ValueError as err:
            self.status, self.message = "error", str(err)

    def cancel(self) -> None:
        self._stop.set()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the background work ends; True if it did within ``timeout``."""
        thread = self._thread
        if thread is None or thread is threading.current_thread():
            return True
        thread.join(timeout)
        return not thread.is_alive()

    def _on_message(self, _widget, content, _buffers) -> None:
        if isinstance(content, dict) and content.get("action") == "cancel":
            self.cancel()

    # ---- what is shown ---------------------------------------------------------------------------------------
    def _key(self) -> str:
        return f"{self.cell}:{self.label}"

    def _parse_cell(self) -> tuple[str, int]:
        block, _, step = self.cell.partition("@")
        if block not in self.result.blocks or not step.isdigit() or int(step) not in self.result.timesteps:
            raise ValueError(
                f"cell {self.cell!r} must be BLOCK@T with a block of {self.result.blocks} and t in "
                f"{self.result.timesteps}"
            )
        return block, int(step)

    def _show_cell(self) -> None:
        block, step = self._parse_cell()
        self.message = f"training the k-SAE of {block} at t={step}…"
        with self._lock:
            sae = self.result.sae(block, step, progress=self._progress)
        images = self.result.features.images
        live = [j for j, p in enumerate(sae.purity[self.label]) if p == p]
        order = sorted(live, key=lambda j: (sae.purity[self.label][j], len(sae.top_images(j)), -j), reverse=True)
        latents = [
            {
                "latent": j,
                "label": sae.label_of(j, self.label),
                "purity": round(float(sae.purity[self.label][j]), 3),
                "images": [png_bytes(images[i].resize((THUMB, THUMB))) for i in sae.top_images(j)[:GALLERY_IMAGES]]
                if images
                else [],
            }
            for j in order[:GALLERY_LATENTS]
        ]
        gallery = {
            "k": sae.k,
            "dead": round(sae.dead_share, 3),
            "error": round(sae.reconstruction_error, 4),
            "purity": round(sae.mean_purity(self.label), 3),
            "random_purity": round(sae.random_purity[self.label], 3),
            "label": self.label,
            "latents": latents,
        }
        self.galleries = {**self.galleries, self._key(): gallery}
        self._show_pca()

    def _show_pca(self) -> None:
        if self.pipe is None or self.result is None or not self.result.features.images:
            self.pca = {}
            return
        _, step = self._parse_cell()
        index = min(max(self.image_index, 0), len(self.result.features.images) - 1)
        features = image_features(
            self.pipe, [self.result.features.images[index]], [step], self.result.blocks, keep_spatial=True
        )
        self.pca = {
            block: png_bytes(pca_rgb(features.spatial[(block, step)][0], size=96)) for block in self.result.blocks
        }


def lens_and_denoiser(pipe, probe_result: ProbeResult | None = None, *, images: int = 240, **dashboard_inputs):
    """The dashboard with its two faces as tabs: "Lens" (a LensDashboard on ``pipe``) and "Denoiser" (a DenoiserView
    of ``probe_result``, or of a fresh probe on ``images`` toy-world renders when the model is the toy one)."""
    import ipywidgets

    from ..core.engine import Lens
    from .dashboard import LensDashboard

    lens = Lens.of(pipe)
    denoiser = (
        DenoiserView(probe_result, lens.pipe) if probe_result is not None else DenoiserView.probing(lens.pipe, images)
    )
    tabs = ipywidgets.Tab(children=[LensDashboard(lens, **dashboard_inputs), denoiser])
    tabs.titles = ("Lens", "Denoiser")
    return tabs
