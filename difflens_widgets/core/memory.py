"""How many images one denoising call may hold: measured on the GPU, never a lost run on out-of-memory.

Why measure: the memory one (layer, seed) image costs depends on the architecture, the resolution, the attention
kernel, the dtype and the VAE, so any bytes-per-pixel constant is wrong for some family. On CUDA the engine first
probes: one denoising step of two images, then one decode of them, each with its peak memory read. Denoising and
decoding are then sized apart — the denoiser's batch from the denoiser's memory, the VAE's from the VAE's (an fp32
VAE decoding 1024² images costs several times what a denoising step does; decoding a whole chunk at once would bound
the chunk by the decode). The decode runs in sub-chunks (:func:`decoding_in_sub_chunks`), each halved on its own
out-of-memory without losing the chunk's denoising. If a chunk still runs out of memory, it is halved and retried:
only that chunk's work is repeated, no finished image is lost, and the result says what happened.

On the CPU there is no reliable peak to read: an image's working set is estimated per pixel and compared with the
memory that is free now (MemAvailable, within the container's cgroup limit). Chunks are sized to fit it; a request
whose single image cannot fit is refused before any denoiser call, saying what to change, instead of being
discovered by the kernel's out-of-memory killer (which loses the kernel and every result in it).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

MAX_CHUNK = 64  # beyond this a bigger batch buys nothing measurable and delays the first finished images
PROBE_CHUNK = 2  # images in the probe's step and decode (2: one image alone hides a batch's per-image cost)
HEADROOM = 0.85  # share of the free memory a chunk may plan to use (fragmentation, the allocator's rounding)
CPU_BYTES_PER_PIXEL = 5_000  # fp32 estimate per output pixel on the CPU (UNet batch doubled by guidance + decode)


def is_out_of_memory(err: BaseException) -> bool:
    """True for a CUDA/accelerator out-of-memory error and for the CPU allocator's "can't allocate memory"."""
    oom_types = tuple(
        t
        for t in (getattr(torch, "OutOfMemoryError", None), getattr(torch.cuda, "OutOfMemoryError", None))
        if t is not None
    )
    if oom_types and isinstance(err, oom_types):
        return True
    if isinstance(err, MemoryError):
        return True
    text = str(err)
    return isinstance(err, RuntimeError) and ("out of memory" in text.lower() or "can't allocate memory" in text)


