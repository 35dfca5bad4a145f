"""LensDashboard: the notebook face of the lens (an anywidget; front-end source in ``js/``).

State lives in traitlets so that re-displaying the widget, or reloading the page, shows the last result again.
Runs happen in a worker thread so the kernel stays responsive and progress can stream to the browser; images
cross as PNG bytes (binary buffers), never base64 text, and no torch object is ever held by the widget.
"""

from __future__ import annotations

import threading

import traitlets as t

from ..analyses import exports
from ..analyses.panels import Panel, PanelPlan, execute_panels, plan_panels
from ..analyses.tuning import check_compatible, load_tuned
from ..core import lifecycle
from ..core import options as lens_options
from ..core import validate as options
from ..core.engine import Lens
from ..core.models import EMBEDDED_MODELS, embedded_name, is_toy
from ..core.results import LensResult
from ..toy.annotate import question_specs
from ..toy.world import unknown_words_note
from .assets import png_bytes
from .display import WIDGET_OPTIONS, LensDisplay, attention_payload, panel_frames

# inputs that change what is shown, not what is run: no resolution when they change
VIEW_INPUTS = ("selected_layer", "show_verdicts", "presentation", "attention_word", "attention_opacity")
CONFIRM_IMAGES = 100  # a run making more images than this is started on a second Run, after its size is said


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min"


def _model_label(model) -> str:
    return f"the embedded model {model}" if isinstance(model, str) and model in EMBEDDED_MODELS else str(model)


def _model_name(pipe) -> str:
    if is_toy(pipe):
        return f"{embedded_name(pipe)} (an embedded shapes-world model)"
    return str(getattr(pipe.config, "_name_or_path", "") or type(pipe).__name__)


def _option_trait(option: lens_options.LensOption) -> t.TraitType:
    """A dashboard input for a lens option, named as the option (so ``dash.num_inference_steps = 30``)."""
    if option.kind == "flag":  # a default of None means "the family's own choice": tri-state, resolved per run
        return t.Bool(option.default, allow_none=option.default is None).tag(sync=True, input=True)
    make = {"int": t.Int, "float": t.Float}.get(option.kind, t.Unicode)
    return make(option.default).tag(sync=True, input=True)


