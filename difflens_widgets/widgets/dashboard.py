"""LensDashboard: the notebook face of the lens (an anywidget; front-end source in ``js/``).

State lives in traitlets so that re-displaying the widget, or reloading the page, shows the last result again.
Runs happen in a worker thread so the kernel stays responsive and progress can stream to the browser; images
cross as PNG bytes (binary buffers), never base64 text, and no torch object is ever held by the widget.
"""

from __future__ import annotations

import io
import threading
from pathlib import Path

import anywidget
import traitlets as t

from .. import options
from ..engine import Lens
from .. import exports
from ..results import LensResult
from ..tuning import check_compatible, compare, load_tuned

STATIC = Path(__file__).parent / "static"


def png_bytes(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=False)
    return buffer.getvalue()


def frames_of(result: LensResult) -> list[dict]:
    return [{"layer": l, "seed": s, "png": png_bytes(img)} for (l, s), img in sorted(result.images.items())]


class LensDashboard(anywidget.AnyWidget):
    """Interactive Diffusion Lens: prompt → filmstrip of every layer, a layer slider, heatmaps and exports.

    ``LensDashboard("toy")`` or ``LensDashboard(pipe)``; ``tuned=`` a fine-tuned variant (a pipeline, or any
    path :func:`~difflens_widgets.load_tuned` accepts: pipeline folder, components, LoRA, textual inversion) shows
    raw vs tuned side by side with identical seeds and noise. ``dashboard.result`` is the last LensResult.
    """

    _esm = STATIC / "widget.js"
    _css = STATIC / "widget.css"

    # inputs (edited in the browser, or from Python; the only constructor arguments accepted)
    prompt = t.Unicode("a red circle left of a blue square").tag(sync=True, input=True)
    negative_prompt = t.Unicode("").tag(sync=True, input=True)
    seeds = t.Unicode("0").tag(sync=True, input=True)
    steps = t.Int(20).tag(sync=True, input=True)
    guidance = t.Float(7.5).tag(sync=True, input=True)
    layer_range = t.Unicode("").tag(sync=True, input=True)  # "" = all layers; else e.g. "0:9:2" or "0,4,8"
    final_norm = t.Bool(True).tag(sync=True, input=True)  # False: the paper's ablation without the encoder's final norm
    selected_layer = t.Int(0).tag(sync=True, input=True)
    show_difference = t.Bool(False).tag(sync=True, input=True)

    # outputs (set by Python only)
    model_info = t.Dict().tag(sync=True)
    status = t.Unicode("idle").tag(sync=True)  # idle | running | done | cancelled | error | invalid
    message = t.Unicode("").tag(sync=True)
    progress = t.Float(0.0).tag(sync=True)
    run_layers = t.List(t.Int()).tag(sync=True)
    run_seeds = t.List(t.Int()).tag(sync=True)
    frames = t.List().tag(sync=True)
    tuned_frames = t.List().tag(sync=True)
    previews = t.List().tag(sync=True)
    heatmaps = t.Dict().tag(sync=True)
    timings = t.Dict().tag(sync=True)


    @classmethod
    def default_state(cls) -> dict:
        """Every synced trait of the dashboard with its default value: the one source for the preview page and the
        JavaScript tests' fake model (docs/widget-protocol.md documents each)."""
        # LensDashboard by name, not cls: anywidget gives every instance a dynamic subclass of its own
        return {name: trait.default() for name, trait in sorted(LensDashboard.class_own_traits(sync=True).items())}

    def __init__(self, pipe_or_model="toy", *, tuned=None, **kwargs):
        tagged = LensDashboard.class_own_traits(input=True)  # the traits tagged input=True above
        inputs = [name for name in vars(LensDashboard) if name in tagged]  # in the order they are declared
        unknown = sorted(set(kwargs) - set(inputs))
        if unknown:
            raise TypeError(f"LensDashboard got unknown argument(s) {', '.join(unknown)}; its inputs are "
                            f"{', '.join(inputs)}")
        super().__init__(**kwargs)
        self._lens = Lens.of(pipe_or_model)
        if isinstance(tuned, Lens):
            check_compatible(self._lens.pipe, tuned.pipe)
        elif tuned is not None:
            tuned = Lens(load_tuned(self._lens.pipe, tuned))  # load_tuned checks compatibility
        self._tuned = tuned
        if "final_norm" not in kwargs:  # default: the pipeline's own convention (False for SDXL)
            self.final_norm = self._lens.adapter.own_final_norm
        self.result: LensResult | None = None
        self.tuned_result: LensResult | None = None
        self._previous: tuple[LensResult, LensResult | None] | None = None  # the last complete result
        self._thread: threading.Thread | None = None
        self._pending: dict | None = None
        self._lock = threading.Lock()
        self.max_batch: int | None = None  # images per pipeline call (None: from free memory)
        self.model_info = {
            "family": self._lens.adapter.family, "num_layers": self._lens.num_layers,
            "name": str(getattr(self._lens.pipe.config, "_name_or_path", "") or type(self._lens.pipe).__name__),
            "tuned": self._tuned is not None,
        }
        self.on_msg(self._on_message)

    # ---- inputs are checked when set (from Python or the browser), not only at Run ----------------------------
    @t.validate("steps")
    def _valid_steps(self, proposal):
        return options.check_steps(proposal["value"])

    @t.validate("guidance")
    def _valid_guidance(self, proposal):
        return options.check_guidance(proposal["value"])

    @t.validate("selected_layer")
    def _valid_selected_layer(self, proposal):
        layer = proposal["value"]
        last = self._lens.num_layers if hasattr(self, "_lens") else None
        if layer < 0 or (last is not None and layer > last):
            raise ValueError(f"selected_layer must be a layer of this model, 0..{last}, got {layer}")
        return layer

    # ---- commands ----------------------------------------------------------------------------------------------
    def _on_message(self, _widget, content, _buffers) -> None:
        action = content.get("action") if isinstance(content, dict) else None
        if action == "run":
            self.run()
        elif action == "cancel":
            self.cancel()
        elif action == "export":
            self._send_export(content.get("kind", ""))

    def request(self) -> dict:
        """The current inputs as ``Lens.run`` arguments; raises ValueError/TypeError with a message to show."""
        if not self.prompt.strip():
            raise ValueError("the prompt is empty: type what the model should draw")
        prompt = options.parse_prompts(self.prompt.strip())[0]
        if self.negative_prompt:
            options.parse_prompts(self.negative_prompt)
        return dict(
            prompt=prompt,
            layers=options.parse_layers(self.layer_range.strip() or None, self._lens.num_layers),
            seeds=options.parse_seeds(self.seeds),
            num_inference_steps=options.check_steps(self.steps),
            guidance_scale=options.check_guidance(self.guidance),
            negative_prompt=self.negative_prompt or None,
            final_norm=bool(self.final_norm),
        )

    def run(self) -> None:
        """Validate the inputs and start a run in the background; a run already going is cancelled and this one
        starts when it has stopped (never two at once)."""
        try:
            request = self.request()
        except (ValueError, TypeError) as err:
            self.status, self.message = "invalid", str(err)
            return
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                self._pending = request
                self.cancel()
                return
            self._start(request)

    def cancel(self) -> None:
        self._lens.cancel()
        if self._tuned is not None:
            self._tuned.cancel()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the current run (and any queued one) finishes; True if it did within ``timeout``."""
        while True:
            thread = self._thread
            if thread is None:
                return True
            thread.join(timeout)
            if thread.is_alive():
                return False
            with self._lock:
                if self._thread is thread:
                    return True

    # ---- the worker --------------------------------------------------------------------------------------------
    def _start(self, request: dict) -> None:
        """Lay out the new run at once (one cell per layer and seed, filled by previews as they come) and forget
        the previous prompt's images and heatmaps on screen; the previous complete result is kept aside so a Cancel
        can bring it back."""
        if self.result is not None and self.result.complete:
            self._previous = (self.result, self.tuned_result)
        self.previews, self.frames, self.tuned_frames, self.heatmaps = [], [], [], {}
        self.run_layers, self.run_seeds = list(request["layers"]), list(request["seeds"])
        if self.result is None or self.selected_layer not in request["layers"]:
            self.selected_layer = request["layers"][-1]  # the model's normal image first
        self.status, self.message, self.progress = "running", "", 0.0  # last: the new layout is already there
        self._thread = threading.Thread(target=self._work, args=(request,), daemon=True, name="difflens-run")
        self._thread.start()

    def _work(self, request: dict) -> None:
        import time

        started = time.perf_counter()
        first_preview: list[float] = []
        steps = request["num_inference_steps"]
        snapshot_every = max(1, steps // 5)
        latest: dict[tuple, dict] = {}  # newest preview per (kind, layer, seed), every chunk's kept

        def progress(done, total, preview):
            self.progress = done / total
            if preview is not None:
                if not first_preview:
                    first_preview.append(time.perf_counter() - started)
                kind = "tuned" if self._tuned is not None and done > total / 2 else "raw"  # compare: raw, then tuned
                for (layer, seed), img in zip(preview.items, preview.images):
                    latest[(kind, layer, seed)] = {"layer": layer, "seed": seed, "png": png_bytes(img), "kind": kind,
                                                   "step": preview.step, "steps": steps}
                self.previews = list(latest.values())

        try:
            common = dict(request, snapshot_every=snapshot_every, max_batch=self.max_batch, progress=progress)
            if self._tuned is None:
                result, tuned = self._lens.run(**common), None
            else:
                both = compare(self._lens, self._tuned, **common)
                result, tuned = both.raw, (both.tuned if both.raw.complete else None)
            complete = result.complete and (tuned is None or tuned.complete)
            if complete:
                self._show(result, tuned)
                self.status, self.message = "done", ""
            else:
                self.message = self._after_cancel(result, [p for p in latest.values() if p["kind"] == "raw"])
                self.status = "cancelled"
            events = [e for r in (result, tuned) if r is not None for e in r.params.get("memory_events", [])]
            if any("out of memory" in e for e in events):  # say why the run took longer than it might have
                self.message = "; ".join(filter(None, [self.message, "GPU memory: " + "; ".join(events)]))
        except Exception as err:  # shown in the widget; the widget stays usable
            if self._previous is not None:
                self._show(*self._previous)
            self.status, self.message = "error", f"{type(err).__name__}: {err}"
        finally:
            self.timings = {"first_preview_s": first_preview[0] if first_preview else None,
                            "total_s": time.perf_counter() - started}
            self.previews = []
            with self._lock:
                pending, self._pending = self._pending, None
                if pending is not None:
                    self._start(pending)
                else:
                    self._thread = None

    def _after_cancel(self, result: LensResult, previews: list[dict]) -> str:
        """What stays on screen after a Cancel, and the line that says what it is: the previous complete result,
        else the images that finished, else the last previews reached (labelled as previews)."""
        if self._previous is not None:
            self._show(*self._previous)
            return f"cancelled: still showing the previous result ({self._previous[0].prompt!r})"
        wanted = len(result.layers) * len(result.seeds)
        if result.images:
            self._show(result, None)
            return f"cancelled: showing the {len(result.images)} of {wanted} images that finished"
        self.frames = [dict(p, preview=True) for p in previews]
        if not previews:
            return "cancelled before any preview: nothing to show yet"
        step = min(p["step"] for p in previews)
        return f"cancelled: showing previews (denoising step {step} of {previews[0]['steps']}), not final images"

    def _show(self, result: LensResult, tuned: LensResult | None) -> None:
        from ..similarity import heatmap_specs

        self.result, self.tuned_result = result, tuned
        self.run_layers, self.run_seeds = result.layers, result.seeds
        self.frames = frames_of(result)
        self.tuned_frames = frames_of(tuned) if tuned is not None else []
        if result.complete:
            self.heatmaps = heatmap_specs(result, tuned)
        if self.selected_layer not in result.layers:
            self.selected_layer = result.layers[-1]

    # ---- exports -----------------------------------------------------------------------------------------------
    def export(self, kind: str) -> tuple[str, bytes]:
        """(file name, bytes) of the last result as ``grid`` (PNG), ``gif`` (animated, across layers) or
        ``html`` (a standalone report)."""
        if self.result is None:
            raise ValueError("nothing to export yet: run the lens first")
        return exports.export(self.result, kind, tuned=self.tuned_result)

    def _send_export(self, kind: str) -> None:
        try:
            name, data = self.export(kind)
        except ValueError as err:
            self.message = str(err)
            return
        self.send({"action": "download", "name": name}, buffers=[data])
