"""What the toy model's denoiser knows, per block and timestep (the Revelio side of the toy model).

    python -m difflens_widgets.studies.probe_report --images 240 --out runs/probe

Renders single coloured objects (balanced over the common colours × shapes; random size and position), taps every
U-Net block at each timestep, and prints linear-probe accuracy tables for colour, shape, size and side (left/right
half) with their chance levels; then trains k-SAEs on chosen states and compares the purity of their latents with
random directions. Writes ``probe.json``, ``features.npz``, ``sae.json``, ``tables.md`` and ``probe.html``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from ..core.models import load_pipeline
from ..denoiser.probes import probe
from ..toy.world import world_probe_set


def run(
    images: int = 240,
    timesteps=(50, 250, 500, 750, 950),
    sae_states=(("up1", 50), ("mid", 500)),
    out: str | Path = "runs/probe",
    seed: int = 0,
) -> str:
    started = time.perf_counter()
    pictures, labels = world_probe_set(images, seed=seed)
    result = probe(load_pipeline("toy"), pictures, labels, timesteps=list(timesteps), seed=seed)
    probed = time.perf_counter() - started
    out = result.save(out)
    lines = [
        f"{images} renders, seed {seed}; linear probes on mean-pooled block outputs, 70/30 split "
        f"({probed:.0f} s for the taps and {len(result.blocks) * len(result.timesteps) * len(labels)} probes)\n"
    ]
    for label in result.accuracy:
        lines.append(f"### {label}\n\n{result.table(label)}\n")
    result.write_html(out / "probe.html")
    saes = {}
    for block, t in sae_states:
        sae = result.sae(block, t)
        saes[f"{block}@{t}"] = {
            "k": sae.k,
            "dead_share": sae.dead_share,
            "reconstruction_error": sae.reconstruction_error,
            "purity": {l: sae.mean_purity(l) for l in labels},
            "random_purity": sae.random_purity,
            "monosemantic": {l: sae.monosemantic(l)[:8] for l in labels},
        }
        lines.append(f"### k-SAE on {block} at t={t} (k={sae.k}, {sae.activations.shape[1]} latents)\n")
        lines.append(f"dead latents {sae.dead_share:.2f}; reconstruction error {sae.reconstruction_error:.3f}\n")
        lines.append("| label | mean purity of live latents | random directions | latents ≥ 0.9 pure |")
        lines.append("|---|---|---|---|")
        for label in labels:
            pure = sae.monosemantic(label)
            lines.append(f"| {label} | {sae.mean_purity(label):.2f} | {sae.random_purity[label]:.2f} | {len(pure)} |")
        lines.append("")
    (out / "sae.json").write_text(json.dumps(saes, indent=1))
    text = "\n".join(lines) + f"\n(total {time.perf_counter() - started:.0f} s)\n"
    (out / "tables.md").write_text(text)
    return text


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=240)
    parser.add_argument("--timesteps", default="50,250,500,750,950")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/probe")
    args = parser.parse_args(argv)
    print(run(args.images, [int(t) for t in args.timesteps.split(",")], out=args.out, seed=args.seed))


if __name__ == "__main__":
    main()
