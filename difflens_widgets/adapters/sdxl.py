"""Stable Diffusion XL: two CLIP text encoders (CLIP ViT-L, 12 blocks; OpenCLIP ViT-bigG with projection, 32
blocks). The pipeline conditions on the **penultimate** hidden state of each, *without* the final norm, concatenated
along the width, plus a pooled embedding: the projected, final-normed end token of the second encoder.

So the lens here follows the pipeline's convention: the embedding of layer l is the raw ``hidden_states[l]``
(``final_norm=True`` applies the final LayerNorm anyway), and layer L−1 (11 or 31) with the other encoder at its
normal output reproduces the pipeline's own image. The default lensed encoder is ``text_encoder_2`` (the larger one,
which also gives the pooled embedding); the other encoder takes the empty prompt's conditioning unless
``other_encoders="normal"``. With no negative prompt the pipeline's unconditional branch is all zeros
(``force_zeros_for_empty_prompt``), and so is the lens's.
"""

from __future__ import annotations

import torch

from .encoders import TextEncoderSpec
from .family import FamilyAdapter
from .lens import EncodedPrompts, Part


class StableDiffusionXLAdapter(FamilyAdapter):
    family = "stable-diffusion-xl"
    description = "Stable Diffusion XL (CLIP-L + OpenCLIP-bigG, penultimate layer, pooled from the second)"

    pipeline_classes = ("StableDiffusionXLPipeline",)
    vae_in_fp32 = True  # SDXL's VAE overflows in fp16 (diffusers' own force_upcast)

    def encoder_specs(self):
        return (
            TextEncoderSpec("text_encoder", "tokenizer", "clip", penultimate=True),
            TextEncoderSpec("text_encoder_2", "tokenizer_2", "clip", penultimate=True, pooled="projection"),
        )

    def default_encoder(self) -> str:
        return "text_encoder_2"

    def assemble(self, parts: dict[str, Part]) -> dict:
        sequences = [parts[name].tensor("seq") for name in ("text_encoder", "text_encoder_2") if name in parts]
        return {"prompt_embeds": torch.cat(sequences, dim=-1), "pooled_prompt_embeds": parts["text_encoder_2"].pooled}

    def unconditional(self, encoded: EncodedPrompts, index: int, negative_given: bool) -> dict:
        normal = super().unconditional(encoded, index, negative_given)
        if not negative_given and self.pipe.config.get("force_zeros_for_empty_prompt", False):
            return {key: torch.zeros_like(value) for key, value in normal.items()}
        return normal
