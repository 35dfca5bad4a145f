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

from .. import exports, lens_options, options
from ..engine import Lens
from ..models import is_toy
from ..panels import Panel, check_panels, planned_panels, run_panels
from ..results import LensResult
from ..tuning import check_compatible, load_tuned

STATIC = Path(__file__).parent / "static"
WIDGET_OPTIONS = tuple(o for o in lens_options.OPTIONS if "widget" in o.surfaces)


def png_bytes(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=False)
    return buffer.getvalue()


def frames_of(result: LensResult, kind: str = "lens") -> list[dict]:
    return [{"layer": l, "seed": s, "kind": kind, "png": png_bytes(img)} for (l, s), img in sorted(result.images.items())]


def panel_frames(panels: list[Panel]) -> list[dict]:
    return [frame for panel in panels for frame in frames_of(panel.result, panel.key)]


def _model_name(pipe) -> str:
    if is_toy(pipe):
        return "toy (the embedded shapes-world model)"
    return str(getattr(pipe.config, "_name_or_path", "") or type(pipe).__name__)


def _option_trait(option: lens_options.LensOption) -> t.TraitType:
    """A dashboard input for a lens option, named as the option (so ``dash.num_inference_steps = 30``)."""
    make = {"int": t.Int, "float": t.Float, "flag": lambda d: t.Bool(bool(d))}.get(option.kind, t.Unicode)
    return make(option.default).tag(sync=True, input=True)


# the lens options as traits, from their one definition in lens_options (checked when set or at Run)
LensInputs = type("LensInputs", (t.HasTraits,), {o.name: _option_trait(o) for o in WIDGET_OPTIONS})


class LensDisplay(anywidget.AnyWidget):
    """What the front-end draws — a run's images, what they are, the heatmaps and verdicts — shared by the
    LensDashboard (which runs the lens) and the SweepView (which browses a sweep's stored images)."""

    _esm = STATIC / "widget.js"
    _css = STATIC / "widget.css"

    # inputs besides the lens options (edited in the browser, or from Python; the only constructor arguments)
    prompt = t.Unicode("a red circle left of a blue square").tag(sync=True, input=True)
    selected_layer = t.Int(0).tag(sync=True, input=True)
    show_verdicts = t.Bool(False).tag(sync=True, input=True)  # toy model: the annotator's ✓✗ on every image
    presentation = t.Bool(False).tag(sync=True, input=True)  # large type, for a projector

    # outputs (set by Python only)
    model_info = t.Dict().tag(sync=True)
    option_specs = t.List([o.spec() for o in WIDGET_OPTIONS]).tag(sync=True)  # how to draw each option's control
    input_error = t.Unicode("").tag(sync=True)  # what is wrong with the inputs now ("" = nothing)
    status = t.Unicode("idle").tag(sync=True)  # idle | running | done | cancelled | error | invalid
    message = t.Unicode("").tag(sync=True)
    progress = t.Float(0.0).tag(sync=True)
    run_layers = t.List(t.Int()).tag(sync=True)
    run_seeds = t.List(t.Int()).tag(sync=True)
    run_info = t.Dict().tag(sync=True)  # what the shown images are: prompt, encoder, final norm, layers, options
    panels = t.List().tag(sync=True)  # rows per seed: [{key, label, scale}]
    frames = t.List().tag(sync=True)
    previews = t.List().tag(sync=True)
    heatmaps = t.Dict().tag(sync=True)
    verdicts = t.List().tag(sync=True)  # toy model: [{kind, layer, seed, checks: {objects, colors, both, relation}}]
    emergence = t.Dict().tag(sync=True)  # toy model: {layers, curves: {question: [share per layer]}}
    timings = t.Dict().tag(sync=True)

    @classmethod
    def synced_traits(cls) -> dict:
        """The synced traits this view adds to anywidget's own (override: the classes that declare them)."""
        return LensDisplay.class_own_traits(sync=True)

    @classmethod
    def default_state(cls) -> dict:
        """Every synced trait of the view with its default value: the one source for the standalone page and the
        JavaScript tests' fake model (docs/widget-protocol.md documents each)."""
        return {name: trait.default() for name, trait in sorted(cls.synced_traits().items())}


