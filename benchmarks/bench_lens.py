"""Sequential (one pipeline call per layer) vs batched lens: wall time and ratio, median of several runs.

    python benchmarks/bench_lens.py                    # tiny pipeline + SD 1.5 architecture at 256², on CPU
    python benchmarks/bench_lens.py --only tiny
    python benchmarks/bench_lens.py --only sd15 --size 512 --steps 50 --dtype float16   # on a GPU

The SD 1.5 pipeline is built from its published architecture with random weights: timing does not depend on weight
values, and nothing is downloaded. Both modes run in the same process, alternating, after one warm-up each.

The "guard" columns time the engine's non-finite check (core.finite: one reduction over each chunk's final latents
and one over its pixels) inside the batched runs, and its share of their wall time.
"""

from __future__ import annotations

import argparse
import statistics
import time
from contextlib import nullcontext

import torch

import difflens_widgets as dl
from difflens_widgets.core import finite
from difflens_widgets.testing import sd15_architecture, tiny_stable_diffusion

PROMPT = "a red circle left of a blue square"


def timed(fn) -> float:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start


class GuardClock:
    """Times every call of core.finite.finite_rows (the non-finite guard) while installed."""

    def __init__(self):
        self.seconds, self.original = 0.0, finite.finite_rows

    def __enter__(self):
        def timed_rows(values):
            start = time.perf_counter()
            try:
                return self.original(values)
            finally:
                self.seconds += time.perf_counter() - start

        finite.finite_rows = timed_rows
        return self

    def __exit__(self, *exc):
        finite.finite_rows = self.original


def compare(name: str, pipe, layers, steps: int, size: int | None, repeats: int) -> dict:
    lens = dl.Lens(pipe)
    kwargs = dict(layers=layers, seeds=[0], num_inference_steps=steps, height=size, width=size, use_cache=False)
    runs = {"sequential": [], "batched": []}
    for mode in runs:  # warm-up
        lens.run(PROMPT, sequential=mode == "sequential", **kwargs)
    guard = GuardClock()
    for _ in range(repeats):
        for mode in runs:
            with guard if mode == "batched" else nullcontext():
                runs[mode].append(timed(lambda mode=mode: lens.run(PROMPT, sequential=mode == "sequential", **kwargs)))
    n_layers = len(lens.run(PROMPT, **kwargs).layers)
    seq, bat = statistics.median(runs["sequential"]), statistics.median(runs["batched"])
    return dict(
        name=name,
        layers=n_layers,
        steps=steps,
        size=size or lens.adapter.default_size()[0],
        sequential=seq,
        batched=bat,
        ratio=seq / bat,
        repeats=repeats,
        guard_ms=guard.seconds / repeats * 1000,
        guard_share=guard.seconds / sum(runs["batched"]),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=("tiny", "sd15"), default=None)
    parser.add_argument("--size", type=int, default=256, help="SD 1.5 image side")
    parser.add_argument("--steps", type=int, default=3, help="SD 1.5 denoising steps")
    parser.add_argument("--sd-layers", default="0:13:3", help="SD 1.5 layers (13 = all of 0..12)")
    parser.add_argument("--dtype", default="float32", choices=("float32", "float16", "bfloat16"))
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    rows = []
    if args.only in (None, "tiny"):
        pipe = tiny_stable_diffusion(num_layers=12)
        rows.append(compare("tiny SD (32², 12 blocks)", pipe, None, 10, None, args.repeats))
    if args.only in (None, "sd15"):
        pipe = sd15_architecture(device=device, dtype=getattr(torch, args.dtype))
        rows.append(
            compare(
                f"SD 1.5 arch, random ({args.dtype})",
                pipe,
                args.sd_layers,
                args.steps,
                args.size,
                max(1, args.repeats // 2),
            )
        )
    print(
        f"\ndevice: {device} "
        f"({torch.cuda.get_device_name() if device == 'cuda' else f'{torch.get_num_threads()} threads'})"
        f", torch {torch.__version__}"
    )
    columns = ["layers", "steps", "size", "sequential s", "batched s", "ratio", "runs", "guard ms", "guard share"]
    header = f"| {'pipeline':34} | " + " | ".join(columns) + " |"
    print(header)
    print("|" + "|".join("-" * (len(c)) for c in header.split("|")[1:-1]) + "|")
    for r in rows:
        print(
            f"| {r['name']:34} | {r['layers']:6} | {r['steps']:5} | {r['size']:4} | {r['sequential']:12.3f} | "
            f"{r['batched']:9.3f} | {r['ratio']:4.2f}x | {r['repeats']:4} | {r['guard_ms']:8.2f} | "
            f"{r['guard_share']:11.4%} |"
        )


if __name__ == "__main__":
    main()
