"""The Diffusion Lens engine: one text-encoder pass, then every (layer, seed) image denoised in batched pipeline
calls with the exact noise the pipeline itself would draw for that seed.

Why the pipeline's own ``__call__`` does the denoising: it is the reference. Handing it ``prompt_embeds`` (one row
per (layer, seed)) and one ``torch.Generator`` per row makes the last layer reproduce ``pipe(prompt,
generator=manual_seed(s))`` by construction, for any scheduler, and keeps every family's quirks inside diffusers.
"""

from __future__ import annotations

import functools
import os
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from . import options
from .adapters import adapter_for
from .results import LensResult


@dataclass
class Preview:
    """Handed to the progress callback at snapshot steps: the predicted clean image of each running item."""

    step: int
    items: list[tuple[int, int]]  # (layer, seed) per image
    images: list[Image.Image]


ProgressCallback = Callable[[int, int, "Preview | None"], "bool | None"]

# One lock per pipeline object: runs of several Lens objects (several dashboards) on the same pipeline take turns,
# since a pipeline call is not re-entrant (its scheduler and interrupt flag are shared state).
_PIPELINE_LOCKS: "weakref.WeakKeyDictionary[object, threading.Lock]" = weakref.WeakKeyDictionary()
_LOCKS_GUARD = threading.Lock()


def pipeline_lock(pipe) -> threading.Lock:
    with _LOCKS_GUARD:
        return _PIPELINE_LOCKS.setdefault(pipe, threading.Lock())


@contextmanager
def recording_predictions(scheduler, sink: list):
    """Make ``scheduler.step`` also record its predicted clean sample (``pred_original_sample``) into ``sink``.

    The wrapper keeps the original signature (``functools.wraps``) because pipelines inspect it to decide whether
    to pass ``generator`` and ``eta``. Schedulers that do not expose a clean-sample prediction record ``None``.
    """
    original = scheduler.step

    @functools.wraps(original)
    def step(*args, **kwargs):
        return_dict = kwargs.pop("return_dict", True)
        out = original(*args, return_dict=True, **kwargs)
        sink[:] = [getattr(out, "pred_original_sample", None)]
        return out if return_dict else (out.prev_sample,)

    scheduler.step = step
    try:
        yield
    finally:
        del scheduler.step


@contextmanager
def quiet_progress_bar(pipe):
    """Silence the pipeline's own tqdm bar for the duration (the lens reports progress itself)."""
    previous = dict(getattr(pipe, "_progress_bar_config", {}))
    pipe.set_progress_bar_config(disable=True)
    try:
        yield
    finally:
        pipe._progress_bar_config = previous