def device_with_index(device: torch.device | str) -> torch.device:
    """``device`` with its index (``cuda`` → ``cuda:<current>``): what torch's per-device calls such as
    ``set_per_process_memory_fraction`` require (a bare ``cuda`` is refused there)."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return device


@contextmanager
def memory_cap(device: torch.device | str, gib: float | None):
    """Cap this process's memory on a CUDA ``device`` at ``gib`` GiB while inside (a smaller card on a big one, as
    the benchmarks do: a 16 GB T4 on an H200), then lift the cap. No cap (None) or no CUDA device: nothing."""
    device = torch.device(device)
    if gib is None or device.type != "cuda":
        yield
        return
    device = device_with_index(device)
    total = torch.cuda.get_device_properties(device).total_memory
    torch.cuda.set_per_process_memory_fraction(min(1.0, gib * 2**30 / total), device)
    try:
        yield
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, device)


def release_cached(device: torch.device) -> None:
    """Give cached blocks back after an out-of-memory error so the smaller retry can use them."""
    if device.type == "cuda":
        torch.cuda.empty_cache()


def needs(
    components: dict,
    hidden_states: int,
    texts: int,
    tokens: int,
    width: int,
    dtype: torch.dtype,
    per_image: float | None,
) -> dict:
    """What a lens run will hold, in bytes, before it runs (``Lens.run(..., dry_run=True)["memory"]``): the weights
    of each component (with CPU offload only the one computing is on the GPU), the one text-encoder pass with every
    hidden state kept (``hidden_states`` × ``texts`` × ``tokens`` × ``width``), and one image's share of a
    denoising call (a CPU estimate; on a GPU a one-step probe measures it when the run starts: None)."""
    weights = {
        name: sum(p.numel() * p.element_size() for p in module.parameters())
        for name, module in components.items()
        if isinstance(module, torch.nn.Module)
    }
    element = torch.empty((), dtype=dtype).element_size()
    return {
        "weights_bytes": weights,
        "text_pass_bytes": hidden_states * texts * tokens * width * element,
        "per_image_bytes": None if per_image is None else int(per_image),
    }


def cpu_image_bytes(height: int, width: int, dtype: torch.dtype | None) -> float:
    """The CPU working set of one image in a denoiser call, estimated per output pixel (half for half precision)."""
    return height * width * CPU_BYTES_PER_PIXEL * (0.5 if dtype in (torch.float16, torch.bfloat16) else 1)


@dataclass
class CpuMemory:
    """The RAM a new allocation can get now: /proc/meminfo's MemAvailable, within the cgroup's limit (a container
    or a Binder pod is often limited far below the machine). A class so tests can stand in a smaller machine."""

    def available(self) -> int:
        free = _meminfo_available()
        limit = _cgroup_room()
        candidates = [v for v in (free, limit) if v is not None]
        if not candidates:  # no reading: a quarter of the physical memory, as a guess
            try:
                return int(0.25 * os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
            except (ValueError, OSError, AttributeError):
                return 4 * 2**30
        return int(min(candidates))


def _meminfo_available() -> int | None:
    try:
        for line in open("/proc/meminfo", encoding="ascii"):
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return None


def _cgroup_room() -> int | None:
    """Bytes left under the cgroup's memory limit (v2, then v1), or None without a limit."""
    for limit_file, usage_file in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                   ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                    "/sys/fs/cgroup/memory/memory.usage_in_bytes")):  # fmt: skip
        try:
            limit = open(limit_file, encoding="ascii").read().strip()
            usage = int(open(usage_file, encoding="ascii").read().strip())
        except (OSError, ValueError):
            continue
        if limit == "max" or int(limit) >= 2**60:
            return None
        return max(0, int(limit) - usage)
    return None


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
    probe_first: bool = False  # measured: run :meth:`probe` before the first chunk
    memory: CudaMemory | None = None
    decode_size: int | None = None  # images per VAE decode call (None: the whole chunk at once)
    events: list[str] = field(default_factory=list)
    sizes_used: list[int] = field(default_factory=list)

    @classmethod
    def for_run(
        cls,
        device: torch.device,
        height: int,
        width: int,
        n_items: int,
        max_batch: int | None,
        dtype: torch.dtype | None = None,
        memory: CudaMemory | CpuMemory | None = None,
    ) -> ChunkPlan:
        if max_batch is not None:
            return cls(size=max_batch)
        if device.type == "cuda" or hasattr(memory, "peak"):  # measured: a GPU (or a stand-in for one)
            gpu = memory if isinstance(memory, CudaMemory) or hasattr(memory, "peak") else CudaMemory(device)
            return cls(size=min(PROBE_CHUNK, n_items), probe_first=True, memory=gpu)  # type: ignore[arg-type]
        per_image = cpu_image_bytes(height, width, dtype)
        room = HEADROOM * (memory or CpuMemory()).available()
        if per_image > room:
            raise MemoryError(
                f"one {width}×{height} image needs about {per_image / 2**30:.1f} GiB on the CPU (an estimate), and "
                f"{room / 2**30:.1f} GiB can be used now: lower height/width (the pipeline's own size is the "
                "cheapest), close other programs, or run on a GPU"
            )
        size = int(max(1, min(MAX_CHUNK, room // per_image)))
        plan = cls(size=size)
        if size < min(n_items, MAX_CHUNK):
            plan.events.append(f"{size} images per call to fit {room / 2**30:.1f} GiB of free memory")
        return plan

    def probe(self, denoise_step: Callable[[int], object], decode: Callable[[object], object], n_items: int) -> None:
        """Size denoising and decoding apart from their measured peaks: ``denoise_step(n)`` runs one denoising step
        of ``n`` images and returns their latents, ``decode(latents)`` decodes them. Costs one step and one decode
        of :data:`PROBE_CHUNK` images, not a whole chunk at low occupancy."""
        self.probe_first = False
        if self.memory is None:
            return
        n = min(PROBE_CHUNK, n_items)
        try:
            baseline = self.memory.start_peak()
            latents = denoise_step(n)
            denoising = max(1, self.memory.peak() - baseline) / n
            baseline = self.memory.start_peak()
            decode(latents)
            decoding = max(1, self.memory.peak() - baseline) / n
            del latents
        except Exception as err:  # noqa: BLE001 - only out-of-memory is an answer, the rest re-raised
            if not is_out_of_memory(err):
                raise
            self.size, self.decode_size = 1, 1
            self.events.append(f"out of memory probing {n} images; 1 image per call")
            return
        room = HEADROOM * self.memory.available()
        self.size = max(1, min(MAX_CHUNK, int(room // denoising)))
        self.decode_size = max(1, min(self.size, int(room // decoding)))
        decoded = f", decoded {self.decode_size} at a time" if self.decode_size < self.size else ""
        self.events.append(
            f"measured {denoising / 2**20:.0f} MiB per image denoising, {decoding / 2**20:.0f} MiB decoding; "
            f"{self.size} images per call{decoded}"
        )

    def after_chunk(self, images_in_chunk: int) -> None:
        self.sizes_used.append(images_in_chunk)

    def after_decode_out_of_memory(self, attempted: int) -> None:
        """Halve the decode's sub-chunk (its denoising is kept: only the decode is redone)."""
        self.decode_size = max(1, attempted // 2)
        self.events.append(f"out of memory decoding {attempted} images at once; decoding {self.decode_size}")

    def after_out_of_memory(self, attempted: int, err: BaseException) -> None:
        """Halve the chunk (or give up at one image with advice on what to change)."""
        if attempted <= 1:
            raise MemoryError(
                "out of memory denoising a single image; lower height/width, load the pipeline with "
                "offload='model' (or 'sequential'), or use a smaller dtype"
            ) from err
        self.size = max(1, attempted // 2)
        self.decode_size = None if self.decode_size is None else min(self.decode_size, self.size)
        self.events.append(f"out of memory at {attempted} images per call; retried at {self.size}")


@contextmanager
def decoding_in_sub_chunks(vae, plan: ChunkPlan, device: torch.device):
    """While inside, ``vae.decode`` decodes a batch ``plan.decode_size`` images at a time (the whole batch when
    None) and halves that size on out-of-memory, redoing only the sub-chunk that failed: a decode never costs the
    chunk's denoising. The pipeline's own call is unchanged, and a VAE decodes each image independently of the
    others in its batch, so the pixels are those of one whole-batch decode (tested on every tiny family). The
    instance attribute is put back as it was (even a patched one)."""
    if vae is None or not hasattr(vae, "decode"):
        yield
        return
    from diffusers.models.autoencoders.vae import DecoderOutput

    original, patched = vae.decode, vars(vae).get("decode")

    def decode(z, *args, return_dict: bool = True, **kwargs):
        parts, start = [], 0
        while start < len(z):
            size = plan.decode_size or len(z)
            try:
                parts.append(original(z[start : start + size], *args, return_dict=False, **kwargs)[0])
            except Exception as err:  # noqa: BLE001 - only out-of-memory is retried, the rest re-raised
                if not is_out_of_memory(err) or size <= 1:
                    raise
                del err
                release_cached(device)
                plan.after_decode_out_of_memory(min(size, len(z) - start))
                continue
            start += size
        sample = parts[0] if len(parts) == 1 else torch.cat(parts)
        return DecoderOutput(sample=sample) if return_dict else (sample,)

    vae.decode = decode
    try:
        yield
    finally:
        if patched is None:
            del vae.decode
        else:
            vae.decode = patched


def chunk_count(n_items: int, size: int) -> int:
    return math.ceil(n_items / max(1, size))
