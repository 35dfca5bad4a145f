"""DeepFloyd IF, stage I: one T5-XXL encoder (final RMS norm, 77 tokens, attention mask passed to the encoder only)
conditioning a pixel-space UNet at 64×64. Layer L (24 for T5-XXL) is the pipeline's own conditioning. Previews are
the predicted clean image itself (no VAE)."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from .encoders import TextEncoderSpec
from .family import FamilyAdapter
from .lens import Part


class DeepFloydIFAdapter(FamilyAdapter):
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

    def attention_sites(self) -> list:
        # its UNet's attention adds the text as extra keys: [text; image] keys, image queries
        return [(n, m, "added_kv") for n, m in self.denoiser.named_modules()
                if getattr(m, "added_kv_proj_dim", None) is not None]  # fmt: skip

    latent_output_type = "pt"  # pixel space: its "latents" are the 64×64 images themselves

    def decode_preview(self, latents: torch.Tensor, height: int, width: int) -> np.ndarray:
        return (latents.float() / 2 + 0.5).clamp(0, 1).cpu().permute(0, 2, 3, 1).numpy()

    def final_images(self, pixels: np.ndarray) -> list[Image.Image]:
        images = self.pipe.numpy_to_pil(pixels)  # what IFPipeline does for output_type="pil", watermark included
        if getattr(self.pipe, "watermarker", None) is not None:
            images = self.pipe.watermarker.apply_watermark(images, self.denoiser.config.sample_size)
        return images
