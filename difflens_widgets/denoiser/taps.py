"""Feature taps on the denoiser (the Revelio side): what the U-Net / transformer holds, per block and timestep.

Two ways in, one pass per (image batch, timestep) with every tap at once:

- :func:`image_features` — *given images*: encoded by the pipeline's VAE (pixel-space families: the pixels),
  noised to training timestep t with the pipeline's own schedule and a seeded noise, and denoised once with the
  empty prompt's conditioning (Revelio's setting). The denoiser's other arguments (conditioning, ids, guidance,
  micro-conditioning) are those the pipeline itself passes: they are captured from a one-step call of the pipeline
  and reused, so no family's call signature is rewritten here.
- :func:`generation_features` — *generated images*: the pipeline draws a prompt and the taps record every block at
  its own denoising steps (the conditional branch when classifier-free guidance doubles the batch).

Block names come from the family's adapter (``down0``…, ``mid``, ``up0``… for U-Nets — Revelio's bottleneck and
``up_ft0..3`` — and ``block0``… for transformers). Features are mean-pooled over space (``pooled``) and optionally
kept spatial (``spatial``) for PCA maps. Hooks are scoped: they are removed whatever happens.
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image

from ..adapters import adapter_for
from ..adapters.encoders import execution_device
from ..core import lifecycle
from ..core.engine import quiet_progress_bar


@dataclass
class Features:
    """Denoiser features: ``pooled[(block, t)]`` is (images × channels); ``spatial[(block, t)]`` (images × channels ×
    h × w) where kept. ``t`` is a training timestep (given images) or a denoising step's timestep (generated)."""

    blocks: list[str]
    timesteps: list[int]
    pooled: dict[tuple[str, int], np.ndarray] = field(default_factory=dict)
    spatial: dict[tuple[str, int], np.ndarray] = field(default_factory=dict)
    images: list[Image.Image] = field(default_factory=list)

    def matrix(self, block: str, timestep: int) -> np.ndarray:
        if (block, timestep) not in self.pooled:
            raise KeyError(
                f"no features for block {block!r} at t={timestep}; blocks {self.blocks}, timesteps {self.timesteps}"
            )
        return self.pooled[(block, timestep)]


class _Captured(Exception):
    """Raised from the denoiser's pre-hook once the pipeline's own call has been recorded."""


def block_names(pipe) -> list[str]:
    return list(adapter_for(pipe).denoiser_blocks())


def check_blocks(adapter, blocks: Sequence[str] | None) -> dict[str, torch.nn.Module]:
    available = adapter.denoiser_blocks()
    if blocks is None:
        return available
    if isinstance(blocks, str):
        blocks = [b.strip() for b in blocks.split(",") if b.strip()]
    unknown = [b for b in blocks if b not in available]
    if unknown or not blocks:
        raise ValueError(
            f"unknown denoiser block(s) {unknown or blocks}; this {adapter.family} denoiser has {', '.join(available)}"
        )
    return {b: available[b] for b in blocks}


def check_timesteps(timesteps) -> list[int]:
    if isinstance(timesteps, (int, np.integer)):
        timesteps = [int(timesteps)]
    if isinstance(timesteps, str):
        try:
            timesteps = [int(t) for t in timesteps.split(",") if t.strip()]
        except ValueError:
            raise ValueError(f"timesteps {timesteps!r} must be integers in 0..999, like '50,500'") from None
    out = [int(t) for t in timesteps]
    if not out or any(not 0 <= t <= 999 for t in out):
        raise ValueError(f"timesteps must be training timesteps in 0..999 (small = little noise), got {timesteps}")
    return out


@contextmanager
def tapped(adapter, blocks: dict[str, torch.nn.Module], sink: dict[str, list[torch.Tensor]]):
    """Forward hooks that append each block's output (as ``adapter.block_feature``) to ``sink[block]``."""
    handles = []
    try:
        for name, module in blocks.items():

            def hook(_module, _inputs, output, name=name):
                sink.setdefault(name, []).append(adapter.block_feature(output).detach().float().cpu())

            handles.append(module.register_forward_hook(hook))
        with adapter.tap_context():
            yield sink
    finally:
        for handle in handles:
            handle.remove()


