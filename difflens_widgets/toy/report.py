"""The emergence report: at which layer does each caption family appear in the lens images?

    python -m difflens_widgets.toy.report --seeds 4 --out report/

For every caption family (the toy analogue of the paper's Figures 3 and 5), the share of lens images per layer that
the annotator judges to match the prompt — objects / colours / both (and the relation, for relation captions) —
with the encoder's final norm and without it (the paper's App. A.3 ablation). Writes ``emergence.json`` and
``emergence.png``. Two-object prompts come from the held-out pairs, which training never showed. The curves use
``--per-family`` prompts per family; the last layer alone (the pipeline's own images) is also scored over every
evaluation prompt.
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import time
from pathlib import Path

from .annotate import annotate, judge
from .world import (COMMON_COLORS, COMMON_SHAPES, INVERSE_RELATION, RARE_COLORS, RARE_SHAPES, RELATIONS,
                    held_out_pairs, noun_phrase)

FAMILIES = ("object", "colored", "and", "relation", "rare shape", "rare color")


def evaluation_prompts(per_family: int | None = None, seed: int = 0) -> dict[str, list[str]]:
    """Deterministic prompts per family; ``per_family`` caps each list (None: every prompt listed below).

    object: the 6 common shapes; colored: all 36 common pairs; and / relation: held-out pairs (both word orders for
    relations); rare shape: the rare shape alone and in each common colour; rare color: each common shape in the
    rare colour.
    """
    rng = random.Random(seed)
    pairs = sorted(held_out_pairs())
    rng.shuffle(pairs)
    relation_prompts = []
    for i, ((ca, sa), (cb, sb)) in enumerate(pairs):
        relation = RELATIONS[i % 4]
        a, b = noun_phrase(ca, sa), noun_phrase(cb, sb)
        relation_prompts.append(f"{a} {relation} {b}" if i % 2 == 0 else f"{b} {INVERSE_RELATION[relation]} {a}")
    prompts = {
        "object": [noun_phrase(None, s) for s in COMMON_SHAPES],
        "colored": [noun_phrase(c, s) for c, s in itertools.product(COMMON_COLORS, COMMON_SHAPES)],
        "and": [f"{noun_phrase(ca, sa)} and {noun_phrase(cb, sb)}" for (ca, sa), (cb, sb) in pairs],
        "relation": relation_prompts,
        "rare shape": [noun_phrase(None, s) for s in RARE_SHAPES]
        + [noun_phrase(c, s) for s in RARE_SHAPES for c in COMMON_COLORS],
        "rare color": [noun_phrase(c, s) for c in RARE_COLORS for s in COMMON_SHAPES],
    }
    if per_family is not None:
        prompts = {family: ps[:per_family] for family, ps in prompts.items()}
    return prompts


def score_family(lens, prompts: list[str], seeds: list[int], steps: int, guidance: float,
                 final_norm: bool, layers=None) -> dict[str, dict[int, float]]:
    """Share of images judged to match, per aspect and layer, over ``prompts`` × ``seeds``."""
    counts: dict[str, dict[int, list[int]]] = {}
    for prompt in prompts:
        result = lens.run(prompt, layers=layers, seeds=seeds, num_inference_steps=steps, guidance_scale=guidance,
                          final_norm=final_norm)
        for (layer, _), image in result.images.items():
            for aspect, ok in judge(annotate(image), prompt).items():
                counts.setdefault(aspect, {}).setdefault(layer, []).append(int(ok))
    return {aspect: {layer: sum(v) / len(v) for layer, v in sorted(per_layer.items())}
            for aspect, per_layer in counts.items()}


def final_layer_accuracy(lens, prompts: dict[str, list[str]], seeds: list[int], steps: int,
                         guidance: float) -> dict[str, dict[str, float]]:
    """Per family, the share of last-layer images (the pipeline's own output) judged to match: over *every*
    evaluation prompt, since only one layer is denoised."""
    last = lens.num_layers
    return {family: {aspect: per_layer[last] for aspect, per_layer in
                     score_family(lens, family_prompts, seeds, steps, guidance, True, layers=[last]).items()}
            for family, family_prompts in prompts.items()}


def plot(table: dict, out: Path) -> None:
    try:
        import matplotlib
    except ImportError:
        raise ImportError(f"the emergence plot needs matplotlib: pip install 'difflens-widgets[report]' "
                          f"(the numbers are already in {out.parent / 'emergence.json'})") from None

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    families = [f for f in FAMILIES if f in table["final_norm"]]
    fig, axes = plt.subplots(2, len(families), figsize=(3.1 * len(families), 5.6), sharey=True, squeeze=False)
    for row, variant in enumerate(("final_norm", "no_final_norm")):
        for col, family in enumerate(families):
            ax = axes[row][col]
            for aspect, per_layer in table[variant][family].items():
                layers = [int(l) for l in per_layer]
                ax.plot(layers, list(per_layer.values()), marker="o", ms=3, label=aspect)
            ax.set_title(f"{family}" + ("" if row == 0 else "\n(no final norm)"), fontsize=9)
            ax.set_ylim(-0.03, 1.03)
            ax.set_xlabel("layer", fontsize=8)
            ax.grid(alpha=0.3)
            if col == 0:
                ax.set_ylabel("share of images matching", fontsize=8)
            if row == 0 and col == len(families) - 1:
                ax.legend(fontsize=7, loc="lower right")
    fig.suptitle("Toy model: when does each caption family emerge in the lens?", fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def run_report(model="toy", seeds: int = 4, steps: int = 20, guidance: float = 7.5, per_family: int | None = 8,
               out: str | Path = "report", ablation: bool = True, final_layer: bool = True) -> dict:
    from tqdm.auto import tqdm

    from ..engine import Lens
    from ..models import load_pipeline

    lens = Lens(load_pipeline(model), cache_size=1)
    prompts = evaluation_prompts(per_family)
    seed_list = list(range(seeds))
    variants = {"final_norm": True, "no_final_norm": False} if ablation else {"final_norm": True}
    table = {"seeds": seed_list, "steps": steps, "guidance": guidance, "prompts": prompts}
    start = time.perf_counter()
    with tqdm(total=len(variants) * len(prompts), desc="families") as bar:
        for name, final_norm in variants.items():
            table[name] = {}
            for family, family_prompts in prompts.items():
                table[name][family] = score_family(lens, family_prompts, seed_list, steps, guidance, final_norm)
                bar.update()
    if final_layer:
        all_prompts = evaluation_prompts(None)
        table["final_layer"] = final_layer_accuracy(lens, all_prompts, seed_list, steps, guidance)
        table["final_layer_prompts"] = {family: len(ps) for family, ps in all_prompts.items()}
    table["seconds"] = round(time.perf_counter() - start, 1)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "emergence.json").write_text(json.dumps(table, indent=1))
    if ablation:
        plot(table, out / "emergence.png")
    return table


def summary(table: dict) -> str:
    """A markdown table: per family and aspect, the share at every layer (final norm on)."""
    lines = []
    for family, aspects in table["final_norm"].items():
        layers = list(next(iter(aspects.values())))
        if not lines:
            lines.append("| family | aspect | " + " | ".join(f"L{l}" for l in layers) + " |")
            lines.append("|---|---|" + "---|" * len(layers))
        for aspect, per_layer in aspects.items():
            lines.append(f"| {family} | {aspect} | " + " | ".join(f"{v:.2f}" for v in per_layer.values()) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="toy")
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--guidance", type=float, default=7.5)
    parser.add_argument("--per-family", type=int, default=8, help="prompts per family for the per-layer curves "
                        "(0 = all)")
    parser.add_argument("--no-ablation", action="store_true", help="skip the final_norm=False variant")
    parser.add_argument("--no-final-layer", action="store_true",
                        help="skip the last-layer accuracy over every evaluation prompt")
    parser.add_argument("--out", default="report")
    args = parser.parse_args(argv)
    table = run_report(args.model, args.seeds, args.steps, args.guidance, args.per_family or None, args.out,
                       ablation=not args.no_ablation, final_layer=not args.no_final_layer)
    print(summary(table))
    if "final_layer" in table:
        print("\nlast layer (the pipeline's own images), every evaluation prompt × seeds:")
        for family, aspects in table["final_layer"].items():
            n = table["final_layer_prompts"][family]
            print(f"  {family:11} ({n:2} prompts): " + ", ".join(f"{a} {v:.2f}" for a, v in aspects.items()))
    print(f"\nwrote {Path(args.out) / 'emergence.json'} ({table['seconds']} s)")


if __name__ == "__main__":
    main()
