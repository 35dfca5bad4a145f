"""The lens on real-size architectures (random weights, built from configs: nothing is downloaded), batched vs the
per-layer loop, in one run: wall time, images/s, share of the FLOP floor, peak GPU memory.

    python benchmarks/bench_gpu.py                              # SD 1.5 (1 and 4 seeds) + SDXL under a 16 GB cap
    python benchmarks/bench_gpu.py --configs sd15,sdxl,flux     # + FLUX-size, if the GPU holds it (~34 GB bf16)
    python benchmarks/bench_gpu.py --compile --channels-last     # the opt-in speed-ups
    python benchmarks/bench_gpu.py --device cpu --configs sd15 --size 64 --steps 2 --layers 0:13:6   # smoke run

FLOP floor: the FLOPs of the whole lens (counted once with torch's FlopCounterMode on a 1- and a 2-step run of one
image, extrapolated to every image and step) divided by ``--peak-tflops`` (bf16/fp16 dense; ~800 measured on an
H100 here). "floor share" = floor / measured wall time: 100% would be a GPU doing nothing but matrix products.
The per-layer loop is ``Lens.run(..., sequential=True)``: one pipeline call per layer, all seeds in it, which is
what the paper's code and every other implementation do.
"""

from __future__ import annotations

import argparse
import gc
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

import difflens_widgets as dl
from difflens_widgets.core.memory import memory_cap
from difflens_widgets.core.models import place
from difflens_widgets.testing import REAL_SIZE

PROMPT = "a red circle left of a blue square"
# name → (builder key, size, steps, layers, memory cap in GiB or None)
CONFIGS = {
    "sd15": ("sd15", 512, 50, None, None),
    "sdxl": ("sdxl", 1024, 30, None, 16),
    "flux": ("flux", 1024, 28, "0:25:4", None),
}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_run(lens: dl.Lens, device: torch.device, **kwargs) -> tuple[float, float | None, dl.LensResult]:
    """Wall seconds, peak GPU memory (GiB) and the result of one lens run."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    synchronize(device)
    start = time.perf_counter()
    result = lens.run(PROMPT, use_cache=False, **kwargs)
    synchronize(device)
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return seconds, peak, result


def lens_flops(lens: dl.Lens, images: int, steps: int, size: int, guidance: float) -> float:
    """FLOPs of a lens over ``images`` images × ``steps`` steps, from two counted one-image runs."""
    counts = []
    for n in (1, 2):
        with FlopCounterMode(display=False) as counter:
            lens.run(
                PROMPT,
                layers=[lens.num_layers],
                num_inference_steps=n,
                height=size,
                width=size,
                guidance_scale=guidance,
                use_cache=False,
            )
        counts.append(counter.get_total_flops())
    per_step, fixed = counts[1] - counts[0], 2 * counts[0] - counts[1]
    return images * (fixed + per_step * steps)


def bench(name: str, args, device: torch.device, dtype: torch.dtype) -> list[dict]:
    """The config's rows, under its memory cap (a 16 GB card simulated on a bigger one), the cap lifted after."""
    with memory_cap(device, CONFIGS[name][4]):
        return bench_capped(name, args, device, dtype)


def bench_capped(name: str, args, device: torch.device, dtype: torch.dtype) -> list[dict]:
    key, size, steps, layers, cap = CONFIGS[name]
    size, steps = args.size or size, args.steps or steps
    layers = args.layers or layers
    pipe = REAL_SIZE[key](device=device, dtype=dtype)
    dl.models.keep_vae_safe(pipe, dtype)
    place(pipe, device, channels_last=args.channels_last)
    pipe.set_progress_bar_config(disable=True)
    lens = dl.Lens(pipe, compile=args.compile)
    guidance = 3.5 if key == "flux" else 7.5
    common = dict(layers=layers, num_inference_steps=steps, height=size, width=size, guidance_scale=guidance)
    lens.run(PROMPT, layers=[0], num_inference_steps=2, height=size, width=size, use_cache=False)  # warm-up
    rows = []
    for seeds in args.seeds:
        seed_list = list(range(seeds))
        batched = timed_run(lens, device, seeds=seed_list, **common)
        sequential = timed_run(lens, device, seeds=seed_list, sequential=True, **common)
        images = len(batched[2].images)
        floor = lens_flops(lens, images, steps, size, guidance) / (args.peak_tflops * 1e12)
        for mode, (seconds, peak, result) in (("batched", batched), ("per-layer loop", sequential)):
            rows.append(
                dict(
                    model=f"{name} {size}² ({str(dtype).removeprefix('torch.')})",
                    mode=mode,
                    layers=len(result.layers),
                    seeds=seeds,
                    steps=steps,
                    seconds=seconds,
                    images_per_s=images / seconds,
                    floor_share=floor / seconds,
                    peak_gib=peak,
                    per_call=result.params["images_per_call"],
                    events="; ".join(result.params["memory_events"]) or "-",
                    cap=f"{cap} GB" if cap and device.type == "cuda" else "-",
                )
            )
        rows.append(dict(speedup=sequential[0] / batched[0], model=rows[-1]["model"], seeds=seeds))
    del lens, pipe
    return rows


def print_table(rows: list[dict]) -> None:
    print(
        "| model | mode | layers × seeds | steps | wall s | images/s | FLOP-floor share | peak GiB | memory cap "
        "| images per call | memory events |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        if "speedup" in r:
            print(
                f"| {r['model']} | **batched / loop speed-up, {r['seeds']} seed(s)** | | | "
                f"**{r['speedup']:.2f}×** | | | | | | |"
            )
            continue
        peak = f"{r['peak_gib']:.1f}" if r["peak_gib"] is not None else "-"
        calls = sorted(set(r["per_call"]))
        print(
            f"| {r['model']} | {r['mode']} | {r['layers']} × {r['seeds']} | {r['steps']} | {r['seconds']:.2f} | "
            f"{r['images_per_s']:.2f} | {100 * r['floor_share']:.0f}% | {peak} | {r['cap']} | {calls} | "
            f"{r['events']} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", default="sd15,sdxl", help=f"comma-separated, from {', '.join(CONFIGS)}")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default=None, help="default: the family's own on a GPU, float32 on the CPU")
    parser.add_argument("--seeds", default="1,4", help="seed counts to run, e.g. 1,4")
    parser.add_argument("--size", type=int, default=None, help="override every config's image side")
    parser.add_argument("--steps", type=int, default=None, help="override every config's denoising steps")
    parser.add_argument("--layers", default=None, help="override the layers (default: all)")
    parser.add_argument("--peak-tflops", type=float, default=800.0)
    parser.add_argument("--compile", action="store_true", help="Lens(compile=True)")
    parser.add_argument("--channels-last", action="store_true")
    args = parser.parse_args()
    args.seeds = [int(s) for s in args.seeds.split(",")]
    device = torch.device(args.device)
    if device.type == "cpu":
        dl.models.use_available_cpus()
    rows = []
    for name in args.configs.split(","):
        builder = CONFIGS[name][0]
        family = {"sd15": "StableDiffusionPipeline", "sdxl": "StableDiffusionXLPipeline", "flux": "FluxPipeline"}[
            builder
        ]
        dtype = dl.models.parse_dtype(args.dtype) or dl.models.default_dtype(device, family)
        try:
            rows += bench(name, args, device, dtype)
        except MemoryError as err:  # the lens's own one-line advice; other configs still run
            print(f"{name}: {err}")
    label = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"\ndevice: {label}; torch {torch.__version__}; compile={args.compile}, channels_last={args.channels_last}")
    print_table(rows)


if __name__ == "__main__":
    main()
