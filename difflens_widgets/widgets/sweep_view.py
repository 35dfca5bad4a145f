"""SweepView: browse a sweep's dataset in the dashboard — pick a family and a prompt, slide over its stored layer
images; on annotator-scored sweeps, the verdicts on every image and the family's emergence curve. Nothing is run:
the images are the PNGs the sweep wrote.
"""

from __future__ import annotations

from pathlib import Path

import traitlets as t

from ..sweeps import store
from ..sweeps.dataset import load_manifest, run_description
from ..toy.annotate import QUESTIONS, emergence, question_specs
from .display import LensDisplay


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
        self.rows, self.problems = store.load(self.folder)
        spec = self.manifest["spec"]
        firsts = self.rows.drop_duplicates("prompt_id").sort_values("prompt_id")
        self.sweep_entries = [
            {"id": int(r.prompt_id), "prompt": r.prompt, "family": r.family} for r in firsts.itertuples()
        ]
        layers = sorted(int(l) for l in self.rows["layer"].unique())
        self.model_info = {
            "name": spec["model"],
            "num_layers": max(layers),
            "tuned": False,
            "frozen": True,
            "browse": True,
            "annotator": "both" in self.rows.columns,
            "questions": question_specs(),
        }
        self.status = "done"
        self.selected_layer = max(layers)  # open on the last layer, as the dashboard does
        self.observe(self._show, names="sweep_selected")
        self.sweep_selected = self.sweep_entries[0]["id"]

    def _show(self, change) -> None:
        prompt_id = change["new"]
        rows = self.rows[self.rows["prompt_id"] == prompt_id].sort_values(["layer", "seed"])
        if rows.empty:
            ids = [e["id"] for e in self.sweep_entries]
            raise ValueError(f"prompt id {prompt_id} has no rows in this sweep; ids with rows: {ids[:20]}")
        spec, run, first = self.manifest["spec"], run_description(self.manifest), rows.iloc[0]
        self.prompt = str(first["prompt"])
        self.panels = [{"key": "lens", "label": "lens", "scale": None}]
        self.run_layers = sorted(int(l) for l in rows["layer"].unique())
        self.run_seeds = sorted(int(s) for s in rows["seed"].unique())
        self.run_info = {
            "prompt": self.prompt,
            "model": spec["model"],
            "encoder": run.get("encoder") or "default",
            "num_layers": run.get("num_layers", self.model_info["num_layers"]),
            "normal_layer": run.get("normal_layer"),
            "final_norm": run.get("final_norm", True),
            "steps": run.get("num_inference_steps", 20),
            "guidance": run.get("guidance_scale", 7.5),
            "compare": "none",
            "options": {"family": first["family"]} if first["family"] else {},
        }
        self.frames = [  # checked again as they are read: only PNGs inside the folder, as written
            {"layer": int(r.layer), "seed": int(r.seed), "kind": "lens", "png": store.read_image(self.folder, r.image)}
            for r in rows.itertuples()
        ]
        if self.problems:
            self.message = (
                f"{len(self.problems)} prompt(s) left out, their stored data damaged: "
                + "; ".join(str(p) for p in self.problems[:3])
                + (" …" if len(self.problems) > 3 else "")
            )
        self.verdicts = self._verdicts(rows)
        self.emergence = self._prompt_curve(self.verdicts)
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

    def _prompt_curve(self, verdicts: list[dict]) -> dict:
        """The shown prompt's own emergence curve: the share of its seeds judged right per layer (the family's
        curves, over every prompt, are what ``difflens report`` draws)."""
        if not verdicts:
            return {}
        judged = {(v["layer"], v["seed"]): v["checks"] for v in verdicts}
        layers = sorted({layer for layer, _ in judged})
        seeds = len({seed for _, seed in judged})
        return {"layers": layers, "curves": emergence(judged, layers), "title": f"this prompt, {seeds} seed(s)"}
