"""The emergence report: at which layer does each caption family appear in the lens images?

    python -m difflens_widgets.studies.report --out runs/report          # resumable; prints what MODEL_CARD.md states
    python -m difflens_widgets.studies.report --compare toy toy-t5       # the shipped reports side by side

For every caption family (the toy analogue of the paper's Figures 3 and 5), the share of lens images per layer that
the annotator judges to match the prompt — objects / colours / both (and the relation, for relation captions) — with
a 95% Wilson interval, with the encoder's final norm and without it (the paper's App. A.3 ablation), and each
family's *emergence layer*: the first layer reaching 80% of the last layer's rate, with a 95% bootstrap interval
over prompts. Two-object families come twice: pairs seen in training and held-out pairs training never showed.
Colour-frequency tiers (~25%, 8.5%, 2.5%, 0.85% of objects per colour) are families of their own, so "common
concepts emerge before rare ones" is measured. The last layer alone (the pipeline's own images) is also scored over
every evaluation prompt.

The images are made by :func:`difflens_widgets.sweep` (one dataset per variant under ``--out``: a stopped report
resumes where it stopped) and judged by the installed annotator each time the report runs (so a better annotator
re-scores old images without generating them again); ``emergence.json`` holds every number, ``emergence.png`` the
curves (with the ``[report]`` extra).
"""

from __future__ import annotations

import argparse
import io
import itertools
import json
import math
import random
import time
from pathlib import Path

from ..toy import REPORT_DIR, REPORT_T5_DIR
from ..toy.annotate import QUESTIONS
from ..toy.world import (
    COLOR_TIERS,
    CORE_COLORS,
    INVERSE_RELATION,
    RELATIONS,
    SHAPES,
    held_out_pairs,
    noun_phrase,
    pair_key,
)

TIER_FAMILIES = tuple(f"{tier} colour" for tier in COLOR_TIERS)
FAMILIES = ("object", "colored", "and", "and (held out)", "relation", "relation (held out)") + TIER_FAMILIES


def _balanced_pairs(pairs: list, count: int, rng: random.Random) -> list:
    """``count`` pairs spread evenly over colours and shapes: greedily take the pair whose colours and shapes have
    been used least so far (ties broken by a seeded shuffle)."""
    pairs = list(pairs)
    rng.shuffle(pairs)
    used: dict[str, int] = {}
    chosen = []
    for _ in range(min(count, len(pairs))):
        best = min(pairs, key=lambda p: sum(used.get(x, 0) for obj in p for x in obj))
        pairs.remove(best)
        chosen.append(best)
        for obj in best:
            for x in obj:
                used[x] = used.get(x, 0) + 1
    return chosen


