"""The embedded toy models' speed on this machine: what a CPU, Binder or CI user waits for.

    python benchmarks/bench_toy.py            # both models, median of 5 after one warm-up; run on an idle machine
    python benchmarks/bench_toy.py --models toy-t5

Prints, per model, one 64×64 image at 20 DDIM steps (the pipeline's own call) and the lens over all 9 layers × 1
seed (one batched run), each the median of ``--repeats`` runs.
"""

from __future__ import annotations

import argparse
import inspect
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


def bench(model: str, steps: int, repeats: int) -> tuple[float, float, int]:
    """Seconds for one image and for the lens over every layer × 1 seed, and the number of layers."""
    pipe = dl.load_pipeline(model, device="cpu")
    pipe.set_progress_bar_config(disable=True)
    lens = dl.Lens(pipe, cache_size=0)
    # PixArt's pipeline resizes to its aspect-ratio bins unless told not to; the toy's 64×64 is none of them
    own_size = (
        {"use_resolution_binning": False} if "use_resolution_binning" in inspect.signature(pipe).parameters else {}
    )
    one = median_seconds(
        lambda: pipe(PROMPT, num_inference_steps=steps, generator=torch.Generator().manual_seed(0), **own_size),
        repeats,
    )
    every = median_seconds(lambda: lens.run(PROMPT, seeds=[0], num_inference_steps=steps), repeats)
    return one, every, lens.num_layers + 1


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="toy,toy-t5", help="comma-separated: toy, toy-t5, pipeline folders")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    rows = [(model, *bench(model, args.steps, args.repeats)) for model in args.models.split(",")]
    print(f"{torch.get_num_threads()} CPU threads, {args.steps} steps, median of {args.repeats}")
    print("| model | one image (pipeline call) s | lens, all layers × 1 seed s |\n|---|---|---|")
    for model, one, every, layers in rows:
        print(f"| {model} | {one:.2f} | {every:.2f} ({layers} layers) |")


if __name__ == "__main__":
    main()
