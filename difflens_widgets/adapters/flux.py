"""FLUX.1: a T5-XXL sequence (final-normed, 512 tokens) and a CLIP-L pooled vector (``pooler_output``: the final-
normed end token, no projection). There is no classifier-free-guidance branch (``guidance_scale`` is the distilled
guidance), so no negative embeddings are built.

Default lensed encoder: ``text_encoder_2`` (T5, 24 blocks; layer L = the pipeline's own conditioning). Lensing
``text_encoder`` (CLIP, 12 blocks) lenses the pooled vector, the only thing FLUX takes from CLIP; the T5 sequence is
then the empty prompt's (``other_encoders="empty"``) or the prompt's own (``"normal"``).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .encoders import TextEncoderSpec
from .family import FamilyAdapter
from .lens import Part

T5_TOKENS = 512  # the pipeline's default max_sequence_length


class FluxAdapter(FamilyAdapter):
    family = "flux"
    description = "FLUX.1 (T5-XXL sequence + CLIP-L pooled; no CFG branch)"
    pipeline_classes = ("FluxPipeline",)
    cuda_dtype = torch.bfloat16
    uses_negative_embeddings = False
    noise_schedule = "flow"

    def encoder_specs(self):
        return (
            TextEncoderSpec("text_encoder", "tokenizer", "clip", pooled="pooler", sequence=False),
            TextEncoderSpec("text_encoder_2", "tokenizer_2", "t5", max_length=T5_TOKENS),
        )

    def attention_sites(self) -> list:
        # double and single blocks attend over [text; image] (queries and keys alike)
        return [(n, m, "text_first") for n, m in self.denoiser.named_modules() if n.endswith(".attn")]

    def attention_text(self) -> slice | None:
        return slice(0, None) if self.spec.sequence else None  # CLIP gives FLUX only a pooled vector

    @property
    def size_multiple(self) -> int:
        return math.lcm(8, 2 * int(self.pipe.vae_scale_factor))  # latents are packed 2×2

    def assemble(self, parts: dict[str, Part]) -> dict:
        return {"prompt_embeds": parts["text_encoder_2"].seq, "pooled_prompt_embeds": parts["text_encoder"].pooled}

    def decode_preview(self, latents: torch.Tensor, height: int, width: int) -> np.ndarray:
        unpacked = self.pipe._unpack_latents(latents, height, width, self.pipe.vae_scale_factor)
        return super().decode_preview(unpacked, height, width)

    def denoiser_sample(self, noisy: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = noisy.shape
        return self.pipe._pack_latents(noisy, batch, channels, height, width)

    def denoiser_timestep(self, timestep: int, batch: int, like: torch.Tensor) -> torch.Tensor:
        return torch.full((batch,), timestep / 1000, dtype=like.dtype, device=like.device)  # FLUX takes σ, not σ·1000
