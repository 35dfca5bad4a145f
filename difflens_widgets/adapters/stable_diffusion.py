"""Stable Diffusion 1.x / 2.x (and anything built like it, the toy model included): one CLIP text encoder whose
``final_layer_norm`` output is the UNet's ``encoder_hidden_states``.

Layer numbering: ``hidden_states[0]`` is the token (+ position) embedding, ``hidden_states[l]`` the output of
block l, L = number of blocks (12 for SD 1.x, 23 for SD 2.x's OpenCLIP-H as diffusers ships it). The lens
embedding of layer l is ``final_layer_norm(hidden_states[l])``, padding positions included, so layer L *is* the
pipeline's own conditioning.
"""

from __future__ import annotations

import math

import torch
from PIL import Image

from .base import EncodedPrompts, LensAdapter


def clip_final_norm(text_encoder) -> torch.nn.Module:
    """The final LayerNorm in both module layouts: transformers ≤ 4 (``text_model.final_layer_norm``) and
    transformers 5's ``CLIPTextModel`` (``final_layer_norm`` on the model itself)."""
    inner = getattr(text_encoder, "text_model", text_encoder)
    norm = getattr(inner, "final_layer_norm", None)
    if norm is None:
        raise ValueError(f"{type(text_encoder).__name__} has no final_layer_norm; is it a CLIP text encoder?")
    return norm


class StableDiffusionAdapter(LensAdapter):
    family = "stable-diffusion"
    description = "Stable Diffusion 1.x/2.x (one CLIP text encoder)"

    @classmethod
    def matches(cls, pipe) -> bool:
        names = getattr(pipe, "components", {})
        return (
            {"text_encoder", "tokenizer", "unet", "vae", "scheduler"} <= set(names)
            and "text_encoder_2" not in names
            and hasattr(pipe, "encode_prompt")
            and type(getattr(pipe, "text_encoder", None)).__name__.startswith("CLIPText")
        )

    @property
    def text_encoder(self):
        return self.pipe.text_encoder

    @property
    def num_layers(self) -> int:
        return int(self.text_encoder.config.num_hidden_layers)

    @property
    def size_multiple(self) -> int:
        # The pipeline's own check_inputs demands multiples of 8; the latent grid needs the VAE factor.
        return math.lcm(8, int(self.pipe.vae_scale_factor))

    def default_size(self) -> tuple[int, int]:
        side = int(self.pipe.unet.config.sample_size) * int(self.pipe.vae_scale_factor)
        return side, side

    def encode(self, prompts: list[str]) -> EncodedPrompts:
        tokenizer = self.pipe.tokenizer
        max_length = tokenizer.model_max_length
        batch = tokenizer(prompts, padding="max_length", max_length=max_length, truncation=True,
                          return_tensors="pt")
        for prompt in prompts:
            full = tokenizer(prompt).input_ids
            if len(full) > max_length:
                dropped = tokenizer.convert_ids_to_tokens(full[max_length - 1:-1])
                self.warn_truncated(prompt, max_length, dropped)
        device = self.text_encoder.device
        mask = None
        if getattr(self.text_encoder.config, "use_attention_mask", False):
            mask = batch.attention_mask.to(device)
        with torch.no_grad():
            out = self.text_encoder(batch.input_ids.to(device), attention_mask=mask, output_hidden_states=True)
        tokens = [tokenizer.convert_ids_to_tokens(ids) for ids in batch.input_ids.tolist()]
        return EncodedPrompts(tuple(out.hidden_states), batch.input_ids, tokens)

    def lens(self, hidden: torch.Tensor, final_norm: bool = True) -> torch.Tensor:
        if not final_norm:
            return hidden
        with torch.no_grad():
            return clip_final_norm(self.text_encoder)(hidden)

    def pipeline_kwargs(self, cond: torch.Tensor, uncond: torch.Tensor | None) -> dict:
        kwargs = {"prompt_embeds": cond}
        if uncond is not None:
            kwargs["negative_prompt_embeds"] = uncond
        return kwargs

    def decode_preview(self, latents: torch.Tensor) -> list[Image.Image]:
        vae = self.pipe.vae
        with torch.no_grad():
            images = vae.decode(latents.to(vae.dtype) / vae.config.scaling_factor, return_dict=False)[0]
        return self.pipe.image_processor.postprocess(images, output_type="pil")