# the lens options as traits, from their one definition in lens_options (checked when set or at Run)
LensInputs = type("LensInputs", (t.HasTraits,), {o.name: _option_trait(o) for o in WIDGET_OPTIONS})


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
        return ["prompt", *(o.name for o in WIDGET_OPTIONS)] + [
            n for n in vars(LensDisplay) if n in tagged and n != "prompt"
        ]

    @classmethod
    def synced_traits(cls) -> dict:
        # LensDashboard by name, not cls: anywidget gives every instance a dynamic subclass of its own
        return {**LensDisplay.class_own_traits(sync=True), **LensInputs.class_own_traits(sync=True)}

    def __init__(
        self,
        pipe_or_model="toy",
        *,
        tuned=None,
        text_from=None,
        annotator: bool | None = None,
        background_load: bool = False,
        on_loaded=None,
        **kwargs,
    ):
        """``background_load=True``: the widget is there at once ("loading the model…") and the pipeline (and
        ``tuned`` / ``text_from``) loads in the background; a Run pressed meanwhile starts when it has loaded.
        ``on_loaded(pipe)`` is called with the loaded pipeline (the magic keeps it for the next cell)."""
        unknown = sorted(set(kwargs) - set(self.inputs()))
        if unknown:
            raise TypeError(
                f"LensDashboard got unknown argument(s) {', '.join(unknown)}; its inputs are {', '.join(self.inputs())}"
            )
        super().__init__(**{k: v for k, v in kwargs.items() if k != "encoder"})
        self._lenses: dict[str, tuple[Lens, Lens | None]] = {}  # filled when the model has loaded
        self._run_when_loaded = False
        self._confirmed: PanelPlan | None = None  # a large run the user has been told about
        self._seconds_per_image: float | None = None  # the last complete run's pace
        self.result: LensResult | None = None
        self.tuned_result: LensResult | None = None
        self.panels_result: list[Panel] = []
        self._previous: tuple[list[Panel], dict] | None = None  # the last complete run's panels and run_info
        self._thread: threading.Thread | None = None
        self._pending: PanelPlan | None = None
        self._plan: PanelPlan | None = None  # the inputs, resolved: what Run runs (None while they are invalid)
        self._lock = threading.Lock()
        self._toy = False  # an embedded shapes-world model (set when it has loaded)
        self._note = ""  # the run's words outside a toy model's world, kept beside every status message
        self.max_batch: int | None = None  # images per pipeline call (None: from free memory)
        self.on_msg(self._on_message)
        load = (pipe_or_model, tuned, text_from, annotator, kwargs.get("encoder", ""), on_loaded)
        if background_load:
            self.status, self.message = "loading", f"loading the model ({_model_label(pipe_or_model)})…"
            self._thread = threading.Thread(target=self._load_in_background, args=load, daemon=True,
                                            name="difflens-load")  # fmt: skip
            lifecycle.track_worker(self._thread)
            self._thread.start()
        else:
            self._load(*load)

    @property
    def loaded(self) -> bool:
        return bool(self._lenses)

    def _load(self, pipe_or_model, tuned, text_from, annotator, encoder, on_loaded) -> None:
        base = Lens.of(pipe_or_model)
        if isinstance(tuned, Lens):
            check_compatible(base.pipe, tuned.pipe)
        elif tuned is not None:
            tuned = Lens(load_tuned(base.pipe, tuned))  # load_tuned checks compatibility
        self._text_from = None if text_from is None else Lens.of(text_from)
        self._toy = is_toy(base.pipe)
        self._annotator = self._toy if annotator is None else options.check_flag("annotator", annotator)
        self._lenses = {base.adapter.encoder_name: (base, tuned)}
        self.encoder = encoder  # its validator picks the Lens (a set always validates)
        self.observe(
            self._check_inputs,
            names=[n for n in self.inputs() if n not in VIEW_INPUTS],
        )
        self._check_inputs()
        if on_loaded is not None:
            on_loaded(base.pipe)

    def _load_in_background(self, *load) -> None:
        try:
            self._load(*load)
        except Exception as err:  # shown in the widget: the cell has long returned
            self.status, self.message = "error", f"the model could not be loaded: {type(err).__name__}: {err}"
            return
        self.status, self.message = "idle", ""
        with self._lock:
            self._thread = None
        if self._run_when_loaded:
            self.run()

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
            self._lenses[name] = (
                Lens(base.pipe, encoder=name),
                None if tuned is None else Lens(tuned.pipe, encoder=name),
            )
        self._encoder = name
        adapter = self._lens.adapter
        self.model_info = {
            "family": adapter.family,
            "num_layers": adapter.num_layers,
            "own_layer": adapter.own_layer,
            "own_final_norm": adapter.own_final_norm,
            "name": _model_name(base.pipe),
            "tuned": tuned is not None,
            "encoder": name,
            "encoders": [s.component for s in adapter.specs],
            "several_encoders": len(adapter.specs) > 1,
            "pooled": bool(adapter.spec.pooled),
            "text_from": None if self._text_from is None else _model_name(self._text_from.pipe),
            "annotator": self._annotator,
            "questions": question_specs() if self._annotator else [],
        }

    @t.validate("encoder")
    def _valid_encoder(self, proposal):
        if getattr(self, "_lenses", None):
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
        last = self._lens.num_layers if getattr(self, "_lenses", None) else None
        if layer < 0 or (last is not None and layer > last):
            raise ValueError(f"selected_layer must be a layer of this model, 0..{last}, got {layer}")
        return layer

    def _check_inputs(self, _change=None) -> None:
        """Resolve the inputs as they are now, once per change: the plan Run will run, or what is wrong with them
        (the browser shows it at once and Run stays harmless). The engine's checks are the only ones, so the
        browser cannot disagree with ``Lens.run``."""
        try:
            self._plan = self.request()
        except (ValueError, TypeError) as err:
            self._plan, self.input_error = None, str(err)
        else:
            self.input_error = ""
            if self.status in ("invalid", "confirm"):  # the refusal (or the question) was about other inputs
                self.status, self.message = "idle", ""

    # ---- commands ----------------------------------------------------------------------------------------------
    def _on_message(self, _widget, content, _buffers) -> None:
        action = content.get("action") if isinstance(content, dict) else None
        if action == "run":
            self.run()
        elif action == "cancel":
            self.cancel()
        elif action == "export":
            self._send_export(content.get("kind", ""))

    def request(self) -> PanelPlan:
        """The current inputs resolved (:func:`~difflens_widgets.analyses.panels.plan_panels`): what Run would run;
        raises ValueError/TypeError with a message to show."""
        if not self.prompt.strip():
            raise ValueError("the prompt is empty: type what the model should draw")
        values = {o.name: getattr(self, o.name) for o in WIDGET_OPTIONS if o.name != "encoder"}
        run_options = lens_options.run_arguments(values)
        if self._text_from is not None:
            run_options["text_from"] = self._text_from
        return plan_panels(self._lens, self.prompt.strip(), compare=self.compare, tuned=self._tuned, **run_options)

    def run(self) -> None:
        """Start the inputs' resolved plan in the background (resolved when the inputs last changed, not again);
        a run already going is cancelled and this one starts when it has stopped (never two at once). Pressed while
        the model loads, it starts when the model is there."""
        if not self.loaded:
            self._run_when_loaded = True
            if self.status == "loading":
                self.message = self.message.split(" — ")[0] + " — the run starts when it has loaded"
            return
        plan = self._plan
        if plan is None:
            self.status, self.message = "invalid", self.input_error
            return
        if plan.images > CONFIRM_IMAGES and self._confirmed is not plan:  # say how much, let the user decide
            self._confirmed = plan
            pace = self._seconds_per_image
            estimate = f", about {_duration(pace * plan.images)} at the last run's pace" if pace else ""
            self.status = "confirm"
            self.message = f"this run makes {plan.images} images{estimate}: press Run again to go on"
            return
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                self._pending = plan  # the newest Run wins: it starts when the current one has stopped
                self._stop_runs()
                return
            self._start(plan)

    def cancel(self) -> None:
        """Stop the run going, and forget a run queued behind it (a Cancel cancels what the user asked for)."""
        with self._lock:
            self._pending = None
            self._run_when_loaded = False
        self._stop_runs()

    def _stop_runs(self) -> None:
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
    def _start(self, plan: PanelPlan) -> None:
        """Lay out the new run at once (one cell per panel, layer and seed, filled by previews as they come) and
        forget the previous prompt's images, heatmaps and verdicts on screen; the previous complete run is kept
        aside so a Cancel can bring it back."""
        if self.panels_result and all(p.result.complete for p in self.panels_result):
            self._previous = (self.panels_result, self.run_info)
        run = plan.main
        with self.hold_sync():  # one update: the new run's line and layout, the old images gone (no flash)
            self.run_info = self._info(plan)
            self.panels = plan.specs()
            self.run_layers, self.run_seeds = list(run.layers), list(run.seeds)
            self.previews, self.frames, self.heatmaps, self.verdicts, self.emergence = [], [], {}, [], {}
            self.attention_maps = {}
        if self.result is None or self.selected_layer not in run.layers:
            self.selected_layer = run.layers[-1]  # the model's normal image first
        # a prompt outside a toy model's world: said before any denoising and kept beside every later message
        self._note = unknown_words_note(plan.prompt) if self._toy else ""
        self.status, self.message, self.progress = "running", self._note, 0.0  # last: the new layout is already there
        self._thread = threading.Thread(target=self._work, args=(plan,), daemon=True, name="difflens-run")
        lifecycle.track_worker(self._thread)  # joined, its run cancelled, if the interpreter exits meanwhile
        self._thread.start()

    def _info(self, plan: PanelPlan) -> dict:
        """The line above the images: what they are, so a screenshot explains itself."""
        run = plan.main
        params = run.params()
        changed = {
            o.name: params[o.name]
            for o in WIDGET_OPTIONS
            if o.name in params
            and o.name not in ("layers", "seeds", "final_norm", "num_inference_steps", "guidance_scale", "encoder")
            and params[o.name] not in (o.default, None, (), "")
        }
        if run.attention is not None:
            changed["attention"] = run.attention.summary()
        return {
            "prompt": plan.prompt,
            "model": self.model_info["name"],
            "family": self.model_info["family"],
            "encoder": run.encoder,
            "num_layers": run.num_layers,
            "normal_layer": run.normal_layer,
            "final_norm": run.final_norm,
            "steps": run.num_inference_steps,
            "guidance": run.guidance_scale,
            "compare": plan.compare,
            "text_from": run.text_from,
            "options": {k: list(v) if isinstance(v, tuple) else v for k, v in changed.items()},
        }

    def _work(self, plan: PanelPlan) -> None:
        import time

        started = time.perf_counter()
        first_preview: list[float] = []
        steps = plan.main.num_inference_steps
        latest: dict[tuple, dict] = {}  # newest preview per (panel, layer, seed), every chunk's kept

        said = [0.0]

        def progress(done, total, preview, key):
            self.progress = done / total
            now = time.perf_counter()
            if done and now - said[0] > 1.0:  # an estimate from the steps measured so far, once a second
                said[0] = now
                self.message = _joined(self._note, f"about {_duration((now - started) / done * (total - done))} left")
            if preview is not None:
                if not first_preview:
                    first_preview.append(time.perf_counter() - started)
                for (layer, seed), img in zip(preview.items, preview.images):
                    latest[(key, layer, seed)] = {
                        "layer": layer,
                        "seed": seed,
                        "png": png_bytes(img),
                        "kind": key,
                        "step": preview.step,
                        "steps": steps,
                    }
                self.previews = list(latest.values())

        try:
            panels = execute_panels(plan, progress, snapshot_every=max(1, steps // 5), max_batch=self.max_batch)
            if all(p.result.complete for p in panels):
                self._show(panels, self.run_info)
                self.status, self.message = "done", _joined(self._note, non_finite_line(panels))
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
            self.timings = {
                "first_preview_s": first_preview[0] if first_preview else None,
                "total_s": time.perf_counter() - started,
            }
            if self.status == "done":
                self._seconds_per_image = self.timings["total_s"] / max(1, plan.images)
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
        from ..analyses.similarity import heatmap_specs

        self.panels_result = panels
        by_key = {p.key: p.result for p in panels}
        result, tuned = panels[0].result, by_key.get("tuned")
        self.result, self.tuned_result = result, tuned
        self.panels = [p.spec() for p in panels]
        self.run_layers, self.run_seeds = result.layers, result.seeds
        self.run_info = info
        self.frames = panel_frames(panels)
        self.attention_maps = attention_payload(panels)
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
            if panel.key == "difference" or panel.key.startswith("token"):
                continue  # a difference map, or one token's image, is not a drawing of the whole prompt
            judged = judge_images(panel.result.images, panel.result.prompt)
            if judged is None:  # not a shapes-world caption: nothing to judge
                return
            verdicts += [
                {"kind": panel.key, "layer": l, "seed": s, "checks": checks}
                for (l, s), checks in sorted(judged.items())
            ]
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
        if self.status in ("running", "loading"):
            raise ValueError(
                "a run is going: export when it has finished (or after Cancel), so the file holds "
                "what the dashboard shows"
            )
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


def _joined(*parts: str) -> str:
    """Status-line parts that say something, in order, as one line."""
    return "; ".join(p for p in parts if p)


def non_finite_line(panels: list[Panel]) -> str:
    """The engine's line about images that came out NaN/inf (left out, with the likely cause), once per panel
    that has one; empty when every image is finite."""
    return "; ".join(dict.fromkeys(p.result.problem for p in panels if p.result.problem))