def _pool(feature: torch.Tensor) -> np.ndarray:
    return feature.mean(dim=(2, 3)).numpy()


def _to_pixels(images: Sequence[Image.Image], size: tuple[int, int]) -> torch.Tensor:
    arrays = [np.asarray(im.convert("RGB").resize(size, Image.BICUBIC), dtype=np.float32) / 127.5 - 1 for im in images]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)


def _capture_call(pipe, adapter, height: int, width: int) -> tuple[tuple, dict]:
    """The (args, kwargs) the pipeline passes its denoiser for the empty prompt, without guidance, at this size."""
    recorded = {}

    def pre_hook(_module, args, kwargs):
        recorded["args"], recorded["kwargs"] = args, kwargs
        raise _Captured

    handle = adapter.denoiser.register_forward_pre_hook(pre_hook, with_kwargs=True)
    try:
        with quiet_progress_bar(pipe):
            pipe(
                prompt="",
                num_inference_steps=1,
                **adapter.guidance_kwargs(adapter.unguided_scale),
                height=height,
                width=width,
                output_type="latent",
                **_call_kwargs(pipe, adapter),
            )
    except _Captured:
        pass
    finally:
        handle.remove()
    if "args" not in recorded:
        raise RuntimeError(f"the {adapter.family} pipeline never called its denoiser")
    return recorded["args"], recorded["kwargs"]


def _call_kwargs(pipe, adapter) -> dict:
    """The family's extra call arguments, for a call with a text prompt: an explicit empty negative prompt where the
    pipeline takes one (PixArt cannot preprocess None) and no caption cleaning (IF and PixArt would want ftfy)."""
    accepted = inspect.signature(type(pipe).__call__).parameters
    text = {k: v for k, v in (("negative_prompt", ""), ("clean_caption", False)) if k in accepted}
    return {**adapter.call_kwargs(), **text}


def _replace_input(args: list, kwargs: dict, sample: torch.Tensor, timestep_of) -> None:
    """Put ``sample`` and ``timestep_of(captured timestep)`` where the pipeline put its own: positionally
    (``unet(sample, t, ...)``, ``transformer(hidden_states, ...)``) or by keyword."""
    if args:
        args[0] = sample
    else:
        kwargs["sample" if "sample" in kwargs else "hidden_states"] = sample
    if len(args) > 1:
        args[1] = timestep_of(args[1])
    else:
        key = "timesteps" if "timesteps" in kwargs else "timestep"  # HiDream's transformer says timesteps
        kwargs[key] = timestep_of(kwargs[key])


def image_features(
    pipe,
    images: Sequence[Image.Image],
    timesteps=(100, 500, 900),
    blocks=None,
    *,
    seed: int = 0,
    batch_size: int = 32,
    keep_spatial: bool = False,
    progress=None,
) -> Features:
    """Tap ``blocks`` (default: all) at each training timestep for ``images`` (see the module docstring).
    ``progress(done, total, "taps")`` hears of every denoiser call (and once before the first); True cancels
    (:class:`~difflens_widgets.core.lifecycle.Cancelled`)."""
    adapter = adapter_for(pipe)
    chosen = check_blocks(adapter, blocks)
    steps = check_timesteps(timesteps)
    if not images:
        raise ValueError("no images given")
    height, width = adapter.default_size()
    args, kwargs = _capture_call(pipe, adapter, height, width)
    denoiser, device = adapter.denoiser, execution_device(pipe)
    generator = torch.Generator("cpu").manual_seed(seed)
    features = Features(list(chosen), steps, images=list(images))
    total, done = math.ceil(len(images) / batch_size) * len(steps), 0
    lifecycle.report(progress, 0, total, "taps")
    for start in range(0, len(images), batch_size):
        chunk = images[start : start + batch_size]
        with torch.no_grad():
            clean = adapter.clean_sample(_to_pixels(chunk, (width, height)).to(device))
            noise = torch.randn(clean.shape, generator=generator).to(clean.device, clean.dtype)
            for t in steps:
                sample = adapter.denoiser_sample(adapter.noised(clean, noise, t).to(denoiser.dtype))
                call_args = [adapter.batched_argument(i, a, len(chunk)) for i, a in enumerate(args)]
                call_kwargs = {k: adapter.batched_argument(k, v, len(chunk)) for k, v in kwargs.items()}
                _replace_input(
                    call_args, call_kwargs, sample, functools.partial(_timestep_like, adapter, t, len(chunk), device)
                )
                sink: dict[str, list[torch.Tensor]] = {}
                with tapped(adapter, chosen, sink):
                    denoiser(*call_args, **call_kwargs)
                _collect(features, {name: calls[-1] for name, calls in sink.items()}, t, keep_spatial)
                done += 1
                lifecycle.report(progress, done, total, "taps")
    return features