def _relation_prompts(pairs: list) -> list[str]:
    """One relation per pair, the four relations in turn, both word orders in turn."""
    out = []
    for i, ((ca, sa), (cb, sb)) in enumerate(pairs):
        relation = RELATIONS[i % 4]
        a, b = noun_phrase(ca, sa), noun_phrase(cb, sb)
        out.append(f"{a} {relation} {b}" if (i // 4) % 2 == 0 else f"{b} {INVERSE_RELATION[relation]} {a}")
    return out


def evaluation_prompts(per_family: int | None = None, seed: int = 0) -> dict[str, list[str]]:
    """Deterministic prompts per family; ``per_family`` caps each list (None: every prompt listed below).

    object: the 6 shapes without colour; colored: every core colour × shape (30); and / relation: 44 pairs of
    core-colour objects seen in training, balanced over colours and shapes, and the 44 held-out pairs training
    never showed (relations: the four relations and both word orders in turn); one family per colour-frequency
    tier: each of the tier's colours on each shape (12 or 18 prompts). Lists are ordered so that any prefix stays
    balanced over colours.
    """
    rng = random.Random(seed)
    held = sorted(held_out_pairs())
    objects = list(itertools.product(CORE_COLORS, SHAPES))
    seen = [pair_key(a, b) for a, b in itertools.combinations(objects, 2) if pair_key(a, b) not in set(held)]
    seen = _balanced_pairs(seen, len(held), rng)
    held = _balanced_pairs(held, len(held), rng)
    colored = [
        noun_phrase(c, s)
        for i in range(len(SHAPES))
        for j, c in enumerate(CORE_COLORS)
        for s in [SHAPES[(i + j) % len(SHAPES)]]
    ]
    prompts = {
        "object": [noun_phrase(None, s) for s in SHAPES],
        "colored": colored,
        "and": [f"{noun_phrase(*a)} and {noun_phrase(*b)}" for a, b in seen],
        "and (held out)": [f"{noun_phrase(*a)} and {noun_phrase(*b)}" for a, b in held],
        "relation": _relation_prompts(seen),
        "relation (held out)": _relation_prompts(held),
    }
    for tier, family in zip(COLOR_TIERS, TIER_FAMILIES):
        colors = COLOR_TIERS[tier][0]
        # every colour of the tier on every shape, shapes cycling first so that any prefix covers all shapes
        prompts[family] = [
            noun_phrase(colors[k % len(colors)], SHAPES[(k + k // len(SHAPES)) % len(SHAPES)])
            for k in range(len(colors) * len(SHAPES))
        ]
    if per_family is not None:
        prompts = {family: ps[:per_family] for family, ps in prompts.items()}
    return prompts


# the annotator's questions, and the arrangement judged only where both objects are drawn
MEASURES = tuple(QUESTIONS) + ("relation_given_both",)
BOOTSTRAP = 1000
# P(a random arrangement of two objects satisfies a named relation): one of four directions, its axis dominating
RELATION_CHANCE = 0.25


def prompt_rows(prompts: dict[str, list[str]]) -> list[dict]:
    """One sweep row per distinct prompt (a sweep runs a prompt once); a prompt that belongs to several families
    is filed under its first and counted in every one by :func:`in_every_family`."""
    first: dict[str, str] = {}
    for family, ps in prompts.items():
        for prompt in ps:
            first.setdefault(prompt, family)
    return [{"prompt": p, "family": family} for p, family in first.items()]


def in_every_family(rows, prompts: dict[str, list[str]]):
    """``rows`` once per family that names each row's prompt ("a red circle" is both a coloured object and a
    frequent-colour prompt), so every family's curve is over all of its prompts."""
    import pandas as pd

    return pd.concat(
        [rows[rows["prompt"].isin(ps)].assign(family=family) for family, ps in prompts.items()], ignore_index=True
    )


def balance(prompts: list[str]) -> dict[str, dict[str, int]]:
    """How often each colour and each shape is named in ``prompts`` (the report states these counts)."""
    from ..toy.annotate import parse_caption

    colors: dict[str, int] = {}
    shapes: dict[str, int] = {}
    for prompt in prompts:
        for color, shape in parse_caption(prompt).objects:
            if color:
                colors[color] = colors.get(color, 0) + 1
            shapes[shape] = shapes.get(shape, 0) + 1
    return {"colors": dict(sorted(colors.items())), "shapes": dict(sorted(shapes.items()))}


def judged(rows, folder: Path):
    """``rows`` with the annotator's verdicts on their stored images: the report always judges with the annotator
    of the installed version, so improving the annotator never needs the images to be generated again."""
    from PIL import Image

    from ..sweeps.store import read_image
    from ..toy.annotate import judge

    verdicts = [
        judge(Image.open(io.BytesIO(read_image(folder, image))), prompt)
        for image, prompt in zip(rows["image"], rows["prompt"])
    ]
    rows = rows.drop(columns=[q for q in QUESTIONS if q in rows])
    for question in QUESTIONS:
        rows[question] = [v.get(question) for v in verdicts]
    return rows


def emergence_interval(rows, question: str, seed: int = 0) -> tuple[int | None, int | None]:
    """95% bootstrap interval of a family's emergence layer, resampling its prompts."""
    import numpy as np

    from ..sweeps.report import emergence_layer

    table = rows.pivot_table(index="prompt_id", columns="layer", values=question, aggfunc="mean")
    if table.empty:
        return None, None
    rng = np.random.default_rng(seed)
    values = table.to_numpy(dtype=float)
    layers = [int(c) for c in table.columns]
    found = []
    for _ in range(BOOTSTRAP):
        curve = np.nanmean(values[rng.integers(0, len(values), len(values))], axis=0)
        layer = emergence_layer(layers, list(curve))
        found.append(math.inf if layer is None else layer)
    low, high = np.percentile(found, [2.5, 97.5], method="nearest")
    return (None if math.isinf(low) else int(low)), (None if math.isinf(high) else int(high))


def family_curves(rows) -> dict:
    """{question: {family: curve}}: :func:`sweep_report.curves` plus each curve's bootstrap emergence interval;
    ``relation_given_both`` is the relation's share among the images that drew both objects."""
    import pandas as pd

    from ..sweeps.report import curves

    if "relation" in rows and rows["relation"].notna().any():  # the arrangement, judged where both objects are drawn
        drawn = rows[(rows["both"] == True) & rows["relation"].notna()]  # noqa: E712 (object column)
        rows = pd.concat(
            [rows, drawn.assign(relation_given_both=drawn["relation"]).drop(columns=list(QUESTIONS))], ignore_index=True
        )
    table = {}
    order = {family: i for i, family in enumerate(FAMILIES)}
    for question, entry in curves(rows).items():
        table[question] = {}
        for family, curve in sorted(entry["families"].items(), key=lambda kv: order.get(kv[0], len(order))):
            subset = rows[(rows["family"] == family) & rows[question].notna()]
            subset = subset.assign(**{question: subset[question].astype(float)})
            curve["emergence_interval"] = emergence_interval(subset, question)
            table[question][family] = curve
    return table


def findings(curves: dict, last: dict) -> list[dict]:
    """The paper's findings, each checked on the curves (final norm on): does it hold here, with which
    numbers. "Holds" means the point estimates are in the paper's order; "clearly" that the bootstrap intervals of
    the emergence layers do not overlap."""

    def layer(question, family):
        return emergence(curves.get(question, {}).get(family))

    out = []
    for family in ("and", "and (held out)"):
        colors, both = layer("colors", family), layer("both", family)
        out.append(
            {"finding": f"colours before binding ({family})", **before(colors, both), "colors": colors, "both": both}
        )
    for family in ("relation", "relation (held out)"):
        given = curves.get("relation_given_both", {}).get(family)
        learned = bool(given) and given["low"][-1] > RELATION_CHANCE
        given_last = (
            None
            if not given
            else [round(given["mean"][-1], 3), round(given["low"][-1], 3), round(given["high"][-1], 3), given["n"][-1]]
        )
        relation = layer("relation", family)
        for earlier in ("both", "colors"):  # binding, then the colours alone (a gap of layers is what a lens can show)
            first = layer(earlier, family)
            verdict = before(first, relation) if learned else {"holds": None, "clearly": False}
            name = "binding" if earlier == "both" else "colours"
            out.append(
                {
                    "finding": f"{name} before relations ({family})",
                    **verdict,
                    earlier: first,
                    "relation": relation,
                    "relations_learned": learned,
                    "relation_given_both_last": given_last,
                }
            )
    tiers = [
        (family, layer("both", family), last.get(family, {}).get("both", {}).get("mean")) for family in TIER_FAMILIES
    ]
    # a tier that never rises counts as emerging after every layer: "never" is the latest emergence there is
    ordered = [math.inf if t[1][0] is None else t[1][0] for t in tiers]
    holds = (
        None
        if all(math.isinf(x) for x in ordered)
        else all(x <= y for x, y in zip(ordered, ordered[1:])) and ordered[0] < ordered[-1]
    )
    out.append(
        {
            "finding": "frequent colours before rare ones",
            "holds": holds,
            "clearly": False,
            "tiers": {family: {"emergence": e, "last_layer_both": rate} for family, e, rate in tiers},
        }
    )
    return out


def pieces_group(prompt: str, tier: str) -> str:
    """The word-pieces group of a single-object tier prompt: "<tier>, one piece" or "<tier>, split" by its colour
    word (every tier has a colour of each kind: :data:`~difflens_widgets.toy.language.PIECES`)."""
    from ..toy.annotate import parse_caption
    from ..toy.language import pieces

    color = parse_caption(prompt).objects[0][0]
    return f"{tier}, {'one piece' if len(pieces(color)) == 1 else 'split'}"


def pieces_curves(rows) -> dict:
    """Frequency against splitting: the tier families' "both" curves once more, each tier's prompts grouped by
    whether their colour is one word piece or several. {group: curve} with emergence intervals, in tier order."""
    from ..sweeps.report import curves

    tiers = rows[rows["family"].isin(TIER_FAMILIES)]
    if tiers.empty or "both" not in tiers or tiers["both"].isna().all():
        return {}
    tiers = tiers.assign(family=[pieces_group(p, f) for p, f in zip(tiers["prompt"], tiers["family"])])
    # booleans, not floats: a share gets a Wilson interval inside [0, 1] (floats got mean ± 1.96·sd/√n, above 1 at 0.98)
    tiers = tiers[tiers["both"].notna()].assign(both=lambda t: t["both"].astype(bool))
    table = curves(tiers[["family", "layer", "prompt_id", "both"]])["both"]["families"]
    order = [f"{tier}, {kind}" for tier in TIER_FAMILIES for kind in ("one piece", "split")]
    out = {}
    for group in (g for g in order if g in table):
        table[group]["emergence_interval"] = emergence_interval(tiers[tiers["family"] == group], "both")
        out[group] = table[group]
    return out


def pieces_finding(groups: dict) -> dict:
    """Is a split colour name read later than a one-piece name of the same frequency tier? Per tier where both
    curves rise: which emerges first, and whether their bootstrap intervals are apart."""
    per_tier = {}
    for tier in TIER_FAMILIES:
        one, split = groups.get(f"{tier}, one piece"), groups.get(f"{tier}, split")
        if not one or not split:
            continue
        entry: dict = {"one piece": emergence(one), "split": emergence(split)}
        verdict = before(entry["one piece"], entry["split"])
        entry["split later"], entry["clearly"] = verdict["holds"], verdict["clearly"]
        entry["last_layer_both"] = {"one piece": one["mean"][-1], "split": split["mean"][-1]}
        per_tier[tier] = entry
    tested = [t for t in per_tier.values() if t["split later"] is not None]
    return {
        "finding": "split colour names after one-piece names of the same frequency",
        "holds": None if not tested else all(t["split later"] for t in tested),
        "clearly": bool(tested) and all(t["clearly"] for t in tested),
        "split_later_in": f"{sum(bool(t['split later']) for t in tested)} of {len(tested)} tiers",
        "per_tier": per_tier,
    }


def before(early: tuple, late: tuple) -> dict:
    """Does ``early`` (an :func:`emergence` pair) emerge before ``late`` — "holds" on the point estimates, "clearly"
    when their bootstrap intervals are apart; None when either never rises."""
    (a, (_, a_hi)), (b, (b_lo, _)) = early, late
    if a is None or b is None:
        return {"holds": None, "clearly": False}
    return {"holds": a < b, "clearly": a_hi is not None and b_lo is not None and a_hi < b_lo}


def emergence(curve: dict | None) -> tuple:
    """(emergence layer, its interval); (None, (None, None)) for a curve that never rises above layer 0 — a concept
    the model has not learned has no emergence layer, however flat its curve is."""
    if not curve or not rises(curve):
        return (None, (None, None))
    return (curve["emergence_layer"], tuple(curve["emergence_interval"]))


def rises(curve: dict) -> bool:
    """Whether a curve's last layer is above its first beyond doubt: the 95% intervals do not overlap."""
    return curve["low"][-1] > curve["high"][0]


def _last_layer(rows) -> dict:
    from ..sweeps.report import wilson

    out = {}
    for family, group in rows.groupby("family", sort=False):
        out[family] = {"prompts": int(group["prompt_id"].nunique())}
        for question in QUESTIONS:
            if question in group and group[question].notna().any():
                marks = group[question].dropna().astype(bool)
                low, high = wilson(int(marks.sum()), len(marks))
                out[family][question] = {"mean": float(marks.mean()), "low": low, "high": high, "n": len(marks)}
        if "relation" in out[family]:  # is the arrangement right when both objects are there?
            given = group[group["both"].astype(bool)]["relation"].astype(bool)
            low, high = wilson(int(given.sum()), len(given))
            out[family]["relation_given_both"] = {
                "mean": float(given.mean()) if len(given) else math.nan,
                "low": low,
                "high": high,
                "n": len(given),
            }
    return out


def plot(table: dict, out: Path) -> Path | None:
    """The curves with their 95% intervals (final norm on, then off); None, with a note, without matplotlib."""
    try:
        import matplotlib
    except ImportError:
        print(
            f"no plot: pip install 'difflens-widgets[report]' for matplotlib (the numbers are in "
            f"{out.parent / 'emergence.json'})"
        )
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    variants = [v for v in ("final_norm", "no_final_norm") if v in table["variants"]]
    families = [f for f in FAMILIES if f in table["variants"]["final_norm"].get("both", {})]
    fig, axes = plt.subplots(
        len(variants), len(families), figsize=(2.2 * len(families), 2.8 * len(variants)), sharey=True, squeeze=False
    )
    for row, variant in enumerate(variants):
        for col, family in enumerate(families):
            ax = axes[row][col]
            for question in MEASURES:
                curve = table["variants"][variant].get(question, {}).get(family)
                if curve:
                    ax.plot(
                        curve["layers"],
                        curve["mean"],
                        marker="o",
                        ms=2.5,
                        label=question.replace("_", " "),
                        linestyle="--" if question == "relation_given_both" else "-",
                    )
                    ax.fill_between(curve["layers"], curve["low"], curve["high"], alpha=0.15)
            if family.startswith("relation"):
                ax.axhline(RELATION_CHANCE, color="grey", linestyle=":", linewidth=1, label="chance (arrangement)")
            ax.set_title(family + ("" if variant == "final_norm" else "\n(no final norm)"), fontsize=8)
            ax.set_ylim(-0.03, 1.03)
            ax.grid(alpha=0.3)
            ax.tick_params(labelsize=7)
            if row == len(variants) - 1:
                ax.set_xlabel("layer", fontsize=8)
            if col == 0:
                ax.set_ylabel("share matching", fontsize=8)
    axes[0][families.index("relation") if "relation" in families else -1].legend(fontsize=6, loc="upper left")
    fig.suptitle("Toy model: when does each caption family emerge in the lens? (95% intervals)", fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def run_report(
    model="toy",
    seeds: int = 4,
    steps: int = 20,
    guidance: float = 7.5,
    per_family: int | None = 10,
    out: str | Path = "report",
    ablation_per_family: int | None = 5,
    last_layer: bool = True,
    log=print,
    last_layer_per_family: int | None = None,
) -> dict:
    from .. import sweeps

    out = Path(out)
    prompts = evaluation_prompts(per_family)
    seed_list = list(range(seeds))
    options = dict(num_inference_steps=steps, guidance_scale=guidance)
    start = time.perf_counter()
    rows = {}
    jobs = {"final_norm": (prompts, None, True)}
    if ablation_per_family:
        jobs["no_final_norm"] = (evaluation_prompts(ablation_per_family), None, False)
    if last_layer:  # -1: the pipeline's own conditioning, whatever the encoder's depth
        jobs["last_layer"] = (evaluation_prompts(last_layer_per_family), [-1], True)
    for name, (job_prompts, layers, final_norm) in jobs.items():
        sweeps.sweep(
            prompt_rows(job_prompts),
            out / name,
            model=model,
            layers=layers,
            seeds=seed_list,
            scorers=("annotator",),
            final_norm=final_norm,
            log=log,
            **options,
        )
        rows[name] = in_every_family(judged(sweeps.load_rows(out / name), out / name), job_prompts)
    table: dict = {
        "command": "python -m difflens_widgets.studies.report "
        + ("" if str(model) == "toy" else f"--model {model} ")
        + f"--seeds {seeds} --per-family {per_family} --ablation-per-family {ablation_per_family} "
        + (f"--last-layer-per-family {last_layer_per_family} " if last_layer_per_family else "")
        + f"--out {out}",
        "model": str(model),
        "seeds": seed_list,
        "steps": steps,
        "guidance": guidance,
        "prompts": prompts,
        "balance": {family: balance(ps) for family, ps in prompts.items()},
        "variants": {name: family_curves(rows[name]) for name in ("final_norm", "no_final_norm") if name in rows},
    }
    if "last_layer" in rows:
        table["last_layer"] = _last_layer(rows["last_layer"])
    table["findings"] = findings(table["variants"]["final_norm"], table.get("last_layer", {}))
    table["pieces"] = pieces_curves(rows["final_norm"])
    if table["pieces"]:
        table["findings"].append(pieces_finding(table["pieces"]))
    table["seconds"] = round(time.perf_counter() - start, 1)
    (out / "emergence.json").write_text(json.dumps(table, indent=1, default=_plain))
    plot(table, out / "emergence.png")
    return table


def _plain(value):
    return None if isinstance(value, float) and math.isnan(value) else str(value)


def _fmt_layer(entry) -> str:
    layer, (low, high) = entry
    if layer is None:
        return "never"
    return f"L{layer} [{'?' if low is None else low}–{'never' if high is None else high}]"


def _emerges(curve: dict) -> str:
    """A table's "emerges" cell: the emergence layer [interval], or that the curve does not rise."""
    return _fmt_layer(emergence(curve)) if rises(curve) else "does not rise"


def summary(table: dict) -> str:
    """Markdown: the per-layer curves (final norm on) with intervals, the last layer, and the findings."""
    lines = []
    for variant, curves in table["variants"].items():
        lines += [
            f"\n### lens, {variant.replace('_', ' ')}: share matching per layer",
            "",
            "(95% intervals: emergence.json and the plot)",
            "",
        ]
        layers = next(iter(curves["both"].values()))["layers"]
        lines.append("| family | question | images per layer | " + " | ".join(f"L{l}" for l in layers) + " | emerges |")
        lines.append("|---|---|---|" + "---|" * len(layers) + "---|")
        for question in MEASURES:
            for family, curve in curves.get(question, {}).items():
                by_layer = dict(zip(curve["layers"], curve["mean"]))
                cells = " | ".join(f"{by_layer[l]:.2f}" if l in by_layer else "—" for l in layers)
                emerges = _emerges(curve)
                lines.append(f"| {family} | {question.replace('_', ' ')} | {curve['n'][-1]} | {cells} | {emerges} |")
    if "last_layer" in table:
        lines += [
            "",
            "### last layer (the pipeline's own images), every evaluation prompt × seeds",
            "",
            "| family | prompts | objects | colours | both | relation | relation given both |",
            "|---|---|---|---|---|---|---|",
        ]
        for family, entry in table["last_layer"].items():
            cells = [
                f"{entry[q]['mean']:.2f} [{entry[q]['low']:.2f}–{entry[q]['high']:.2f}]" if q in entry else "—"
                for q in MEASURES
            ]
            lines.append(f"| {family} | {entry['prompts']} | " + " | ".join(cells) + " |")
    if table.get("pieces"):
        groups = table["pieces"]
        layers = next(iter(groups.values()))["layers"]
        lines += [
            "",
            "### frequency against splitting: single coloured objects per tier, colour name one piece or split",
            "",
            "| tier, colour name | images per layer | " + " | ".join(f"L{l}" for l in layers) + " | emerges |",
            "|---|---|" + "---|" * len(layers) + "---|",
        ]
        for group, curve in groups.items():
            cells = " | ".join(f"{v:.2f}" for v in curve["mean"])
            lines.append(f"| {group} | {curve['n'][-1]} | {cells} | {_emerges(curve)} |")
    lines += ["", "### findings (final norm on)", "", findings_text(table)]
    return "\n".join(lines)


def findings_text(table: dict) -> str:
    """One line per finding: holds or not, with the emergence layers [95% intervals] it rests on."""
    lines = []
    for finding in table["findings"]:
        verdict = {
            True: "holds" + (" clearly" if finding["clearly"] else ""),
            False: "does NOT hold",
            None: "cannot be tested: a curve does not rise above layer 0 (not learned)",
        }[finding["holds"]]
        detail = ", ".join(
            f"{k} {_fmt_layer(v)}"
            for k, v in finding.items()
            if k
            not in (
                "finding",
                "holds",
                "clearly",
                "tiers",
                "relations_learned",
                "relation_given_both_last",
                "per_tier",
                "split_later_in",
            )
        )
        if finding.get("relation_given_both_last"):
            mean, low, high, n = finding["relation_given_both_last"]
            detail += (
                f"; arrangement right in {mean:.2f} [{low:.2f}–{high:.2f}] of the {n} last-layer images that "
                f"drew both objects (chance {RELATION_CHANCE})"
            )
            if not finding["relations_learned"]:
                verdict = "cannot be tested: relations are not learned (no better than chance at the last layer)"
        if "per_tier" in finding:
            detail = f"split later in {finding['split_later_in']}: " + "; ".join(
                f"{tier}: one piece {_fmt_layer(t['one piece'])}, split {_fmt_layer(t['split'])}"
                for tier, t in finding["per_tier"].items()
            )
        if "tiers" in finding:
            detail = "; ".join(
                f"{f}: emerges {_fmt_layer(t['emergence'])}, last layer "
                f"{'—' if t['last_layer_both'] is None else format(t['last_layer_both'], '.2f')}"
                for f, t in finding["tiers"].items()
            )
        lines.append(f"- {finding['finding']}: {verdict} — {detail}")
    return "\n".join(lines)


SHIPPED_REPORTS = {"toy": REPORT_DIR, "toy-t5": REPORT_T5_DIR}  # the embedded models' reports, by name


def shipped(model: str = "toy") -> dict:
    """The report shipped with the package for an embedded model ("toy": what MODEL_CARD.md states; "toy-t5":
    MODEL_CARD_T5.md), as :func:`run_report` returned it."""
    if model not in SHIPPED_REPORTS:
        raise ValueError(f"no report ships for {model!r}; the embedded models are {', '.join(SHIPPED_REPORTS)}")
    return json.loads((SHIPPED_REPORTS[model] / "emergence.json").read_text())


def load_report(name_or_path: str) -> dict:
    """A report by embedded model name (the one that ships) or by path (a report's ``--out`` folder or its
    ``emergence.json``), so a report run on your own model compares as easily as the shipped ones."""
    path = Path(name_or_path)
    if path.is_dir():
        path = path / "emergence.json"
    if path.is_file():
        return json.loads(path.read_text())
    if name_or_path in SHIPPED_REPORTS:
        return shipped(name_or_path)
    raise ValueError(
        f"{name_or_path!r} is neither an embedded model ({', '.join(SHIPPED_REPORTS)}) nor a report folder or "
        "emergence.json file"
    )


def side_by_side(
    reports: dict[str, dict], families: tuple[str, ...] = FAMILIES, questions: tuple[str, ...] = MEASURES
) -> str:
    """Markdown: the same families and questions for several models' reports, one column per model — the paper's own
    comparison (a causal CLIP encoder against a T5) on models anyone can run. Each cell: the emergence layer [95%
    bootstrap interval] with the final norm, the share at the last layer, and the best share an intermediate layer
    reaches without the norm (where the report ran the ablation). Rows with nothing to measure (a share of 1.00 at
    every layer for every model, such as the colours of a prompt that names none) are left out."""
    if not reports:
        raise ValueError("side_by_side needs at least one report")
    lines = ["| family | question | " + " | ".join(reports) + " |", "|---|---|" + "---|" * len(reports)]
    for question in questions:
        label = question.replace("_", " ")
        if question == "relation_given_both":
            label += f" (chance {RELATION_CHANCE:.2f})"
        for family in families:
            curves = [r["variants"]["final_norm"].get(question, {}).get(family) for r in reports.values()]
            if not any(curves) or all(c is None or min(_finite(c["mean"]), default=1.0) == 1.0 for c in curves):
                continue
            cells = [_side_cell(r, curve, question, family) for r, curve in zip(reports.values(), curves)]
            lines.append(f"| {family} | {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _finite(values) -> list[float]:
    return [v for v in values if v is not None and v == v]


def _side_cell(report: dict, curve: dict | None, question: str, family: str) -> str:
    """One model's cell of :func:`side_by_side`; ``curve`` is that model's final-norm curve for the row."""
    if curve is None:
        return "—"
    cell = f"{_emerges(curve)}; {curve['mean'][-1]:.2f} at L{curve['layers'][-1]}"
    bare = report["variants"].get("no_final_norm", {}).get(question, {}).get(family)
    if bare:
        inner = _finite(m for layer, m in zip(bare["layers"], bare["mean"]) if 0 < layer < bare["layers"][-1])
        if inner:
            cell += f"; no norm ≤ {max(inner):.2f}"
    given_both = report.get("last_layer", {}).get(family, {}).get("relation_given_both")
    if question in ("relation", "relation_given_both") and given_both and given_both["low"] <= RELATION_CHANCE:
        # a relation curve "emerges" as soon as two objects are drawn; at chance it says nothing about relations
        cell += (
            f"; **at chance** (given both {given_both['mean']:.2f} [{given_both['low']:.2f}–{given_both['high']:.2f}])"
        )
    return cell


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="toy")
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--guidance", type=float, default=7.5)
    parser.add_argument(
        "--per-family", type=int, default=10, help="prompts per family for the per-layer curves (0 = all)"
    )
    parser.add_argument(
        "--ablation-per-family",
        type=int,
        default=5,
        help="prompts per family for the no-final-norm curves (0 = skip the ablation)",
    )
    parser.add_argument(
        "--no-last-layer", action="store_true", help="skip the last-layer accuracy over every evaluation prompt"
    )
    parser.add_argument(
        "--last-layer-per-family",
        type=int,
        default=0,
        help="prompts per family for the last-layer accuracy (0 = every evaluation prompt; fewer for a quick look)",
    )
    parser.add_argument("--out", default="report")
    parser.add_argument(
        "--compare",
        nargs="+",
        metavar="REPORT",
        help="print reports side by side instead of running one: embedded model names (toy, toy-t5; their shipped "
        "reports) or report folders",
    )
    args = parser.parse_args(argv)
    if args.compare:
        try:
            reports = {name: load_report(name) for name in args.compare}
        except ValueError as error:
            parser.error(str(error))
        print(side_by_side(reports))
        return
    table = run_report(
        args.model,
        args.seeds,
        args.steps,
        args.guidance,
        args.per_family or None,
        args.out,
        ablation_per_family=args.ablation_per_family,
        last_layer=not args.no_last_layer,
        last_layer_per_family=args.last_layer_per_family or None,
    )
    print(summary(table))
    print(f"\nwrote {Path(args.out) / 'emergence.json'} ({table['seconds']} s)")


if __name__ == "__main__":
    main()
