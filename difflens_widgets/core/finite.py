"""Non-finite images: found where they are made, never passed on as results.

Why a guard: a NaN pixel cast to ``uint8`` becomes 0 with only a numpy warning, so a run whose guided step overflowed
(a huge guidance scale) or whose half-precision denoiser or VAE overflowed (SDXL's fp16 VAE is the known case)
returns flat tiles that look like images. The engine checks the final latents of each pipeline call and the pixels
it decodes (one reduction per chunk), leaves the non-finite images out of the result, and names each one with the
likely cause and its fix, in one line that the CLI, the dashboard and sweeps show as it is.
"""

from __future__ import annotations

import numpy as np
import torch

LATENTS = "latents"  # the denoising loop's own latents were non-finite: the denoiser or the guided step overflowed
PIXELS = "pixels"  # the latents were finite, the decoded pixels not: the VAE overflowed

# guidance above this (and at most validate.MAX_GUIDANCE) is named as the likely cause of non-finite latents
LARGE_GUIDANCE = 30.0


def finite_rows(values: torch.Tensor | np.ndarray) -> list[bool]:
    """Per image of a batch (the first axis): every value finite. One reduction over the chunk."""
    if isinstance(values, torch.Tensor):
        return torch.isfinite(values.detach().reshape(len(values), -1)).all(dim=1).tolist()
    return np.isfinite(np.asarray(values).reshape(len(values), -1)).all(axis=1).tolist()


def likely_cause(where: set[str], guidance: float, denoiser_dtype, vae_dtype) -> str:
    """The likely cause of non-finite images and what to do about it, from where they went wrong and the facts
    of the run (guidance scale, the dtypes the denoiser and the VAE ran in)."""
    if LATENTS in where:
        if guidance > LARGE_GUIDANCE:
            return f"guidance_scale {guidance:g} overflowed the guided step: lower it (published models use 1-20)"
        if denoiser_dtype == torch.float16:
            return (
                "the denoiser overflowed in float16: load the pipeline in bfloat16 or float32 "
                "(torch_dtype=torch.bfloat16, or --dtype bfloat16)"
            )
        return "the denoiser produced NaN/inf: check its weights (a LoRA scale, a damaged checkpoint) or use float32"
    if vae_dtype == torch.float16:
        return (
            "the VAE overflowed in float16: decode in float32 (pipe.vae.to(torch.float32); for SDXL the "
            "family's fp16-safe VAE, madebyollin/sdxl-vae-fp16-fix)"
        )
    return "the decoder produced NaN/inf: check the VAE's weights or use float32"


def summary(non_finite: dict[tuple[int, int], str], total: int, cause: str, shown: int = 8) -> str:
    """One line: how many images were left out, which (layer, seed), and the likely cause with its fix."""
    items = sorted(non_finite)
    named = ", ".join(f"L{layer} seed {seed}" for layer, seed in items[:shown])
    more = f" and {len(items) - shown} more" if len(items) > shown else ""
    return (
        f"{len(items)} of {total} images came out non-finite (NaN/inf) and were left out ({named}{more}); "
        f"likely cause: {cause}"
    )
