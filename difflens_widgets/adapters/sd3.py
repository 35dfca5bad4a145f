"""Stable Diffusion 3: CLIP-L and CLIP-G (penultimate hidden states without final norm, concatenated along the
width and zero-padded to T5's width) followed along the sequence by T5-XXL's final-normed output; pooled = the two
CLIPs' projected end tokens, concatenated.

Default lensed encoder: ``text_encoder_3`` (T5, 24 blocks, layer L = the pipeline's own T5 part) when present,
else ``text_encoder_2``; for a CLIP the lens follows the pipeline's convention (raw state, own layer L−1), as in
SDXL. Without T5 (``text_encoder_3=None``) the pipeline uses zeros in its place, and so does the lens.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import encoders as enc
from .encoders import TextEncoderSpec
from .family import FamilyAdapter
from .lens import Part

T5_TOKENS = 256  # the pipeline's default max_sequence_length


class StableDiffusion3Adapter(FamilyAdapter):
    family = "stable-diffusion-3"
    description = "Stable Diffusion 3 (CLIP-L + CLIP-G penultimate, T5-XXL; pooled from both CLIPs)"
    pipeline_classes = ("StableDiffusion3Pipeline",)
    noise_schedule = "flow"
    cuda_dtype = torch.bfloat16

    def encoder_specs(self):
        return (
            TextEncoderSpec("text_encoder", "tokenizer", "clip", penultimate=True, pooled="projection"),
            TextEncoderSpec("text_encoder_2", "tokenizer_2", "clip", penultimate=True, pooled="projection"),
            TextEncoderSpec("text_encoder_3", "tokenizer_3", "t5", max_length=T5_TOKENS),
        )

    def default_encoder(self) -> str:
        return "text_encoder_3" if getattr(self.pipe, "text_encoder_3", None) is not None else "text_encoder_2"

    @property
    def size_multiple(self) -> int:
        return int(self.pipe.vae_scale_factor) * int(self.pipe.transformer.config.patch_size)

    def assemble(self, parts: dict[str, Part]) -> dict:
        clip = torch.cat([parts["text_encoder"].tensor("seq"), parts["text_encoder_2"].tensor("seq")], dim=-1)
        if "text_encoder_3" in parts:
            t5 = parts["text_encoder_3"].tensor("seq")
        else:
            width = self.pipe.transformer.config.joint_attention_dim
            t5 = torch.zeros(clip.shape[0], T5_TOKENS, width, device=clip.device, dtype=clip.dtype)
        clip = F.pad(clip, (0, t5.shape[-1] - clip.shape[-1]))
        pooled = torch.cat([parts["text_encoder"].tensor("pooled"), parts["text_encoder_2"].tensor("pooled")], dim=-1)
        return {"prompt_embeds": torch.cat([clip, t5], dim=-2), "pooled_prompt_embeds": pooled}

    def attention_sites(self) -> list:
        # joint attention: queries and keys are [image; text] (the text part read, as DAAM's users ask)
        return [(n, m, "image_first") for n, m in self.denoiser.named_modules() if n.endswith(".attn")]

    def attention_text(self) -> slice | None:
        clip = enc.max_length(self.pipe, self.specs[0])  # the CLIPs' positions come first, then T5's
        return slice(clip, None) if self.spec.component == "text_encoder_3" else slice(0, clip)
