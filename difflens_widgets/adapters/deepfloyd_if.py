"""DeepFloyd IF, stage I: one T5-XXL encoder (final RMS norm, 77 tokens, attention mask passed to the encoder only)
conditioning a pixel-space UNet at 64×64. Layer L (24 for T5-XXL) is the pipeline's own conditioning. Previews are
the predicted clean image itself (no VAE)."""

from __future__ import annotations

import torch
from PIL import Image

from .base import LensAdapter, Part
from .encoders import TextEncoderSpec


class DeepFloydIFAdapter(LensAdapter):
    family = "deepfloyd-if"
    description = "DeepFloyd IF stage I (T5-XXL, pixel space)"

    pipeline_classes = ("IFPipeline",)  # fp16 (its published "fp16" variant); pixel space, no VAE

    def encoder_specs(self):
        return (TextEncoderSpec("text_encoder", "tokenizer", "t5", max_length=77, mask_to_encoder=True),)

    def preprocess(self, texts: list[str]) -> list[str]:
        # the pipeline lowercases and strips every prompt (clean_caption=False; True needs bs4 + ftfy)
        return self.pipe._text_preprocessing(list(texts), clean_caption=False) if texts else []

    def assemble(self, parts: dict[str, Part]) -> dict:
        return {"prompt_embeds": parts["text_encoder"].seq}

    def decode_preview(self, latents: torch.Tensor, height: int, width: int) -> list[Image.Image]:
        images = (latents.float() / 2 + 0.5).clamp(0, 1).cpu().permute(0, 2, 3, 1).numpy()
        return self.pipe.numpy_to_pil(images)
