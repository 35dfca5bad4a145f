"""LensDisplay: what the dashboard's front-end draws — a run's images, what they are, the heatmaps and verdicts —
shared by the LensDashboard (which runs the lens) and the SweepView (which browses a sweep's stored images)."""

from __future__ import annotations

import numpy as np
import traitlets as t

from ..analyses.panels import Panel
from ..core import options as lens_options
from ..core.results import LensResult, shown_span, word_spans
from .assets import BundledWidget, png_bytes

WIDGET_OPTIONS = tuple(o for o in lens_options.OPTIONS if "widget" in o.surfaces)


def frames_of(result: LensResult, kind: str = "lens") -> list[dict]:
    return [
        {"layer": l, "seed": s, "kind": kind, "png": png_bytes(img)} for (l, s), img in sorted(result.images.items())
    ]


def attention_payload(panels: list[Panel]) -> dict:
    """What the front-end needs to lay a word's map over every image: the prompt's words (their piece
    positions among the real tokens), the maps' grid, and per (panel, layer, seed) every real token's map as uint8
    (scaled to that image's largest value, as DAAM shows them) with the word-independent per-step mass for the
    layer × step strip."""
    first = panels[0].result
    if not first.attention_maps:
        return {}
    shown = shown_span(first.tokens, first.params)  # the user's tokens: a chat template's are never offered
    real = shown.stop
    words = [{"label": w, "positions": p} for w, p in word_spans(first.tokens, shown)]
    frames, grid = [], None
    for panel in panels:
        for (layer, seed), maps in sorted(panel.result.attention_maps.items()):
            maps = maps[:real]
            grid = list(maps.shape[1:])
            top = float(maps.max()) or 1.0
            mass = panel.result.attention_mass.get((layer, seed))
            frames.append({"kind": panel.key, "layer": layer, "seed": seed,
                           "maps": np.round(maps / top * 255).astype(np.uint8).tobytes(),
                           "mass": [] if mass is None else np.round(mass[:, :real], 4).tolist()})  # fmt: skip
    return {"words": words, "grid": grid, "tokens": real, "frames": frames}


def panel_frames(panels: list[Panel]) -> list[dict]:
    return [frame for panel in panels for frame in frames_of(panel.result, panel.key)]


class LensDisplay(BundledWidget):
    """What the front-end draws — a run's images, what they are, the heatmaps and verdicts — shared by the
    LensDashboard (which runs the lens) and the SweepView (which browses a sweep's stored images)."""

    # inputs besides the lens options (edited in the browser, or from Python; the only constructor arguments)
    prompt = t.Unicode("a red circle left of a blue square").tag(sync=True, input=True)
    selected_layer = t.Int(0).tag(sync=True, input=True)
    show_verdicts = t.Bool(False).tag(sync=True, input=True)  # toy model: the annotator's ✓✗ on every image
    presentation = t.Bool(False).tag(sync=True, input=True)  # large type, for a projector

    # outputs (set by Python only)
    model_info = t.Dict().tag(sync=True)
    option_specs = t.List([o.spec() for o in WIDGET_OPTIONS]).tag(sync=True)  # how to draw each option's control
    input_error = t.Unicode("").tag(sync=True)  # what is wrong with the inputs now ("" = nothing)
    status = t.Unicode("idle").tag(sync=True)  # idle | loading | confirm | running | done | cancelled | error | invalid
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
    # where each word lands (runs with attention on): the words, each (panel, layer, seed)'s maps as uint8 bytes
    attention_maps = t.Dict().tag(sync=True)
    attention_word = t.Int(-1).tag(sync=True, input=True)  # the word whose map is laid over the images (-1: none)
    attention_opacity = t.Float(0.6).tag(sync=True, input=True)

    @classmethod
    def synced_traits(cls) -> dict:
        """The synced traits this view adds to anywidget's own (override: the classes that declare them)."""
        return LensDisplay.class_own_traits(sync=True)

    @classmethod
    def default_state(cls) -> dict:
        """Every synced trait of the view with its default value: the one source for the standalone page and the
        JavaScript tests' fake model (docs/widget-protocol.md documents each)."""
        return {name: trait.default() for name, trait in sorted(cls.synced_traits().items())}
