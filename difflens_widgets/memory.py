"""How many images one denoising call may hold: measured on the GPU, never a lost run on out-of-memory.

Why measure: the memory one (layer, seed) image costs depends on the architecture, the resolution, the attention
kernel, the dtype and the VAE (its decode of the whole batch is often the peak), so any bytes-per-pixel constant is
wrong for some family. On CUDA the engine runs a small first chunk, reads the peak memory it took, and sizes the
following chunks to the memory that is actually free. If a chunk still runs out of memory, it is halved and
retried: only that chunk's work is repeated, no finished image is lost, and the result says what happened.

On the CPU there is no reliable peak to read; the chunk size comes from a per-pixel estimate against a quarter of
the machine's RAM, and the same back-off applies.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

import torch

MAX_CHUNK = 64  # beyond this a bigger batch buys nothing measurable and delays the first finished images
PROBE_CHUNK = 2  # images in the measuring chunk (2: one image alone hides a batch's per-image cost)
HEADROOM = 0.85  # share of the free memory a chunk may plan to use (fragmentation, the allocator's rounding)
CPU_BYTES_PER_PIXEL = 5_000  # fp32 estimate per output pixel on the CPU (UNet batch doubled by guidance + decode)


def is_out_of_memory(err: BaseException) -> bool:
    """True for a CUDA/accelerator out-of-memory error and for the CPU allocator's "can't allocate memory"."""
    oom_types = tuple(t for t in (getattr(torch, "OutOfMemoryError", None),
                                  getattr(torch.cuda, "OutOfMemoryError", None)) if t is not None)
    if oom_types and isinstance(err, oom_types):
        return True
    if isinstance(err, MemoryError):
        return True
    text = str(err)
    return isinstance(err, RuntimeError) and ("out of memory" in text.lower() or "can't allocate memory" in text)


def release_cached(device: torch.device) -> None:
    """Give cached blocks back after an out-of-memory error so the smaller retry can use them."""
    if device.type == "cuda":
        torch.cuda.empty_cache()


def cpu_budget_bytes() -> float:
    try:
        return 0.25 * os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 4 * 2**30


def cpu_chunk_size(height: int, width: int, dtype: torch.dtype | None) -> int:
    """Images per call on the CPU, from the per-pixel estimate (halved again for half precision's savings)."""
    per_image = height * width * CPU_BYTES_PER_PIXEL * (0.5 if dtype in (torch.float16, torch.bfloat16) else 1)
    return int(max(1, min(MAX_CHUNK, cpu_budget_bytes() // per_image)))


@dataclass
class CudaMemory:
    """The few CUDA memory readings the sizing needs (a class so tests can stand in a simulated GPU)."""

    device: torch.device

    def available(self) -> int:
        """Bytes a new allocation can get: free on the device plus what PyTorch holds cached but unused, within
        the per-process cap if one was set (``torch.cuda.set_per_process_memory_fraction``)."""
        free, total = torch.cuda.mem_get_info(self.device)
        allocated = torch.cuda.memory_allocated(self.device)
        cached = max(0, torch.cuda.memory_reserved(self.device) - allocated)
        fraction = getattr(torch.cuda, "get_per_process_memory_fraction", lambda _device: 1.0)(self.device)
        return int(max(0, min(free + cached, fraction * total - allocated)))

    def start_peak(self) -> int:
        torch.cuda.synchronize(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        return torch.cuda.memory_allocated(self.device)

    def peak(self) -> int:
        torch.cuda.synchronize(self.device)
        return torch.cuda.max_memory_allocated(self.device)


@dataclass
class ChunkPlan:
    """Chunk sizes for one run: fixed (``max_batch``), estimated (CPU) or measured (CUDA), halved on OOM.

    ``events`` is the human-readable story (shown by the dashboard and kept in ``LensResult.params``).
    """

    size: int
    measure_next: bool = False
    memory: CudaMemory | None = None
    events: list[str] = field(default_factory=list)
    sizes_used: list[int] = field(default_factory=list)
    _baseline: int = 0

    @classmethod
    def for_run(cls, device: torch.device, height: int, width: int, n_items: int, max_batch: int | None,
                dtype: torch.dtype | None = None, memory: CudaMemory | None = None) -> "ChunkPlan":
        if max_batch is not None:
            return cls(size=max_batch)
        if device.type == "cuda" or memory is not None:
            memory = memory or CudaMemory(device)
            probe = min(PROBE_CHUNK, n_items)
            return cls(size=probe, measure_next=n_items > probe, memory=memory)
        return cls(size=cpu_chunk_size(height, width, dtype))

    def before_chunk(self) -> None:
        if self.measure_next and self.memory is not None:
            self._baseline = self.memory.start_peak()

    def after_chunk(self, images_in_chunk: int) -> None:
        """Record a finished chunk; after the measuring chunk, size the rest from its peak."""
        self.sizes_used.append(images_in_chunk)
        if not (self.measure_next and self.memory is not None):
            return
        self.measure_next = False
        per_image = max(1, (self.memory.peak() - self._baseline)) / max(1, images_in_chunk)
        fits = int(HEADROOM * self.memory.available() // per_image)
        self.size = max(1, min(MAX_CHUNK, fits))
        self.events.append(f"measured {per_image / 2**20:.0f} MiB per image; {self.size} images per call")

    def after_out_of_memory(self, attempted: int, err: BaseException) -> None:
        """Halve the chunk (or give up at one image with advice on what to change)."""
        self.measure_next = False
        if attempted <= 1:
            raise MemoryError(
                "out of memory denoising a single image; lower height/width, load the pipeline with "
                "offload='model' (or 'sequential'), or use a smaller dtype"
            ) from err
        self.size = max(1, attempted // 2)
        self.events.append(f"out of memory at {attempted} images per call; retried at {self.size}")


def chunk_count(n_items: int, size: int) -> int:
    return math.ceil(n_items / max(1, size))
