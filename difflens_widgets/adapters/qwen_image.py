"""Qwen-Image: one vision-language model (Qwen2.5-VL, its text half) reads the prompt inside a fixed instruction
("Describe the image by detailing the color, shape, size, texture, quantity, text, spatial relationships of the
objects and background"), and the transformer conditions on the **last hidden state, final-normed**, from which the
pipeline drops the instruction's 34 prefix tokens (``prompt_template_encode_start_idx``): what it keeps is the
user's words and the template's closing tokens, with an attention mask over padding.

So Qwen-Image is a single-tap family read as T5 is: layer l is ``norm(h^l)`` at the kept positions, layer L is the
pipeline's own conditioning, ``final_norm=False`` shows the raw states. The dropped prefix never reaches the lens
either (:meth:`kept_positions`), so every position the engine names — word chips, per-token
lens, attention maps — is one the transformer sees. The lens's ``guidance_scale`` is the pipeline's
``true_cfg_scale`` (two transformer calls per step, the conditional one first, then a rescale to the conditional
prediction's norm), with the empty prompt (or ``negative_prompt``) as the negative.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .encoders import TextEncoderSpec
from .family import FamilyAdapter
from .lens import Part

DROPPED = 34  # the pipeline's prompt_template_encode_start_idx
KEPT = 512  # the pipeline's default max_sequence_length: positions kept after the dropped prefix


class QwenImageAdapter(FamilyAdapter):
    family = "qwen-image"
    description = "Qwen-Image (Qwen2.5-VL inside an instruction, its prefix dropped; last layer, final-normed)"
    pipeline_classes = ("QwenImagePipeline",)
    cuda_dtype = torch.bfloat16
    noise_schedule = "flow"
    masks_padding = True
    guidance_layout = "calls"

    @property
    def dropped(self) -> int:
        """The instruction's prefix tokens the pipeline drops."""
        return int(getattr(self.pipe, "prompt_template_encode_start_idx", DROPPED))

    def encoder_specs(self):
        # tokenized up to the kept length: the encoder is causal, so the kept positions are the same as the pipeline's
        # own (which tokenizes up to 1,024 + 34 and then keeps 512)
        return (
            TextEncoderSpec("text_encoder", "tokenizer", "llm", max_length=self.dropped + KEPT, mask_to_encoder=True),
        )

    def kept_positions(self, length: int, bare: bool = False) -> list[int] | None:
        return list(range(self.dropped, length))

    def wrap(self, text: str) -> str:
        return self.pipe.prompt_template_encode.format(text)

    def guidance_kwargs(self, guidance_scale: float) -> dict:
        # diffusers' guidance_scale is for guidance-distilled transformers (guidance_embeds), a path no published
        # Qwen-Image takes and diffusers itself cannot run yet; true CFG is the guidance
        return {"true_cfg_scale": guidance_scale}

    def assemble(self, parts: dict[str, Part]) -> dict:
        part = parts["text_encoder"]
        return {"prompt_embeds": part.seq, "prompt_embeds_mask": part.mask}

    def pipeline_kwargs(self, conds: list[dict], unconds: list[dict] | None) -> dict:
        """Each branch cut after its last real position, as the pipeline pads a batch to its longest prompt (the
        transformer's text positions are numbered from 0, so padding never moves a word)."""

        def trimmed(items: list[dict], prefix: str = "") -> dict:
            seq = torch.cat([c["prompt_embeds"] for c in items])
            mask = torch.cat([c["prompt_embeds_mask"] for c in items]).to(seq.device)
            used = int(mask.any(dim=0).nonzero().max()) + 1 if mask.any() else 1
            return {f"{prefix}prompt_embeds": seq[:, :used], f"{prefix}prompt_embeds_mask": mask[:, :used]}

        kwargs = trimmed(conds)
        if unconds is not None and self.uses_negative_embeddings:
            kwargs.update(trimmed(unconds, "negative_"))
        return kwargs

    @property
    def size_multiple(self) -> int:
        return math.lcm(8, 2 * int(self.pipe.vae_scale_factor))  # latents are packed 2×2

    def attention_sites(self) -> list:
        # every block's joint attention over [text; image] (queries and keys alike), as FLUX's double blocks
        return [(n, m, "text_first") for n, m in self.denoiser.named_modules() if n.endswith(".attn")]

    def _latent_statistics(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The VAE's per-channel latent mean and std, shaped (1, C, 1, 1, 1) like ``like``."""
        config = self.pipe.vae.config
        shape = (1, config.z_dim, 1, 1, 1)
        mean = torch.tensor(config.latents_mean).view(shape).to(like.device, like.dtype)
        std = torch.tensor(config.latents_std).view(shape).to(like.device, like.dtype)
        return mean, std

    def decode_preview(self, latents: torch.Tensor, height: int, width: int) -> np.ndarray:
        """Packed latent tokens, unpacked to the VAE's one-frame video latents, de-normalised and decoded as the
        pipeline decodes (the frame then dropped)."""
        pipe = self.pipe
        if latents.ndim == 3:
            latents = pipe._unpack_latents(latents, height, width, pipe.vae_scale_factor)
        latents = latents.to(pipe.vae.dtype)
        mean, std = self._latent_statistics(latents)
        with torch.no_grad():
            images = pipe.vae.decode(latents / (1.0 / std) + mean, return_dict=False)[0][:, :, 0]
        return pipe.image_processor.postprocess(images, output_type="np")

    # ---- the denoiser taps: one-frame video latents, normalised, packed 2×2 ------------------------------------
    def clean_sample(self, pixels: torch.Tensor) -> torch.Tensor:
        vae = self.pipe.vae
        latents = vae.encode(pixels.to(vae.device, vae.dtype)[:, :, None]).latent_dist.mean
        mean, std = self._latent_statistics(latents)
        return ((latents - mean) / std)[:, :, 0]

    def denoiser_sample(self, noisy: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = noisy.shape
        return self.pipe._pack_latents(noisy, batch, channels, height, width)

    def denoiser_timestep(self, timestep: int, batch: int, like: torch.Tensor) -> torch.Tensor:
        return torch.full((batch,), timestep / 1000, dtype=like.dtype, device=like.device)  # σ, not σ·1000
