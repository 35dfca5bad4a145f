"""SweepView: browse a sweep's dataset in the dashboard — pick a family and a prompt, slide over its stored layer
images; on annotator-scored sweeps, the verdicts on every image and the family's emergence curve. Nothing is run:
the images are the PNGs the sweep wrote.
"""

from __future__ import annotations

from pathlib import Path

import traitlets as t

from ..sweep_report import NO_FAMILY, curves
from ..sweeps import load_manifest, load_rows
from .dashboard import LensDisplay

QUESTIONS = ("objects", "colors", "both", "relation")


class SweepView(LensDisplay):
    """``dl.SweepView("runs/sweep")``: the dashboard over a sweep folder (``difflens sweep ... --out DIR``)."""

    view = t.Unicode("sweep").tag(sync=True)  # tells the shared front-end bundle which view to draw
    sweep_entries = t.List().tag(sync=True)  # [{id, prompt, family}] of the prompts with rows
    sweep_selected = t.Int(-1).tag(sync=True)  # the prompt id shown

    @classmethod
    def synced_traits(cls) -> dict:
        return {**LensDisplay.class_own_traits(sync=True), **SweepView.class_own_traits(sync=True)}

    def __init__(self, folder: str | Path, **kwargs):
        super().__init__(**kwargs)
        self.folder = Path(folder)
        self.manifest = load_manifest(self.folder)
        self.rows = load_rows(self.folder)
        self._curves: dict | None = None
        spec = self.manifest["spec"]
        firsts = self.rows.drop_duplicates("prompt_id").sort_values("prompt_id")
        self.sweep_entries = [{"id": int(r.prompt_id), "prompt": r.prompt, "family": r.family}
                              for r in firsts.itertuples()]
        layers = sorted(int(l) for l in self.rows["layer"].unique())
        self.model_info = {"name": spec["model"], "num_layers": max(layers), "own_layer": max(layers),
                           "tuned": False, "frozen": True, "browse": True,
                           "annotator": "both" in self.rows.columns}
        self.status = "done"
        self.observe(self._show, names="sweep_selected")
        self.sweep_selected = self.sweep_entries[0]["id"]

    def _show(self, change) -> None:
        prompt_id = change["new"]
        rows = self.rows[self.rows["prompt_id"] == prompt_id].sort_values(["layer", "seed"])
        if rows.empty:
            ids = [e["id"] for e in self.sweep_entries]
            raise ValueError(f"prompt id {prompt_id} has no rows in this sweep; ids with rows: {ids[:20]}")
        spec, first = self.manifest["spec"], rows.iloc[0]
        self.prompt = str(first["prompt"])
        self.panels = [{"key": "lens", "label": "lens", "scale": None}]
        self.run_layers = sorted(int(l) for l in rows["layer"].unique())
        self.run_seeds = sorted(int(s) for s in rows["seed"].unique())
        options = spec["lens_options"]
        self.run_info = {"prompt": self.prompt, "model": spec["model"], "encoder": spec.get("encoder") or "default",
                         "num_layers": self.model_info["num_layers"], "own_layer": self.model_info["own_layer"],
                         "final_norm": options.get("final_norm", True) is not False,
                         "steps": options.get("num_inference_steps", 20),
                         "guidance": options.get("guidance_scale", 7.5),
                         "compare": "none", "options": {"family": first["family"]} if first["family"] else {}}
        self.frames = [{"layer": int(r.layer), "seed": int(r.seed), "kind": "lens",
                        "png": (self.folder / r.image).read_bytes()} for r in rows.itertuples()]
        self.verdicts = self._verdicts(rows)
        self.emergence = self._family_curve(first["family"])
        if self.selected_layer not in self.run_layers:
            self.selected_layer = self.run_layers[-1]

    def _verdicts(self, rows) -> list[dict]:
        if "both" not in rows.columns:
            return []
        out = []
        for r in rows.to_dict("records"):
            checks = {q: bool(r[q]) for q in QUESTIONS if q in r and r[q] is not None and r[q] == r[q]}
            if checks:
                out.append({"kind": "lens", "layer": int(r["layer"]), "seed": int(r["seed"]), "checks": checks})
        return out

    def _family_curve(self, family: str) -> dict:
        """The family's emergence curve over all its prompts and seeds: the annotator's shares from the curves
        `difflens report` plots (computed once per view)."""
        if self._curves is None:
            self._curves = curves(self.rows)
        name = family or NO_FAMILY
        found = {q: self._curves[q]["families"][name] for q in QUESTIONS
                 if q in self._curves and name in self._curves[q]["families"]}
        if not found:
            return {}
        layers = sorted({l for c in found.values() for l in c["layers"]})
        shares = {q: dict(zip(c["layers"], c["mean"])) for q, c in found.items()}
        curve = {q: [round(share[l], 4) if l in share else None for l in layers] for q, share in shares.items()}
        return {"layers": layers, "curves": curve, "title": f"family {family or '(none)'}"}
