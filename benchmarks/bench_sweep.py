"""Sweep throughput against a plain per-prompt loop of ``Lens.run`` on one machine (toy model by default).

    python benchmarks/bench_sweep.py [--prompts 12] [--seeds 0,1] [--steps 20] [--workers 2] [--model toy]

Three ways to lens the same prompts at every layer and seed, each writing every image as a PNG:
1. a plain loop: ``Lens.run`` per prompt, ``image.save`` per image (what a user writes by hand);
2. ``difflens sweep`` in one process, without and with the default scorer (the toy annotator / CLIP), which adds
   the Parquet rows, the manifest and the process start;
3. ``difflens sweep --ray --workers N`` on a local Ray (N actors, one pipeline each; includes starting Ray).
On this project's 2-core CPU, Ray cannot add compute; the figure to read is its overhead. On a machine with N GPUs,
``--gpus-per-worker 1 --workers N`` puts one pipeline on each GPU.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import difflens_widgets as dl
from difflens_widgets.core import validate as options

COLOURS = ["red", "green", "blue", "yellow", "orange", "purple"]
SHAPES = ["circle", "square", "triangle", "star", "cross", "diamond"]


def prompts(count: int) -> list[str]:
    """``count`` distinct shapes-world prompts (single objects and relations, alternating)."""
    out = []
    for i in range(count):
        a = f"{COLOURS[i % 6]} {SHAPES[(i + i // 6) % 6]}"
        b = f"{COLOURS[(i + 2) % 6]} {SHAPES[(i + 3 + i // 6) % 6]}"
        out.append(f"a {a} above a {b}" if i % 2 else f"a {a}")
    assert len(set(out)) == count, "prompts repeat: the loop would read them from the Lens cache"
    return out


def plain_loop(model: str, texts: list[str], seeds: list[int], steps: int, out: Path) -> tuple[float, int]:
    started = time.perf_counter()
    lens = dl.Lens(dl.load_pipeline(model))
    images = 0
    for index, prompt in enumerate(texts):
        result = lens.run(prompt, seeds=seeds, num_inference_steps=steps)
        for (layer, seed), image in result.images.items():
            image.save(out / f"{index:05d}_layer{layer:02d}_seed{seed}.png")
            images += 1
    return time.perf_counter() - started, images


def cli_sweep(model: str, prompt_file: Path, seeds: str, steps: int, out: Path, extra: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(
        [
            sys.executable,
            "-m",
            "difflens_widgets.cli",
            "sweep",
            str(prompt_file),
            "--out",
            str(out),
            "--model",
            model,
            "--seeds",
            seeds,
            "--num-inference-steps",
            str(steps),
            *extra,
        ],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=12)
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--model", default="toy")
    args = parser.parse_args()
    texts = prompts(args.prompts)
    seeds = options.parse_seeds(args.seeds)
    work = Path(tempfile.mkdtemp())
    prompt_file = work / "prompts.txt"
    prompt_file.write_text("\n".join(texts) + "\n")
    (work / "loop").mkdir()
    loop_s, images = plain_loop(args.model, texts, seeds, args.steps, work / "loop")
    bare_s = cli_sweep(args.model, prompt_file, args.seeds, args.steps, work / "bare", ["--scorer", "none"])
    local_s = cli_sweep(args.model, prompt_file, args.seeds, args.steps, work / "local", [])
    ray_s = cli_sweep(
        args.model, prompt_file, args.seeds, args.steps, work / "ray", ["--ray", "--workers", str(args.workers)]
    )
    print(
        f"\n{args.model}: {args.prompts} prompts × all layers × seeds {args.seeds}, {args.steps} steps = "
        f"{images} images (wall time, including model loading)"
    )
    print("| way | seconds | images/s | vs loop |")
    print("|---|---|---|---|")
    for name, seconds in (
        ("plain loop of Lens.run + PNG saves (in process)", loop_s),
        ("difflens sweep, one process, no scorer (CLI, Parquet)", bare_s),
        ("difflens sweep, one process, default scorer (CLI)", local_s),
        (f"difflens sweep --ray --workers {args.workers} (CLI, local Ray)", ray_s),
    ):
        print(f"| {name} | {seconds:.1f} | {images / seconds:.2f} | {loop_s / seconds:.2f}× |")


if __name__ == "__main__":
    main()
