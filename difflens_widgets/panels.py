"""Lenses read side by side: the normal lens and what it is compared with, as labelled panels of one run.

A panel is one LensResult with a row label: the normal lens; the final-norm ablation or the lensed negative
(``compare=``); a fine-tuned model (``tuned=``) and the per-pixel difference between the two; or one panel per
token (``per_token=True``). Every panel has the same layers and seeds, and the same seed starts from the same noise
in all of them, so the dashboard, the exports and the command line can show them interleaved by seed — row
"seed 0, lens" right above "seed 0, no final norm" — under one layer slider.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image

from . import lens_options
from .engine import Lens, Preview, share_progress
from .results import LensResult, labelled_grid

# viridis at five stops, as js/src/heatmap.js draws its scales: even in lightness, readable projected and in grey
VIRIDIS = np.array([[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]], dtype=np.float32)

DIFFERENCE_LABEL = "|raw − tuned|"
PanelProgress = Callable[[int, int, "Preview | None", str], "bool | None"]


@dataclass
class Panel:
    key: str  # "lens", "no_final_norm", "lensed_negative", "raw", "tuned", "difference", "token3"
    label: str  # the row label: "lens", "no final norm", "tuned", "token 'red'"
    result: LensResult
    scale: dict | None = None  # a derived panel's colour scale: {"title", "min", "max"}

    def spec(self) -> dict:
        return {"key": self.key, "label": self.label, "scale": self.scale}


def run_panels(lens: Lens, prompt: str, *, compare: str = "none", tuned: Lens | None = None,
               progress: PanelProgress | None = None, **run_options) -> list[Panel]:
    """Lens ``prompt`` as the dashboard shows it: the normal lens, then what ``compare`` or ``tuned`` adds.

    ``run_options`` are :meth:`Lens.run`'s. ``progress(done, total, preview, key)`` sees the whole sequence as one
    run; ``key`` names the panel being denoised. A cancelled run returns the panels reached, the last incomplete.
    """
    params = check_panels(lens, prompt, compare=compare, tuned=tuned, **run_options)
    runs = _runs(lens, params, compare, tuned, run_options)
    panels: list[Panel] = []
    for number, (key, label, runner, kwargs) in enumerate(runs):
        results = runner.run(prompt, progress=_share(progress, number, len(runs), key), **kwargs)
        if isinstance(results, list):  # per_token: one result per token
            panels += [Panel(f"token{r.params['token_position']}", f"token {_token_text(r)}", r) for r in results]
        else:
            panels.append(Panel(key, label, results))
        if not all(p.result.complete for p in panels):
            return panels
    if tuned is not None:
        panels.append(difference_panel(panels[0].result, panels[-1].result))
    return panels


def check_panels(lens: Lens, prompt: str, *, compare: str = "none", tuned: Lens | None = None,
                 **run_options) -> dict:
    """Every argument of :func:`run_panels` checked before any work; the resolved parameters of the normal lens."""
    compare = lens_options.check_compare(compare)
    params = lens.run(prompt, dry_run=True, **run_options)
    if params["per_token"] and (compare != "none" or tuned is not None):
        raise ValueError("per_token already shows one row per token; it cannot be combined with compare or a "
                         "tuned model — turn one of them off")
    if compare == "lens_negative" and params["lens_negative"]:
        raise ValueError("compare='lens_negative' sets the lensed negative beside the normal lens; turn "
                         "lens_negative off for the normal lens")
    return params


def planned_panels(lens: Lens, prompt: str, params: dict, *, compare: str = "none", tuned: Lens | None = None,
                   text_from=None) -> list[dict]:
    """The panels :func:`run_panels` will return (their :meth:`Panel.spec`), known before any denoising so a
    dashboard can lay out every cell at once. Per-token rows come from one text-encoder pass."""
    if params["per_token"]:
        source = Lens.of(text_from) if text_from is not None else lens
        _, tokens = source.embed(prompt, layers=[0])
        return [{"key": f"token{p}", "label": f"token {p}:{tokens[p].replace('</w>', '')}", "scale": None}
                for p in range(tokens.real)]
    specs = [{"key": key, "label": label, "scale": None} for key, label, _, _ in _runs(lens, params, compare, tuned, {})]
    if tuned is not None:
        specs.append({"key": "difference", "label": DIFFERENCE_LABEL, "scale": None})
    return specs


def _runs(lens: Lens, params: dict, compare: str, tuned: Lens | None, run_options: dict) -> list[tuple]:
    """(panel key, label, lens, Lens.run options) of each run, in the order shown."""
    main = "raw" if tuned is not None else "lens"
    runs = [(main, main, lens, run_options)]
    if compare == "final_norm":
        flipped = not params["final_norm"]
        runs.append(("final_norm" if flipped else "no_final_norm", "final norm" if flipped else "no final norm",
                     lens, dict(run_options, final_norm=flipped)))
    elif compare == "lens_negative":
        runs.append(("lensed_negative", "lensed negative", lens, dict(run_options, lens_negative=True)))
    if tuned is not None:
        runs.append(("tuned", "tuned", tuned, run_options))
    return runs


def _token_text(result: LensResult) -> str:
    return f"{result.params['token_position']}:{str(result.params['token']).replace('</w>', '')}"


def _share(progress: PanelProgress | None, number: int, count: int, key: str):
    """:func:`~difflens_widgets.engine.share_progress` for the ``number``-th panel run, naming the panel (a
    per-token preview names its token's panel)."""
    if progress is None:
        return None

    def keyed(done: int, total: int, preview: Preview | None):
        token = getattr(preview, "token", None)
        return progress(done, total, preview, key if token is None else f"token{token}")

    return share_progress(keyed, number, count)


def difference_panel(raw: LensResult, tuned: LensResult) -> Panel:
    """|raw − tuned| per pixel (mean over RGB, 0..255) as a viridis heatmap on one scale for the whole run, so
    layers and seeds can be compared; the scale's top is the run's largest difference."""
    pairs = {k: (raw.images[k], tuned.images[k]) for k in raw.images if k in tuned.images}
    diffs = {k: np.abs(np.asarray(a, np.float32) - np.asarray(b, np.float32)).mean(axis=-1)
             for k, (a, b) in pairs.items()}
    top = max([float(d.max()) for d in diffs.values()] + [1.0])
    images = {k: colourise(d / top) for k, d in diffs.items()}
    result = LensResult(raw.prompt, raw.layers, raw.seeds, images, {}, raw.tokens,
                        dict(raw.params, derived="|raw − tuned|, mean over RGB"), complete=raw.complete)
    return Panel("difference", DIFFERENCE_LABEL, result, {"title": "|raw − tuned| (0–255)", "min": 0.0,
                                                           "max": round(top, 1)})


def colourise(values: np.ndarray) -> Image.Image:
    """Values in 0..1 → an RGB image on the viridis scale."""
    position = np.clip(values, 0, 1) * (len(VIRIDIS) - 1)
    low = np.minimum(position.astype(int), len(VIRIDIS) - 2)
    frac = (position - low)[..., None]
    rgb = VIRIDIS[low] * (1 - frac) + VIRIDIS[low + 1] * frac
    return Image.fromarray(np.round(rgb).astype(np.uint8))


def panels_grid(panels: list[Panel]) -> Image.Image:
    """Rows interleaved by seed (each panel of seed 0, then of seed 1, …), columns = layers, labelled."""
    if len(panels) == 1:
        return panels[0].result.grid()
    first = panels[0].result
    layers = [l for l in first.layers if any((l, s) in p.result.images for p in panels for s in first.seeds)]
    if not layers:
        raise ValueError("these panels hold no image (the run was cancelled before any layer finished)")
    rows, labels = [], []
    for seed in first.seeds:
        for panel in panels:
            rows.append([panel.result.images.get((l, seed)) for l in layers])
            labels.append(f"seed {seed}\n{panel.label[:14]}")
    return labelled_grid(rows, labels, [f"L{l}" for l in layers], left=100)