def _timestep_like(adapter, t: int, batch: int, device: torch.device, like) -> torch.Tensor:
    """Training timestep ``t`` for a batch, as the pipeline hands it to its denoiser (``like``: what it replaces)."""
    return adapter.denoiser_timestep(t, batch, torch.as_tensor(like, device=device))


def _collect(features: Features, outputs: dict[str, torch.Tensor], t: int, keep_spatial: bool) -> None:
    """Add one batch's block outputs at timestep ``t`` to ``features`` (pooled, and spatial if kept)."""
    for name, feature in outputs.items():
        _append(features.pooled, (name, t), _pool(feature))
        if keep_spatial:
            _append(features.spatial, (name, t), feature.numpy())


def _append(store: dict, key: tuple, rows: np.ndarray) -> None:
    store[key] = rows if key not in store else np.concatenate([store[key], rows])


def generation_features(
    pipe,
    prompts: Sequence[str],
    *,
    seeds: Sequence[int] = (0,),
    num_inference_steps: int = 20,
    guidance_scale: float = 7.5,
    blocks=None,
    at_steps: Sequence[int] | None = None,
    keep_spatial: bool = False,
) -> Features:
    """Tap ``blocks`` while the pipeline draws each prompt × seed; ``at_steps`` picks denoising step indices
    (0-based; default: every step). Keys use the scheduler's timestep of that step."""
    from ..core import validate as options

    adapter = adapter_for(pipe)
    chosen = check_blocks(adapter, blocks)
    prompts = options.parse_prompts(list(prompts))
    seed_list = options.parse_seeds(list(seeds))
    steps = options.check_steps(num_inference_steps)
    wanted = set(range(steps) if at_steps is None else at_steps)
    if not wanted or any(not 0 <= s < steps for s in wanted):
        raise ValueError(f"at_steps must be step indices in 0..{steps - 1}, got {sorted(wanted)}")
    features = Features(list(chosen), [])
    device = execution_device(pipe)
    guided = adapter.guides(guidance_scale)
    height, width = adapter.default_size()  # the size image_features and the lens draw at
    for prompt in prompts:
        for seed in seed_list:
            sink: dict[str, list[torch.Tensor]] = {}
            with tapped(adapter, chosen, sink), torch.no_grad(), quiet_progress_bar(pipe):
                out = pipe(
                    prompt=prompt,
                    num_inference_steps=steps,
                    **adapter.guidance_kwargs(guidance_scale),
                    generator=torch.Generator(device).manual_seed(seed),
                    height=height,
                    width=width,
                    **_call_kwargs(pipe, adapter),
                )
            features.images.append(out.images[0])
            timesteps = [int(t) for t in pipe.scheduler.timesteps[:steps]]
            for step in sorted(wanted):
                _collect(
                    features,
                    {name: _conditional(adapter, calls, step, guided) for name, calls in sink.items()},
                    timesteps[step],
                    keep_spatial,
                )
            features.timesteps = [timesteps[s] for s in sorted(wanted)]
    return features


def _conditional(adapter, calls: list[torch.Tensor], step: int, guided: bool) -> torch.Tensor:
    """The prompt's branch of denoising step ``step``: under classifier-free guidance, the conditional half of one
    batch ([uncond, cond]; Z-Image's [cond, uncond]) or the first of the step's two calls (FLUX.2)."""
    if guided and adapter.guidance_layout == "calls":
        return calls[2 * step]
    feature = calls[step]
    if not guided or feature.shape[0] != 2:
        return feature
    return feature[:1] if adapter.guidance_layout == "batch-conditional-first" else feature[1:]
