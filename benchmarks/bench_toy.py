"""The embedded toy model's speed on this machine: what a CPU, Binder or CI user waits for.

    python benchmarks/bench_toy.py            # median of 5 after one warm-up; run on an idle machine

Prints one 64×64 image at 20 DDIM steps (the pipeline's own call) and the lens over all 9 layers × 1 seed (one
batched run), each the median of ``--repeats`` runs.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import difflens_widgets as dl

PROMPT = "a red circle left of a blue square"


def median_seconds(fn, repeats: int) -> float:
    fn()  # warm-up: first-call allocations, lazy imports
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="toy")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    pipe = dl.load_pipeline(args.model, device="cpu")
    pipe.set_progress_bar_config(disable=True)
    lens = dl.Lens(pipe, cache_size=0)
    one = median_seconds(
        lambda: pipe(PROMPT, num_inference_steps=args.steps, generator=torch.Generator().manual_seed(0)), args.repeats
    )
    every = median_seconds(lambda: lens.run(PROMPT, seeds=[0], num_inference_steps=args.steps), args.repeats)
    print(f"toy model, {torch.get_num_threads()} CPU threads, {args.steps} steps, median of {args.repeats}")
    print("| what | seconds |\n|---|---|")
    print(f"| one image (pipeline call) | {one:.2f} |")
    print(f"| lens, all {lens.num_layers + 1} layers × 1 seed | {every:.2f} |")


if __name__ == "__main__":
    main()