class LensDashboard(LensDisplay, LensInputs):
    """Interactive Diffusion Lens: prompt → filmstrip of every layer, a layer slider, heatmaps and exports.

    ``LensDashboard("toy")`` or ``LensDashboard(pipe)``; ``tuned=`` a fine-tuned variant (a pipeline, or any
    path :func:`~difflens_widgets.load_tuned` accepts: pipeline folder, components, LoRA, textual inversion) shows
    raw, tuned and their difference per seed with identical seeds and noise; ``text_from=`` another model whose text
    encoder feeds this one's denoiser (cross-model lens). The lens options (:data:`lens_options.OPTIONS`) are
    traits of the same names as :meth:`Lens.run`'s keywords; ``compare`` puts the final-norm ablation or the lensed
    negative beside the normal lens. On the toy model, ``show_verdicts`` overlays the annotator's judgement.
    ``dashboard.result`` is the last LensResult (``dashboard.panels_result`` every panel's).
    """

    @classmethod
    def inputs(cls) -> list[str]:
        """The input traits, in the order they are declared: the constructor's keyword arguments."""
        tagged = LensDisplay.class_own_traits(input=True)
        return ["prompt", *(o.name for o in WIDGET_OPTIONS)] + [n for n in vars(LensDisplay) if n in tagged
                                                                 and n != "prompt"]

    @classmethod
    def synced_traits(cls) -> dict:
        # LensDashboard by name, not cls: anywidget gives every instance a dynamic subclass of its own
        return {**LensDisplay.class_own_traits(sync=True), **LensInputs.class_own_traits(sync=True)}

    def __init__(self, pipe_or_model="toy", *, tuned=None, text_from=None, annotator: bool | None = None, **kwargs):
        unknown = sorted(set(kwargs) - set(self.inputs()))
        if unknown:
            raise TypeError(f"LensDashboard got unknown argument(s) {', '.join(unknown)}; its inputs are "
                            f"{', '.join(self.inputs())}")
        super().__init__(**{k: v for k, v in kwargs.items() if k != "encoder"})
        base = Lens.of(pipe_or_model)
        if isinstance(tuned, Lens):
            check_compatible(base.pipe, tuned.pipe)
        elif tuned is not None:
            tuned = Lens(load_tuned(base.pipe, tuned))  # load_tuned checks compatibility
        self._lenses = {base.adapter.encoder_name: (base, tuned)}
        self._text_from = None if text_from is None else Lens.of(text_from)
        self._annotator = is_toy(base.pipe) if annotator is None else options.check_flag("annotator", annotator)
        self.result: LensResult | None = None
        self.tuned_result: LensResult | None = None
        self.panels_result: list[Panel] = []
        self._previous: tuple[list[Panel], dict] | None = None  # the last complete run's panels and run_info
        self._thread: threading.Thread | None = None
        self._pending: dict | None = None
        self._lock = threading.Lock()
        self.max_batch: int | None = None  # images per pipeline call (None: from free memory)
        self.encoder = kwargs.get("encoder", "")  # its validator picks the Lens (a set always validates)
        if "final_norm" not in kwargs:  # default: the pipeline's own convention (False for SDXL)
            self.final_norm = self._lens.adapter.own_final_norm
        self.observe(self._check_inputs, names=[n for n in self.inputs() if n not in ("selected_layer",
                                                                                       "show_verdicts",
                                                                                       "presentation")])
        self._check_inputs()
        self.on_msg(self._on_message)

    # ---- the lensed encoder (several for SDXL, SD3, FLUX): one Lens per encoder -------------------------------
    @property
    def _lens(self) -> Lens:
        return self._lenses[self._encoder][0]

    @property
    def _tuned(self) -> Lens | None:
        return self._lenses[self._encoder][1]

    def _use_encoder(self, name: str) -> None:
        base, tuned = next(iter(self._lenses.values()))
        name = name.strip() or base.adapter.default_encoder()
        if name not in self._lenses:  # Lens() refuses an encoder the model lacks, naming the ones it has
            self._lenses[name] = (Lens(base.pipe, encoder=name), None if tuned is None else Lens(tuned.pipe,
                                                                                            encoder=name))
        self._encoder = name
        adapter = self._lens.adapter
        self.model_info = {
            "family": adapter.family, "num_layers": adapter.num_layers, "own_layer": adapter.own_layer,
            "own_final_norm": adapter.own_final_norm,
            "name": _model_name(base.pipe),
            "tuned": tuned is not None, "encoder": name, "encoders": [s.component for s in adapter.specs],
            "several_encoders": len(adapter.specs) > 1, "pooled": bool(adapter.spec.pooled),
            "text_from": None if self._text_from is None else _model_name(self._text_from.pipe),
            "annotator": self._annotator,
        }

    @t.validate("encoder")
    def _valid_encoder(self, proposal):
        if hasattr(self, "_lenses"):
            self._use_encoder(proposal["value"])
        return proposal["value"]

    # ---- inputs are checked when set (from Python or the browser), not only at Run ----------------------------
    @t.validate("num_inference_steps")
    def _valid_steps(self, proposal):
        return options.check_steps(proposal["value"])

    @t.validate("guidance_scale")
    def _valid_guidance(self, proposal):
        return options.check_guidance(proposal["value"])

    @t.validate("selected_layer")
    def _valid_selected_layer(self, proposal):
        layer = proposal["value"]
        last = self._lens.num_layers if hasattr(self, "_lenses") else None
        if layer < 0 or (last is not None and layer > last):
            raise ValueError(f"selected_layer must be a layer of this model, 0..{last}, got {layer}")
        return layer

    def _check_inputs(self, _change=None) -> None:
        """Say at once what is wrong with the inputs (the browser shows it and Run stays harmless): the Python
        checks are the only ones, so the browser cannot disagree with ``Lens.run``."""
        try:
            self.request()
        except (ValueError, TypeError) as err:
            self.input_error = str(err)
        else:
            self.input_error = ""

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
        """The current inputs as :func:`~difflens_widgets.panels.run_panels` arguments; raises ValueError/TypeError
        with a message to show."""
        if not self.prompt.strip():
            raise ValueError("the prompt is empty: type what the model should draw")
        values = {o.name: getattr(self, o.name) for o in WIDGET_OPTIONS if o.name != "encoder"}
        run_options = lens_options.run_arguments(values)
        if self._text_from is not None:
            run_options["text_from"] = self._text_from
        prompt = options.parse_prompts(self.prompt.strip())[0]
        params = check_panels(self._lens, prompt, compare=self.compare, tuned=self._tuned, **run_options)
        return dict(prompt=prompt, compare=self.compare, run_options=run_options, params=params)

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
        for lens, tuned in self._lenses.values():
            lens.cancel()
            if tuned is not None:
                tuned.cancel()

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
        """Lay out the new run at once (one cell per panel, layer and seed, filled by previews as they come) and
        forget the previous prompt's images, heatmaps and verdicts on screen; the previous complete run is kept
        aside so a Cancel can bring it back."""
        if self.panels_result and all(p.result.complete for p in self.panels_result):
            self._previous = (self.panels_result, self.run_info)
        params = request["params"]
        lens, tuned = self._lens, self._tuned
        self.previews, self.frames, self.heatmaps, self.verdicts, self.emergence = [], [], {}, [], {}
        self.panels = planned_panels(lens, request["prompt"], params, compare=request["compare"], tuned=tuned,
                                     text_from=self._text_from)
        self.run_layers, self.run_seeds = list(params["layers"]), list(params["seeds"])
        self.run_info = self._info(request["prompt"], params, request["compare"])
        if self.result is None or self.selected_layer not in params["layers"]:
            self.selected_layer = params["layers"][-1]  # the model's normal image first
        self.status, self.message, self.progress = "running", "", 0.0  # last: the new layout is already there
        self._thread = threading.Thread(target=self._work, args=(request, lens, tuned), daemon=True,
                                        name="difflens-run")
        self._thread.start()

    def _info(self, prompt: str, params: dict, compare: str) -> dict:
        """The line above the images: what they are, so a screenshot explains itself."""
        changed = {o.name: params[o.name] for o in WIDGET_OPTIONS
                   if o.name in params and o.name not in ("layers", "seeds", "final_norm", "num_inference_steps",
                                                           "guidance_scale", "encoder")
                   and params[o.name] not in (o.default, None, (), "")}
        return {"prompt": prompt, "model": self.model_info["name"], "family": self.model_info["family"],
                "encoder": params["encoder"], "num_layers": params["num_layers"],
                "own_layer": self._lens.adapter.own_layer if params["text_from"] is None else params["num_layers"],
                "final_norm": params["final_norm"], "steps": params["num_inference_steps"],
                "guidance": params["guidance_scale"], "compare": compare, "text_from": params["text_from"],
                "options": {k: list(v) if isinstance(v, tuple) else v for k, v in changed.items()}}

    def _work(self, request: dict, lens: Lens, tuned: Lens | None) -> None:
        import time

        started = time.perf_counter()
        first_preview: list[float] = []
        steps = request["params"]["num_inference_steps"]
        latest: dict[tuple, dict] = {}  # newest preview per (panel, layer, seed), every chunk's kept

        def progress(done, total, preview, key):
            self.progress = done / total
            if preview is not None:
                if not first_preview:
                    first_preview.append(time.perf_counter() - started)
                for (layer, seed), img in zip(preview.items, preview.images):
                    latest[(key, layer, seed)] = {"layer": layer, "seed": seed, "png": png_bytes(img), "kind": key,
                                                  "step": preview.step, "steps": steps}
                self.previews = list(latest.values())

        try:
            panels = run_panels(lens, request["prompt"], compare=request["compare"], tuned=tuned,
                                snapshot_every=max(1, steps // 5), max_batch=self.max_batch, progress=progress,
                                **request["run_options"])
            if all(p.result.complete for p in panels):
                self._show(panels, self.run_info)
                self.status, self.message = "done", ""
            else:
                self.message = self._after_cancel(panels, list(latest.values()))
                self.status = "cancelled"
            events = [e for p in panels for e in p.result.params.get("memory_events", [])]
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

    def _after_cancel(self, panels: list[Panel], previews: list[dict]) -> str:
        """What stays on screen after a Cancel, and the line that says what it is: the previous complete result,
        else the images that finished, else the last previews reached (labelled as previews)."""
        if self._previous is not None:
            self._show(*self._previous)
            return f"cancelled: still showing the previous result ({self._previous[0][0].result.prompt!r})"
        result = panels[0].result
        wanted = len(result.layers) * len(result.seeds) * len(self.panels)
        finished = sum(len(p.result.images) for p in panels)
        if finished:
            self._show([p for p in panels if p.result.images], self.run_info)
            return f"cancelled: showing the {finished} of {wanted} images that finished"
        self.frames = [dict(p, preview=True) for p in previews]
        if not previews:
            return "cancelled before any preview: nothing to show yet"
        step = min(p["step"] for p in previews)
        return f"cancelled: showing previews (denoising step {step} of {previews[0]['steps']}), not final images"

    def _show(self, panels: list[Panel], info: dict) -> None:
        from ..similarity import heatmap_specs

        self.panels_result = panels
        by_key = {p.key: p.result for p in panels}
        result, tuned = panels[0].result, by_key.get("tuned")
        self.result, self.tuned_result = result, tuned
        self.panels = [p.spec() for p in panels]
        self.run_layers, self.run_seeds = result.layers, result.seeds
        self.run_info = info
        self.frames = panel_frames(panels)
        complete = all(p.result.complete for p in panels)
        self.heatmaps = heatmap_specs(result, tuned) if complete else {}
        self._judge(panels)
        if self.selected_layer not in result.layers:
            self.selected_layer = result.layers[-1]

    def _judge(self, panels: list[Panel]) -> None:
        """On the toy model, the annotator's verdict on every image, and the prompt's emergence curve (share of
        seeds judged right per layer, first panel)."""
        self.verdicts, self.emergence = [], {}
        if not self._annotator:
            return
        from ..toy.annotate import emergence, judge_images

        verdicts = []
        for panel in panels:
            if panel.key == "difference":
                continue
            judged = judge_images(panel.result.images, panel.result.prompt)
            if judged is None:  # not a shapes-world caption: nothing to judge
                return
            verdicts += [{"kind": panel.key, "layer": l, "seed": s, "checks": checks}
                         for (l, s), checks in sorted(judged.items())]
            if panel is panels[0]:
                layers = panel.result.layers
                self.emergence = {"layers": layers, "curves": emergence(judged, layers)}
        self.verdicts = verdicts

    # ---- exports -----------------------------------------------------------------------------------------------
    def export(self, kind: str) -> tuple[str, bytes]:
        """(file name, bytes) of the last run, every panel included (raw, tuned and their difference; the
        ablation beside the lens; every token): ``grid`` (PNG), ``gif`` (animated across layers) or ``html`` (this
        dashboard, interactive, in one file that needs no kernel and no network)."""
        if self.result is None:
            raise ValueError("nothing to export yet: run the lens first")
        stem = exports.file_stem(self.result.prompt)
        if kind == "grid":
            return f"{stem}.png", exports.grid_png(self.panels_result)
        if kind == "gif":
            return f"{stem}.gif", exports.gif_bytes(self.panels_result)
        if kind == "html":
            from .standalone import standalone_html, widget_state

            frozen = dict(widget_state(self), status="done", message="", previews=[])
            return f"{stem}.html", standalone_html(frozen).encode()
        raise ValueError(f"unknown export {kind!r}; choose grid, gif or html")

    def _send_export(self, kind: str) -> None:
        try:
            name, data = self.export(kind)
        except ValueError as err:
            self.message = str(err)
            return
        self.send({"action": "download", "name": name}, buffers=[data])
