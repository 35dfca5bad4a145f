"""Does a word's cross-attention land on the object it names, and from which lens layer on? Measured on the toy.

    python -m difflens_widgets.studies.attention --out runs/attention          # ~10 min on 2 CPU cores
    python -m difflens_widgets.studies.attention --out runs/attention --model runs/pC/pipeline --seeds 6

For single-object prompts ("a red circle") and two-object prompts ("a red circle left of a blue square") the lens
runs every layer with ``attention=True``. In every image the annotator finds each named object's blob
(:func:`toy.annotate.word_regions`); for every colour and shape word whose object is drawn, a *hit* is the word's
map peaking inside that word's blob. The baseline is the same map against a shuffled blob: the same word's blob
from an image of another prompt at the same layer and seed (a blob of the same kind in another place), so it
measures how often a peak lands inside an object-sized region by chance. Rates carry Wilson 95% intervals.

Writes ``attention.json`` (per group and layer: n, hit rate and interval, baseline rate and interval, and the mean
``inside`` mass) and ``attention.png`` (the curves), and prints a table.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

GROUPS = {
    "single object": [
        "a red circle",
        "a blue square",
        "a green triangle",
        "a yellow star",
        "a red square",
        "a blue triangle",
        "a green circle",
        "a yellow square",
    ],
    "two objects": [
        "a red circle left of a blue square",
        "a green triangle above a yellow circle",
        "a blue star right of a red triangle",
        "a yellow square below a green star",
        "a red triangle left of a green circle",
        "a blue circle above a yellow triangle",
    ],
}
WORD_KINDS = ("colour", "shape")


def measure(model, seeds: list[int], steps: int, groups: dict[str, list[str]] = GROUPS, layers=None) -> dict:
    """{group: {kind: {layer: counts}}} with counts = hits, baseline hits, n, summed inside mass. ``model``: a
    pipeline, a folder or "toy"; ``layers``: as ``Lens.run`` takes them (default: every layer)."""
    from .. import Lens
    from ..core.attention_stats import map_stats
    from ..toy.annotate import parse_caption, word_regions

    lens = Lens(model)
    table: dict = {}
    for group, prompts in groups.items():
        if len(prompts) < 2:
            raise ValueError(f"group {group!r} needs at least two prompts (the baseline shuffles blobs between them)")
        results = lens.run(prompts, layers=layers, seeds=seeds, num_inference_steps=steps, attention=True)
        counts: dict = {kind: {} for kind in WORD_KINDS}
        # every image's blobs found once: each is "mine" for its own prompt and "theirs" for the previous one
        found = [{(l, s): word_regions(r.image(l, s), r.prompt) for l in r.layers for s in r.seeds} for r in results]
        for index, result in enumerate(results):
            following = (index + 1) % len(results)  # the shuffled blob comes from the next prompt's image
            other = results[following]
            words = {}
            for color, shape in parse_caption(result.prompt).objects:
                words[color] = "colour"
                words[shape] = "shape"
            for layer in result.layers:
                for seed in result.seeds:
                    mine = found[index][(layer, seed)]
                    theirs_by_kind = _by_kind(found[following][(layer, seed)], other.prompt)
                    for word, kind in words.items():
                        if word not in mine:
                            continue  # the object is not drawn (or the word names two objects)
                        heat = result.attention(layer, word, seed)
                        real = map_stats(heat, mine[word])
                        entry = counts[kind].setdefault(layer, {"hits": 0, "baseline": 0, "n": 0, "inside": 0.0})
                        entry["n"] += 1
                        entry["hits"] += bool(real["peak_inside"])
                        entry["inside"] += float(real["inside"])
                        shuffled = theirs_by_kind.get(kind)
                        if shuffled is not None:
                            entry["baseline"] += bool(map_stats(heat, shuffled)["peak_inside"])
        table[group] = counts
    return table


def _by_kind(regions: dict, prompt: str) -> dict:
    """The first drawn object's colour blob and shape blob of ``prompt`` (the shuffled baseline's regions)."""
    from ..toy.annotate import parse_caption

    out = {}
    for color, shape in parse_caption(prompt).objects:
        if color in regions and "colour" not in out:
            out["colour"] = regions[color]
        if shape in regions and "shape" not in out:
            out["shape"] = regions[shape]
    return out


def rates(counts: dict) -> dict:
    """Counts per layer → rates with Wilson intervals."""
    from ..sweeps.report import wilson

    out = {}
    for layer, c in sorted(counts.items()):
        n = c["n"]
        out[layer] = {
            "n": n,
            "hit": round(c["hits"] / n, 3) if n else None,
            "hit_interval": [round(v, 3) for v in wilson(c["hits"], n)],
            "baseline": round(c["baseline"] / n, 3) if n else None,
            "baseline_interval": [round(v, 3) for v in wilson(c["baseline"], n)],
            "inside_mass": round(c["inside"] / n, 3) if n else None,
        }
    return out


def plot(table: dict, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(table), figsize=(5.5 * len(table), 3.6), sharey=True)
    for ax, (group, kinds) in zip(axes, table.items()):
        for kind, colour in zip(WORD_KINDS, ("tab:red", "tab:blue")):
            layers = [int(layer) for layer in kinds[kind]]
            rows = list(kinds[kind].values())
            ax.plot(layers, [r["hit"] for r in rows], "o-", color=colour, label=f"{kind} word on its object")
            ax.fill_between(layers, [r["hit_interval"][0] for r in rows], [r["hit_interval"][1] for r in rows],
                            color=colour, alpha=0.15)  # fmt: skip
            ax.plot(layers, [r["baseline"] for r in rows], "--", color=colour, alpha=0.6,
                    label=f"{kind}: shuffled blob")  # fmt: skip
        ax.set_title(group)
        ax.set_xlabel("lens layer")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("map peak inside the blob")
    axes[-1].legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    path = out / "attention.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--model", default="toy", help="a pipeline folder or 'toy' (the shipped model)")
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.time()
    counts = measure(args.model, list(range(args.seeds)), args.steps)
    table = {group: {kind: rates(c) for kind, c in kinds.items()} for group, kinds in counts.items()}
    report = {
        "command": " ".join(
            ["python -m difflens_widgets.studies.attention", *(sys.argv[1:] if argv is None else argv)]
        ),
        "model": args.model,
        "seeds": args.seeds,
        "steps": args.steps,
        "prompts": GROUPS,
        "seconds": round(time.time() - start, 1),
        "table": table,
    }
    (args.out / "attention.json").write_text(json.dumps(report, indent=1))
    plot(table, args.out)
    for group, kinds in table.items():
        for kind, layers in kinds.items():
            print(f"{group} — {kind} word: layer  n  peak-inside [95%]  shuffled [95%]  inside-mass")
            for layer, r in layers.items():
                lo, hi = r["hit_interval"]
                blo, bhi = r["baseline_interval"]
                print(f"  {layer:5d} {r['n']:3d}  {r['hit']:.2f} [{lo:.2f}–{hi:.2f}]  "
                      f"{r['baseline']:.2f} [{blo:.2f}–{bhi:.2f}]  {r['inside_mass']:.2f}")  # fmt: skip
    print(f"{report['seconds']} s; wrote {args.out / 'attention.json'} and attention.png")


if __name__ == "__main__":
    main()
