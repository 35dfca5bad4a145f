"""What cross-attention capture costs: a plain lens run against the same run with ``attention=True``.

    python benchmarks/bench_attention.py                  # the toy model + SD 1.5 architecture at 256², on CPU
    python benchmarks/bench_attention.py --only toy
    python benchmarks/bench_attention.py --only sd15 --size 512 --steps 20 --dtype float16   # on a GPU

Both modes run in one process, alternating, after one warm-up each; times are medians. Memory is the peak above
the process's level just before the run: CUDA's own counter on a GPU, the resident set sampled every 5 ms on a CPU
(coarser: it also sees the allocator keeping freed pages). ``maps`` is what the result keeps (every token's map and
per-step mass for every image). The SD 1.5 pipeline is its published architecture with random weights: nothing is
downloaded, and timing does not depend on weight values.
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time

import psutil
import torch

import difflens_widgets as dl
from difflens_widgets.testing import sd15_architecture

PROMPT = "a red circle left of a blue square"


class PeakMemory:
    """Peak memory above the level at entry, in bytes (CUDA's counter, or the sampled resident set on a CPU)."""

    def __enter__(self) -> PeakMemory:
        self.cuda = torch.cuda.is_available()
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            self.process = psutil.Process()
            self.base = self.process.memory_info().rss
            self.top = self.base
            self.done = threading.Event()
            self.sampler = threading.Thread(target=self._sample, daemon=True)
            self.sampler.start()
        return self

    def _sample(self) -> None:
        while not self.done.wait(0.005):
            self.top = max(self.top, self.process.memory_info().rss)

    def __exit__(self, *exc) -> None:
        if self.cuda:
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated() - self.base
        else:
            self.done.set()
            self.sampler.join()
            self.peak = self.top - self.base


def measured(lens: dl.Lens, attention: bool, kwargs: dict) -> tuple[float, int, dl.LensResult]:
    with PeakMemory() as memory:
        start = time.perf_counter()
        result = lens.run(PROMPT, attention=attention, **kwargs)
        seconds = time.perf_counter() - start
    return seconds, memory.peak, result


def compare(name: str, pipe, layers, steps: int, size: int | None, repeats: int) -> dict:
    lens = dl.Lens(pipe)
    kwargs = dict(layers=layers, seeds=[0], num_inference_steps=steps, height=size, width=size, use_cache=False)
    times: dict[bool, list[float]] = {False: [], True: []}
    peaks: dict[bool, list[int]] = {False: [], True: []}
    for attention in times:  # warm-up
        measured(lens, attention, kwargs)
    for _ in range(repeats):
        for attention in times:
            seconds, peak, result = measured(lens, attention, kwargs)
            times[attention].append(seconds)
            peaks[attention].append(peak)
            if attention:
                images = len(result.attention_maps)
                kept = sum(a.nbytes for a in result.attention_maps.values())
                kept += sum(a.nbytes for a in result.attention_mass.values())
    plain, captured = statistics.median(times[False]), statistics.median(times[True])
    return dict(
        name=name,
        images=images,
        steps=steps,
        size=size or lens.adapter.default_size()[0],
        plain=plain,
        captured=captured,
        ratio=captured / plain,
        extra_peak_mb=(max(peaks[True]) - max(peaks[False])) / 2**20,
        maps_kb_per_image=kept / images / 2**10,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=("toy", "sd15"), default=None)
    parser.add_argument("--size", type=int, default=256, help="SD 1.5 image side")
    parser.add_argument("--steps", type=int, default=3, help="SD 1.5 denoising steps")
    parser.add_argument("--sd-layers", default="0:13:4", help="SD 1.5 layers")
    parser.add_argument("--dtype", default="float32", choices=("float32", "float16", "bfloat16"))
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    rows = []
    if args.only in (None, "toy"):
        rows.append(compare("toy model (every layer)", dl.load_pipeline("toy"), None, 20, None, args.repeats))
    if args.only in (None, "sd15"):
        pipe = sd15_architecture(device=device, dtype=getattr(torch, args.dtype))
        name = f"SD 1.5 arch, random ({args.dtype})"
        rows.append(compare(name, pipe, args.sd_layers, args.steps, args.size, args.repeats))
    print(f"device: {device}, torch threads: {torch.get_num_threads()}")
    print(f"{'pipeline':32s} {'images':>6s} {'steps':>5s} {'size':>5s} {'plain s':>8s} {'attn s':>8s} "
          f"{'ratio':>6s} {'+peak MB':>9s} {'maps KB/img':>11s}")  # fmt: skip
    for r in rows:
        timing = f"{r['plain']:8.2f} {r['captured']:8.2f} {r['ratio']:6.2f}"
        memory = f"{r['extra_peak_mb']:9.1f} {r['maps_kb_per_image']:11.1f}"
        print(f"{r['name']:32s} {r['images']:6d} {r['steps']:5d} {r['size']:5d} {timing} {memory}")


if __name__ == "__main__":
    main()