def auto_max_batch(pipe, height: int, width: int) -> int:
    """How many images one pipeline call may hold, from a rough per-image memory cost and the free memory.

    Activation memory grows with pixels; ~2,500 bytes per output pixel in half precision covers the UNet batch
    (doubled by guidance) and the VAE decode of SD-size models. The budget is 60% of free GPU memory, or a quarter
    of the machine's RAM on CPU. Always at least 1, at most 64.
    """
    device = getattr(pipe, "_execution_device", None) or pipe.device
    bytes_per_image = height * width * 2_500 * (2 if getattr(pipe.unet, "dtype", None) == torch.float32 else 1)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        budget = 0.6 * free
    else:
        try:
            budget = 0.25 * os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (ValueError, OSError, AttributeError):
            budget = 4 * 2**30
    return int(max(1, min(64, budget // bytes_per_image)))


class Lens:
    """Runs Diffusion Lens on one pipeline. Results are kept in a bounded LRU cache (``cache_size`` runs)."""

    def __init__(self, pipe, *, cache_size: int = 16):
        if isinstance(pipe, str):
            from .models import load_pipeline

            pipe = load_pipeline(pipe)
        self.pipe = pipe
        self.adapter = adapter_for(pipe)
        self.cache_size = cache_size
        self._cache: OrderedDict[tuple, LensResult] = OrderedDict()
        self._cancel = threading.Event()

    @property
    def num_layers(self) -> int:
        """L: lens layers are 0..L (0 = token embeddings, L = the pipeline's own conditioning)."""
        return self.adapter.num_layers

    @property
    def device(self) -> torch.device:
        return getattr(self.pipe, "_execution_device", None) or self.pipe.device

    def cancel(self) -> None:
        """Stop the current run between two UNet calls; ``run`` returns what finished (``complete=False``)."""
        self._cancel.set()

    def clear_cache(self) -> None:
        """Forget cached results (call after changing the pipeline's weights in place, e.g. loading a LoRA)."""
        self._cache.clear()

    def embed(self, prompt: str, layers: options.LayerSpec = None, *, final_norm: bool = True
              ) -> tuple[dict[int, np.ndarray], list[str]]:
        """The text side of the lens alone (no diffusion): ``({layer: lens embedding (tokens × width)}, tokens)``.

        One text-encoder pass; the embedding of layer l is exactly what ``run`` would condition on at layer l.
        """
        prompts = options.parse_prompts(prompt)
        if len(prompts) != 1:
            raise ValueError("embed takes one prompt")
        layer_list = options.parse_layers(layers, self.num_layers)
        encoded = self.adapter.encode(prompts)
        vectors = {l: self.adapter.lens(encoded.hidden_states[l][:1], final_norm)[0].float().cpu().numpy()
                   for l in layer_list}
        return vectors, encoded.tokens[0]

    # ------------------------------------------------------------------------------------------------------------
    def run(
        self,
        prompt: str | Sequence[str],
        layers: options.LayerSpec = None,
        seeds: options.SeedSpec = (0,),
        num_inference_steps: int = 20,
        guidance_scale: float = 7.5,
        negative_prompt: str | None = None,
        height: int | None = None,
        width: int | None = None,
        *,
        final_norm: bool = True,
        lens_negative: bool = False,
        snapshot_every: int | None = None,
        max_batch: int | None = None,
        sequential: bool = False,
        progress: ProgressCallback | None = None,
        use_cache: bool = True,
    ) -> LensResult | list[LensResult]:
        """Lens ``prompt`` at ``layers`` for every seed in ``seeds``.

        Args:
            prompt: a string (→ one LensResult) or a list of strings (→ a list, one text-encoder pass for all).
            layers: ``hidden_states`` indices: None (all of 0..L), an int, a list, a range, or a string such as
                ``"0:12:2"`` (a Python slice over 0..L) or ``"0,4,8"``.
            seeds: the image for seed s starts from the noise ``pipe(prompt, generator=manual_seed(s))`` draws,
                the same for every layer.
            guidance_scale: ≤ 1 turns classifier-free guidance off.
            negative_prompt: the unconditional branch's text (default ""), kept at its normal final-layer
                embedding unless ``lens_negative`` lenses it at the same layer as the prompt.
            final_norm: False is the paper's ablation (App. A.3): condition on the raw hidden state.
            snapshot_every: also keep a preview of the predicted clean image every k denoising steps.
            max_batch: images per pipeline call (default: from free memory, see :func:`auto_max_batch`).
            sequential: reference mode, one pipeline call per layer (for tests and benchmarks).
            progress: called as ``progress(done, total, preview)`` after every UNet call (``preview`` is a
                :class:`Preview` at snapshot steps, else None); returning True cancels the run.
        """
        prompts = options.parse_prompts(prompt)
        layer_list = options.parse_layers(layers, self.num_layers)
        seed_list = options.parse_seeds(seeds)
        steps = options.check_steps(num_inference_steps)
        guidance = options.check_guidance(guidance_scale)
        if negative_prompt is not None and not isinstance(negative_prompt, str):
            raise TypeError(f"negative_prompt must be a string or None, not {type(negative_prompt).__name__}")
        default_h, default_w = self.adapter.default_size()
        height = options.check_size("height", default_h if height is None else height, self.adapter.size_multiple)
        width = options.check_size("width", default_w if width is None else width, self.adapter.size_multiple)
        snapshot_every = options.check_positive_int("snapshot_every", snapshot_every)
        max_batch = options.check_positive_int("max_batch", max_batch)

        params = dict(
            layers=layer_list, seeds=seed_list, num_inference_steps=steps, guidance_scale=guidance,
            negative_prompt=negative_prompt, height=height, width=width, final_norm=bool(final_norm),
            lens_negative=bool(lens_negative), snapshot_every=snapshot_every,
            scheduler=type(self.pipe.scheduler).__name__, scheduler_config=dict(self.pipe.scheduler.config),
            pipeline=type(self.pipe).__name__, model=getattr(self.pipe.config, "_name_or_path", None),
            family=self.adapter.family, num_layers=self.num_layers, sequential=bool(sequential),
        )
        keys = [self._cache_key(p, params) for p in prompts]
        if use_cache and all(k in self._cache for k in keys):
            results = [self._cache_get(k) for k in keys]
            return results[0] if isinstance(prompt, str) else results

        self._cancel.clear()  # before waiting for the pipeline, so a cancel() while waiting still counts
        with pipeline_lock(self.pipe):
            results = self._run_locked(prompts, keys, params, max_batch, progress, use_cache)
        return results[0] if isinstance(prompt, str) else results

    def _run_locked(self, prompts, keys, params, max_batch, progress, use_cache) -> list[LensResult]:
        do_cfg = params["guidance_scale"] > 1.0
        texts = prompts + ([params["negative_prompt"] or ""] if do_cfg else [])
        encoded = self.adapter.encode(texts)  # the one text-encoder pass
        results = []
        for index, text in enumerate(prompts):
            result = self._lens_one(text, index, encoded, params, do_cfg, max_batch, progress)
            if result.complete and use_cache:
                self._cache_put(keys[index], result)
            results.append(result)
            if not result.complete:
                break
        return results

    # ------------------------------------------------------------------------------------------------------------
    def _lens_one(self, text, index, encoded, params, do_cfg, max_batch, progress) -> LensResult:
        layers, seeds = params["layers"], params["seeds"]
        final_norm, L = params["final_norm"], self.num_layers
        hidden = encoded.hidden_states
        cond = {l: self.adapter.lens(hidden[l][index:index + 1], final_norm) for l in layers}
        uncond = None
        if do_cfg:
            neg = len(encoded.tokens) - 1
            if params["lens_negative"]:
                uncond = {l: self.adapter.lens(hidden[l][neg:neg + 1], final_norm) for l in layers}
            else:
                normal = self.adapter.lens(hidden[L][neg:neg + 1], True)
                uncond = {l: normal for l in layers}

        items = [(l, s) for l in layers for s in seeds]
        if params["sequential"]:
            chunks = [[(l, s) for s in seeds] for l in layers]
        else:
            size = max_batch or auto_max_batch(self.pipe, params["height"], params["width"])
            chunks = [items[i:i + size] for i in range(0, len(items), size)]

        steps = params["num_inference_steps"]
        total = steps * len(chunks)
        images, snapshots = {}, {}
        state = {"done": 0, "cancelled": False}
        started = time.perf_counter()
        with quiet_progress_bar(self.pipe):
            for chunk in chunks:
                chunk_images = self._denoise_chunk(chunk, cond, uncond, params, snapshots, state, total, progress)
                if state["cancelled"]:
                    break
                images.update(zip(chunk, chunk_images))
        params = dict(params, prompt=text, negative_prompt=params["negative_prompt"] or "",
                      seconds=round(time.perf_counter() - started, 3))
        return LensResult(
            prompt=text, layers=layers, seeds=seeds, images=images,
            embeddings={l: cond[l][0].float().cpu().numpy() for l in layers},
            tokens=encoded.tokens[index], params=params, snapshots=snapshots, complete=not state["cancelled"],
        )

    def _denoise_chunk(self, chunk, cond, uncond, params, snapshots, state, total, progress) -> list[Image.Image]:
        """One pipeline call for the (layer, seed) pairs in ``chunk``."""
        steps, every = params["num_inference_steps"], params["snapshot_every"]
        cond_batch = torch.cat([cond[l] for l, _ in chunk])
        uncond_batch = None if uncond is None else torch.cat([uncond[l] for l, _ in chunk])
        generators = [torch.Generator(self.device).manual_seed(s) for _, s in chunk]
        predicted: list = [None]

        def on_step_end(pipe, i, t, tensors):
            state["done"] += 1
            preview = None
            if every and ((i + 1) % every == 0 or i + 1 == steps):
                latents = predicted[0] if predicted[0] is not None else tensors["latents"]
                previews = self.adapter.decode_preview(latents)
                for item, img in zip(chunk, previews):
                    snapshots.setdefault(item, []).append((i + 1, img))
                preview = Preview(i + 1, list(chunk), previews)
            stop = progress(state["done"], total, preview) if progress else False
            if stop or self._cancel.is_set():
                state["cancelled"] = True
                pipe._interrupt = True
            return tensors

        recorder = recording_predictions(self.pipe.scheduler, predicted) if every else nullcontext()
        with recorder:
            out = self.pipe(
                **self.adapter.pipeline_kwargs(cond_batch, uncond_batch),
                num_inference_steps=steps, guidance_scale=params["guidance_scale"],
                height=params["height"], width=params["width"], generator=generators, output_type="pil",
                callback_on_step_end=on_step_end, callback_on_step_end_tensor_inputs=["latents"],
            )
        return out.images

    # ------------------------------------------------------------------------------------------------------------
    @staticmethod
    def _cache_key(prompt: str, params: dict) -> tuple:
        frozen = tuple(sorted((k, repr(v)) for k, v in params.items()))
        return (prompt, frozen)

    def _cache_get(self, key: tuple) -> LensResult:
        self._cache.move_to_end(key)
        return self._cache[key]

    def _cache_put(self, key: tuple, result: LensResult) -> None:
        self._cache[key] = result
        self._cache.move_to_end(key)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
