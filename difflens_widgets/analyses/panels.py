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

from ..core import options as lens_options
from ..core import validate
from ..core.engine import Lens, Preview, share_progress
from ..core.results import LensResult, Tokens, colourise, labelled_grid, readable
from ..core.run import LensRun

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


@dataclass(frozen=True)
class PanelRun:
    """One run of a panel plan: the panel's key and row label, the Lens that runs it, the resolved run."""

    key: str
    label: str
    lens: Lens
    run: LensRun


@dataclass(frozen=True)
class PanelPlan:
    """The runs :func:`execute_panels` makes, every argument checked and resolved once (:func:`plan_panels`): the
    normal lens first, then the compared run or the tuned model's."""

    prompt: str
    compare: str
    runs: tuple[PanelRun, ...]
    tuned: bool

    @property
    def main(self) -> LensRun:
        return self.runs[0].run

    @property
    def images(self) -> int:
        """How many images the plan makes (every panel, every token of a per-token run)."""
        return self.main.images * len(self.runs)

    def tokens(self) -> Tokens:
        """The prompt's tokens as the lensed encoder reads them (another model's, for a cross-model lens)."""
        encoded = (self.main.source or self.runs[0].lens.adapter).encode([self.prompt])
        return Tokens.shown_in(encoded, 0)

    def specs(self) -> list[dict]:
        """The panels :func:`execute_panels` will return (their :meth:`Panel.spec`), known before any denoising so
        a dashboard can lay out every cell at once. Per-token rows come from one text-encoder pass."""
        if self.main.per_token:
            tokens = self.tokens()
            return [
                {"key": f"token{p}", "label": f"token {p}:{readable(tokens[p])}", "scale": None} for p in tokens.shown
            ]
        specs = [{"key": r.key, "label": r.label, "scale": None} for r in self.runs]
        if self.tuned:
            specs.append({"key": "difference", "label": DIFFERENCE_LABEL, "scale": None})
        return specs


def plan_panels(
    lens: Lens, prompt: str, *, compare: str = "none", tuned: Lens | None = None, **run_options
) -> PanelPlan:
    """Check every argument and resolve the normal lens once (:meth:`Lens.resolve`); the compared run is derived
    from it, and a tuned model runs the very same resolved run."""
    compare = lens_options.check_compare(compare)
    run = lens.resolve(prompt, **run_options)
    if not run.single:
        raise TypeError("panels take one prompt (a string)")
    if run.per_token and (compare != "none" or tuned is not None):
        raise ValueError(
            "per_token already shows one row per token; it cannot be combined with compare or a "
            "tuned model — turn one of them off"
        )
    if compare == "lens_negative" and run.lens_negative:
        raise ValueError(
            "compare='lens_negative' sets the lensed negative beside the normal lens; turn "
            "lens_negative off for the normal lens"
        )
    main = "raw" if tuned is not None else "lens"
    runs = [PanelRun(main, main, lens, run)]
    if compare == "final_norm":
        flipped = not run.final_norm
        runs.append(
            PanelRun(
                "final_norm" if flipped else "no_final_norm",
                "final norm" if flipped else "no final norm",
                lens,
                run.replace(final_norm=flipped),
            )
        )
    elif compare == "lens_negative":
        runs.append(PanelRun("lensed_negative", "lensed negative", lens, run.replace(lens_negative=True)))
    if tuned is not None:
        runs.append(PanelRun("tuned", "tuned", tuned, run))
    validate.check_work(run.images * len(runs), run.height, run.width, "layers × seeds × panels")
    return PanelPlan(run.prompts[0], compare, tuple(runs), tuned is not None)


def execute_panels(plan: PanelPlan, progress: PanelProgress | None = None, **changes) -> list[Panel]:
    """Run a :class:`PanelPlan` (``changes``: what :meth:`LensRun.replace` may vary for this execution, such as
    ``snapshot_every``). ``progress(done, total, preview, key)`` sees the whole sequence as one run; ``key`` names
    the panel being denoised. A cancelled run returns the panels reached, the last incomplete."""
    panels: list[Panel] = []
    for number, panel_run in enumerate(plan.runs):
        run = panel_run.run.replace(**changes) if changes else panel_run.run
        results = panel_run.lens.execute(run, _share(progress, number, len(plan.runs), panel_run.key))
        if isinstance(results, list):  # per_token: one result per token
            panels += [Panel(f"token{r.params['token_position']}", f"token {_token_text(r)}", r) for r in results]
        else:
            panels.append(Panel(panel_run.key, panel_run.label, results))
        if not all(p.result.complete for p in panels):
            return panels
    if plan.tuned:
        panels.append(difference_panel(panels[0].result, panels[-1].result))
    return panels


def run_panels(
    lens: Lens,
    prompt: str,
    *,
    compare: str = "none",
    tuned: Lens | None = None,
    progress: PanelProgress | None = None,
    **run_options,
) -> list[Panel]:
    """Lens ``prompt`` as the dashboard shows it: the normal lens, then what ``compare`` or ``tuned`` adds
    (:func:`plan_panels`, then :func:`execute_panels`). ``run_options`` are :meth:`Lens.run`'s."""
    return execute_panels(plan_panels(lens, prompt, compare=compare, tuned=tuned, **run_options), progress)


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
    diffs = {
        k: np.abs(np.asarray(a, np.float32) - np.asarray(b, np.float32)).mean(axis=-1) for k, (a, b) in pairs.items()
    }
    top = max([float(d.max()) for d in diffs.values()] + [1.0])
    images = {k: colourise(d / top) for k, d in diffs.items()}
    result = LensResult(
        raw.prompt,
        raw.layers,
        raw.seeds,
        images,
        {},
        raw.tokens,
        dict(raw.params, derived="|raw − tuned|, mean over RGB"),
        complete=raw.complete,
    )
    return Panel(
        "difference", DIFFERENCE_LABEL, result, {"title": "|raw − tuned| (0–255)", "min": 0.0, "max": round(top, 1)}
    )


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
    return labelled_grid(rows, labels, [f"L{l}" for l in layers], left=130, title=first.prompt)
