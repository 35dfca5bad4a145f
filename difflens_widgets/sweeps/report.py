"""Emergence curves from a sweep's dataset alone (``difflens report DIR``): per prompt family and layer, the mean
of every score column with a 95% confidence interval — the paper's Figures 3 and 5, for any model a sweep ran on.

Boolean scores (the annotator's objects / colors / both / relation) are shares with Wilson intervals; numeric
scores (CLIP cosines) are means with normal intervals (mean ± 1.96·sd/√n). The emergence layer of a curve is the
first layer whose value reaches 80% of the last layer's. Writes ``DIR/report/curves.json`` and one standalone
``DIR/report/report.html`` (plotly inlined: no network), and returns the printed table.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from . import store
from .dataset import load_manifest, run_description

ID_COLUMNS = {"prompt_id", "prompt", "family", "layer", "seed", "image", "image_sha256", "spec_sha256", "options"}
EMERGENCE_FRACTION = 0.8
NO_FAMILY = "(no family)"  # the family of prompt rows that name none


def wilson(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    if n == 0:
        return (math.nan, math.nan)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def score_columns(rows) -> list[str]:
    return [c for c in rows.columns if c not in ID_COLUMNS and rows[c].notna().any()]


def curves(rows) -> dict:
    """{score: {family: {"layers", "mean", "low", "high", "n", "prompts", "emergence_layer"}}}."""
    out = {}
    rows = rows.assign(family=rows["family"].replace("", NO_FAMILY))
    for column in score_columns(rows):
        values = rows[["family", "layer", "prompt_id", column]].dropna(subset=[column])
        boolean = values[column].map(lambda v: isinstance(v, bool) or str(v) in ("True", "False")).all()
        per_family = {}
        for family, group in values.groupby("family", sort=True):
            layers, mean, low, high, counts = [], [], [], [], []
            for layer, cell in group.groupby("layer", sort=True):
                x = cell[column].astype(float)
                layers.append(int(layer))
                counts.append(int(len(x)))
                mean.append(float(x.mean()))
                if boolean:
                    lo, hi = wilson(int(x.sum()), len(x))
                else:
                    half = 1.96 * float(x.std(ddof=1)) / math.sqrt(len(x)) if len(x) > 1 else math.nan
                    lo, hi = mean[-1] - half, mean[-1] + half
                low.append(lo)
                high.append(hi)
            per_family[family] = {
                "layers": layers,
                "mean": mean,
                "low": low,
                "high": high,
                "n": counts,
                "prompts": int(group["prompt_id"].nunique()),
                "emergence_layer": emergence_layer(layers, mean),
            }
        out[column] = {"kind": "share" if boolean else "mean", "families": per_family}
    return out


def emergence_layer(layers: list[int], values: list[float], fraction: float = EMERGENCE_FRACTION) -> int | None:
    """The first layer whose value reaches ``fraction`` of the last layer's (None when the last is ≤ 0)."""
    if not values or values[-1] <= 0:
        return None
    return next(layer for layer, v in zip(layers, values) if v >= fraction * values[-1])


def figures(table: dict) -> dict:
    """One plotly figure per score: a line per family over layers, its 95% interval as a band."""
    import plotly.graph_objects as go
    from plotly.colors import qualitative

    figs = {}
    for column, data in table.items():
        fig = go.Figure()
        for index, (family, c) in enumerate(data["families"].items()):
            colour = qualitative.D3[index % len(qualitative.D3)]
            fig.add_trace(
                go.Scatter(
                    x=c["layers"] + c["layers"][::-1],
                    y=c["high"] + c["low"][::-1],
                    fill="toself",
                    fillcolor=colour,
                    opacity=0.15,
                    line=dict(width=0),
                    hoverinfo="skip",
                    showlegend=False,
                    legendgroup=f"family{index}",
                )
            )
            fig.add_trace(
                go.Scatter(
                    x=c["layers"],
                    y=c["mean"],
                    mode="lines+markers",
                    name=f"{_escape(family)} (n={c['prompts']})",  # plotly renders names as HTML
                    line=dict(color=colour),
                    legendgroup=f"family{index}",
                    hovertemplate=f"{_escape(family)}<br>layer %{{x}}<br>{_escape(column)} %{{y:.3f}}<extra></extra>",
                )
            )
        label = "share of images judged right" if data["kind"] == "share" else f"mean {column}"
        fig.update_layout(
            title=f"{_escape(column)}: {label} per text-encoder layer (95% CI)",
            xaxis_title="text-encoder layer",
            yaxis_title=label,
            height=420,
            margin=dict(l=60, r=20, t=50, b=50),
        )
        figs[column] = fig
    return figs


def summary(table: dict) -> str:
    lines = ["| score | family | prompts | last layer | emergence layer (80% of last) |", "|---|---|---|---|---|"]
    for column, data in table.items():
        for family, c in data["families"].items():
            last = f"{c['mean'][-1]:.3f} [{c['low'][-1]:.3f}, {c['high'][-1]:.3f}]"
            lines.append(f"| {column} | {family} | {c['prompts']} | {last} | {c['emergence_layer']} |")
    return "\n".join(lines)


def write_report(out: str | Path) -> str:
    """Curves of the sweep in ``out``: ``report/curves.json``, ``report/report.html``; returns the summary table."""
    out = Path(out)
    manifest = load_manifest(out)
    rows, problems = store.load(out)
    table = curves(rows)
    folder = store.real_dir(out, "report")  # a link named report/ is moved aside: the report stays inside
    store.write_atomic(  # atomic writes replace a link planted in the folder, never write through it
        folder / "curves.json",
        json.dumps(_clean({"spec": manifest["spec"], "rows": len(rows), "curves": table}), indent=1).encode(),
    )
    parts = [fig.to_html(full_html=False, include_plotlyjs=(i == 0)) for i, fig in enumerate(figures(table).values())]
    text = summary(table)
    seeds = sorted(int(s) for s in rows["seed"].unique())  # from the rows, whatever the manifest says
    if sorted(run_description(manifest).get("seeds") or []) != seeds:
        problems = [
            *problems,
            f"manifest.json names seeds {run_description(manifest).get('seeds')}, the rows hold "
            f"{seeds} (the manifest was edited?): the report counts the rows",
        ]
    if problems:
        text = "\n".join([f"left out or suspect ({len(problems)}):", *(f"  {p}" for p in problems), "", text])
    spec, run = manifest["spec"], run_description(manifest)
    header = (
        f"<h1>Diffusion Lens sweep: {_escape(spec['model'])}</h1><p>{rows['prompt_id'].nunique()} prompts × "
        f"{len(seeds)} seeds; {len(rows)} images; lens options {_escape(json.dumps(run))}.</p>"
    )
    page = (
        "<!doctype html><html><head><meta charset='utf-8'><title>Diffusion Lens sweep</title></head>"
        "<body style='font-family:system-ui,sans-serif;margin:2em'>"
        + header
        + "".join(parts)
        + "<pre>"
        + _escape(text)
        + "</pre><p>Made with difflens-widgets (Diffusion Lens, Toker et al., "
        "ACL 2024).</p></body></html>"
    )
    store.write_atomic(folder / "report.html", page.encode("utf-8"))
    return text


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _clean(value):
    """NaN (an interval of one image) as null, so the JSON is standard."""
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return None if isinstance(value, float) and math.isnan(value) else value
