"""Denoiser probes on the toy model: how long each part takes on this machine.

    python benchmarks/bench_probe.py [--images 240] [--timesteps 50,250,500,750,950]

Times the taps (VAE encode, noise, one U-Net pass per timestep and batch, every block), the linear probes (one per
block × timestep × label), the Diff-C-style conv head on one state, and one k-SAE (k = 32, 2,000 steps).
"""

from __future__ import annotations

import argparse
import time

import difflens_widgets as dl
from difflens_widgets.denoiser import probes
from difflens_widgets.denoiser import taps as denoiser
from difflens_widgets.toy.world import world_probe_set


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=240)
    parser.add_argument("--timesteps", default="50,250,500,750,950")
    args = parser.parse_args()
    timesteps = [int(t) for t in args.timesteps.split(",")]
    pipe = dl.load_pipeline("toy")
    images, labels = world_probe_set(args.images)
    rows = []
    started = time.perf_counter()
    features = denoiser.image_features(pipe, images, timesteps, keep_spatial=True)
    rows.append(
        (
            f"taps: {args.images} images × {len(timesteps)} timesteps × {len(features.blocks)} blocks",
            time.perf_counter() - started,
        )
    )
    started = time.perf_counter()
    for values in labels.values():
        for block in features.blocks:
            for t in timesteps:
                probes.linear_probe(features.matrix(block, t), values)
    count = len(labels) * len(features.blocks) * len(timesteps)
    rows.append((f"{count} linear probes (logistic regression, 70/30 split)", time.perf_counter() - started))
    started = time.perf_counter()
    probes.conv_probe(features.spatial[("up1", timesteps[0])], labels["shape"])
    rows.append(("1 Diff-C-style conv head (150 epochs) on up1", time.perf_counter() - started))
    started = time.perf_counter()
    probes.train_sae(features.matrix("up1", timesteps[0]), labels)
    rows.append(("1 k-SAE (k=32, 4× width, 2,000 steps) on up1", time.perf_counter() - started))
    print("\n| part | seconds |\n|---|---|")
    for name, seconds in rows:
        print(f"| {name} | {seconds:.1f} |")
    print(f"| total | {sum(s for _, s in rows):.1f} |")


if __name__ == "__main__":
    main()
