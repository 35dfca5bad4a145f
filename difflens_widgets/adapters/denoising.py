"""What the denoiser taps (:mod:`difflens_widgets.denoiser`) need to know about a family's denoiser: its blocks, the
layout of their outputs, how a clean image is noised to a timestep and handed to the denoiser as the pipeline does.
A mixin of every family adapter; families override what differs (flow schedules, FLUX's packed latents)."""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch


def one_minus_sigma(timestep: int, batch: int, like: torch.Tensor) -> torch.Tensor:
    """Training timestep ``timestep`` as Z-Image and Lumina 2 hand it to their transformers: 1 − σ, σ = t / 1000."""
    return torch.full((batch,), (1000 - timestep) / 1000, dtype=like.dtype, device=like.device)


def image_grid(tokens: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """(batch, rows·cols, channels) image tokens in row order as (batch, channels, rows, cols)."""
    return tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], rows, cols)


@dataclass(frozen=True)
class TextInCall:
    """The text of one denoiser call as its attention sees it: ``length`` positions (a family's own padding
    included), of which the first ``len(positions)`` are the lensed encoder's ``positions`` in that order (None:
    position i is text index i); ``image_tokens`` image queries (None: every query that is not text); the text
    starts at ``start`` in an image-first sequence (None: it ends the sequence)."""

    length: int
    positions: list[int] | None = None
    image_tokens: int | None = None
    start: int | None = None


class DenoiserTaps:
    """The denoiser side of a family adapter (needs ``self.pipe`` and ``self.denoiser``)."""

    pipe: Any
    denoiser: Any  # the family adapter's property
    noise_schedule = "ddpm"  # how a clean sample is noised to timestep t: "ddpm" (scheduler.add_noise) or "flow"
    unguided_scale = 1.0  # a guidance scale at which the pipeline runs no guidance branch (diffusers: ≤ 1)

    def denoiser_blocks(self) -> dict[str, torch.nn.Module]:
        """Tap points by name: a UNet's ``down0..``, ``mid``, ``up0..`` (Revelio's up_ft0..3 are up0..3, its
        bottleneck is mid); a transformer's ``block0..`` (for dual-stream models, the joint blocks)."""
        denoiser = self.denoiser
        if hasattr(denoiser, "up_blocks"):
            blocks = {f"down{i}": b for i, b in enumerate(denoiser.down_blocks)}
            blocks["mid"] = denoiser.mid_block
            blocks.update({f"up{i}": b for i, b in enumerate(denoiser.up_blocks)})
            return blocks
        return {f"block{i}": b for i, b in enumerate(denoiser.transformer_blocks)}

    # which of a dual-stream transformer block's pair of outputs is the image's: the last (FLUX, SD3, Qwen-Image,
    # Chroma return (text, image)) unless a family says otherwise (CogView 4 returns (image, text))
    image_stream = -1

    def block_feature(self, output) -> torch.Tensor:
        """A block's output as (batch, channels, h, w): a UNet down block's hidden states (the first of its pair);
        a transformer block's image tokens (:attr:`image_stream` of a dual-stream block's pair) folded back onto
        their grid."""
        if isinstance(output, tuple):
            output = output[0] if hasattr(self.denoiser, "up_blocks") else output[self.image_stream]
        if output.ndim == 3:  # (batch, tokens, channels) on a square grid of patches
            batch, tokens, channels = output.shape
            side = math.isqrt(tokens)
            grid = (side, side) if side * side == tokens else (tokens, 1)
            output = output.transpose(1, 2).reshape(batch, channels, *grid)
        return output

    def clean_sample(self, pixels: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] (batch, 3, H, W) as the denoiser's clean input: the VAE latent mean, shifted and scaled
        as the pipeline's own latents are (pixel-space families: the pixels themselves)."""
        vae = getattr(self.pipe, "vae", None)
        if vae is None:
            return pixels
        latents = vae.encode(pixels.to(vae.device, vae.dtype)).latent_dist.mean
        return (latents - (getattr(vae.config, "shift_factor", 0) or 0)) * vae.config.scaling_factor

    def noised(self, clean: torch.Tensor, noise: torch.Tensor, timestep: int) -> torch.Tensor:
        """``clean`` noised to training timestep ``timestep`` (0..999) with the pipeline's own schedule."""
        if self.noise_schedule == "flow":  # rectified flow: x_t = (1 − σ)·x_0 + σ·ε with σ = t / 1000
            sigma = timestep / 1000
            return (1 - sigma) * clean + sigma * noise
        steps = torch.full((clean.shape[0],), int(timestep), dtype=torch.long, device=clean.device)
        return self.pipe.scheduler.add_noise(clean, noise, steps)

    def denoiser_sample(self, noisy: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        """A noised clean sample in the layout the denoiser is called with (FLUX packs latents into tokens; Z-Image
        takes a list, one latent per image)."""
        return noisy

    def batched_argument(self, name: str | int, value: Any, batch: int) -> Any:
        """A denoiser argument captured for one image (by keyword or position) for a batch of ``batch`` images:
        batch-1 tensors repeated, dicts recursed into, a list of one tensor per image (Z-Image's captions)
        repeated."""
        if isinstance(value, torch.Tensor) and value.ndim >= 1 and value.shape[0] == 1:
            return value.expand(batch, *value.shape[1:]).contiguous()
        if isinstance(value, list) and len(value) == 1 and isinstance(value[0], torch.Tensor):
            return value * batch
        if isinstance(value, dict):
            return {k: self.batched_argument(k, v, batch) for k, v in value.items()}
        return value

    def denoiser_timestep(self, timestep: int, batch: int, like: torch.Tensor) -> torch.Tensor:
        """Training timestep ``timestep`` (0..999) as the pipeline hands it to its denoiser."""
        return torch.full((batch,), timestep, dtype=like.dtype, device=like.device)

    @contextmanager
    def tap_context(self) -> Iterator[None]:
        """Held while blocks are tapped: what :meth:`block_feature` must know of each call beyond a block's output
        (Lumina 2 watches each item's caption length); nothing by default."""
        yield

    # ---- cross-attention (the maps of core.attention) ----------------------------------------------------------
    attention_layout = "text"  # how text keys and image queries sit in the family's cross-attention calls
    # where the pipeline puts its conditional branch under classifier-free guidance (core.attention's layouts)
    guidance_layout = "batch"

    def attention_sites(self) -> list[tuple[str, torch.nn.Module, str]]:
        """(name, module, layout) of every cross-attention site: by default the ``attn2`` of U-Net and PixArt
        blocks, whose keys are all text and queries all image."""
        return [(n, m, self.attention_layout) for n, m in self.denoiser.named_modules() if n.endswith("attn2")]

    def text_in_call(self, cond: dict, kwargs: dict, height: int, width: int) -> TextInCall:
        """Where the text sits in the denoiser's attention for one pipeline call (``kwargs``) whose items are
        conditioned like ``cond``: by default, the pipeline's ``prompt_embeds`` as they are, at their positions."""
        return TextInCall(int(kwargs["prompt_embeds"].shape[1]))

    def attention_text(self) -> slice | list[slice] | None:
        """Where the lensed encoder's tokens sit in the text sequence the denoiser attends to (None: nowhere, as
        for an encoder that only gives a pooled vector; several slices: the text holds them more than once, and a
        token's map is the attention on all its copies)."""
        return slice(0, None)
