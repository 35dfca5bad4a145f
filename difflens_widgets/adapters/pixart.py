"""PixArt-α / PixArt-Σ: one T5 encoder (final RMS norm; 120 tokens for α, 300 for Σ) whose attention mask is passed
to the transformer, so **padding positions never reach the image**. Layer L is the pipeline's own conditioning;
``tokens="padding"`` is refused (nothing to see), and per-token lensing unmasks exactly the one position it keeps.
"""

from __future__ import annotations

import torch

from .encoders import TextEncoderSpec
from .family import FamilyAdapter
from .lens import Part


class PixArtAdapter(FamilyAdapter):
    family = "pixart"
    description = "PixArt-α/Σ (T5 with attention mask to the transformer)"
    masks_padding = True

    pipeline_classes: tuple[str, ...] = ("PixArtAlphaPipeline", "PixArtSigmaPipeline")
    cuda_dtype = torch.bfloat16

    @property
    def max_tokens(self) -> int:
        return 300 if type(self.pipe).__name__ == "PixArtSigmaPipeline" else 120

    def encoder_specs(self):
        return (TextEncoderSpec("text_encoder", "tokenizer", "t5", max_length=self.max_tokens, mask_to_encoder=True),)

    def preprocess(self, texts: list[str]) -> list[str]:
        # the pipeline lowercases and strips every prompt (clean_caption=False; True needs bs4 + ftfy)
        return self.pipe._text_preprocessing(list(texts), clean_caption=False) if texts else []

    def assemble(self, parts: dict[str, Part]) -> dict:
        part = parts["text_encoder"]
        return {"prompt_embeds": part.seq, "prompt_attention_mask": part.mask}

    def call_kwargs(self) -> dict:
        # no silent resizing to the aspect-ratio bins: the lens's images must have the size asked for
        # negative_prompt defaults to "" in this pipeline, which it refuses next to negative_prompt_embeds
        return {"use_resolution_binning": False, "max_sequence_length": self.max_tokens, "negative_prompt": None}
