"""FLUX.2 [klein] and [dev]. [klein]: one decoder-only language model (Qwen3) reads the prompt through its chat
template (thinking off), and the transformer conditions on the **raw** hidden states of three of its layers,
``hidden_states[9]``, ``[18]`` and ``[27]`` of Qwen3's 36, stacked along the width (``text_encoder_out_layers``).
Padding is not masked out of the transformer's attention. Classifier-free guidance runs only on the base
(non-distilled) models, as two transformer calls per step, the negative text always the empty prompt's template.

What "the lens at layer l" means for a family that reads several layers at once: **the three taps scaled to depth
l**, ``round(l·9/27), round(l·18/27), l``, so the stack keeps its shape, its width and its proportions, and column
27 is the pipeline's own conditioning (the lens's normal column). Layer 36 is the last block; the final norm is off
by default, as the pipeline takes its taps raw (``final_norm=True`` applies Qwen3's final RMS norm to each tap).
Only the user's words are shown (word chips, per-token lens, attention maps): the template's tokens are the
family's business.

[dev] reads the same way with Mistral Small 3.1 (40 layers; taps 10, 20, 30, so column 30 is the pipeline's own)
after the pipeline's system message, and its guidance is distilled into the transformer.
"""

from __future__ import annotations

import numpy as np
import torch

from .encoders import TextEncoderSpec, chat_prompt
from .flux import FluxAdapter
from .lens import Part

TOKENS = 512  # the pipeline's default max_sequence_length
TAPS = (9, 18, 27)  # the pipeline's default text_encoder_out_layers


class Flux2KleinAdapter(FluxAdapter):
    """FLUX.1's joint attention, packed latents and flow schedule; its own text side and latent normalisation."""

    family = "flux2-klein"
    description = "FLUX.2 [klein] (Qwen3 through its chat template; raw layers 9, 18, 27 stacked)"
    pipeline_classes = ("Flux2KleinPipeline",)
    cuda_dtype = torch.bfloat16
    noise_schedule = "flow"
    taps = TAPS
    guidance_layout = "calls"  # the base models run the conditional call, then the unconditional one

    def __init__(self, pipe, encoder: str | None = None):
        super().__init__(pipe, encoder)
        # the distilled models have no guidance branch at all (the pipeline ignores guidance_scale)
        self.uses_negative_embeddings = not bool(getattr(pipe.config, "is_distilled", False))
        if self.num_layers < max(self.taps):
            name = self.description.split(" (")[0]
            raise ValueError(
                f"this {name} text encoder has {self.num_layers} layers, but the pipeline reads layers "
                f"{list(self.taps)} of it (text_encoder_out_layers)"
            )

    def encoder_specs(self):
        return (TextEncoderSpec("text_encoder", "tokenizer", "llm", max_length=TOKENS, mask_to_encoder=True),)

    def wrap(self, text: str) -> str:
        return chat_prompt(self.pipe.tokenizer, text, enable_thinking=False)

    @property
    def own_layer(self) -> int:
        return max(self.taps)

    @property
    def own_final_norm(self) -> bool:
        return False

    def tap_layers(self, layer: int) -> list[int]:
        """The layers stacked at lens layer ``layer``: the pipeline's taps scaled to that depth."""
        return [round(layer * tap / self.own_layer) for tap in self.taps]

    def layers_read(self, layer: int) -> set[int]:
        return set(self.tap_layers(layer))

    def lens_layer(self, hidden: tuple[torch.Tensor, ...], layer: int, rows: slice, final_norm: bool) -> torch.Tensor:
        stack = torch.stack([self.lens(hidden[k][rows], final_norm) for k in self.tap_layers(layer)], dim=1)
        batch, taps, tokens, width = stack.shape
        return stack.permute(0, 2, 1, 3).reshape(batch, tokens, taps * width)  # as the pipeline stacks its taps

    def assemble(self, parts: dict[str, Part]) -> dict:
        return {"prompt_embeds": parts["text_encoder"].seq}

    def _batch_norm(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The VAE's latent batch-norm statistics (mean, std), shaped to scale patchified latents like ``like``."""
        bn, eps = self.pipe.vae.bn, self.pipe.vae.config.batch_norm_eps
        std = torch.sqrt(bn.running_var.view(1, -1, 1, 1) + eps)
        return bn.running_mean.view(1, -1, 1, 1).to(like), std.to(like)

    def decode_preview(self, latents: torch.Tensor, height: int, width: int) -> np.ndarray:
        """Packed latent tokens (the denoising loop's) or the pipeline's ``output_type="latent"`` latents, decoded
        as the pipeline decodes: tokens back onto their 2×2-patch grid, the VAE's batch norm undone, unpatchified."""
        pipe = self.pipe
        if latents.ndim == 3:
            side = pipe.vae_scale_factor * 2
            batch, _, channels = latents.shape
            grid = latents.transpose(1, 2).reshape(batch, channels, height // side, width // side)
            mean, std = self._batch_norm(grid)
            latents = pipe._unpatchify_latents(grid * std + mean)
        with torch.no_grad():
            images = pipe.vae.decode(latents.to(pipe.vae.dtype), return_dict=False)[0]
        return pipe.image_processor.postprocess(images, output_type="np")

    # ---- the denoiser taps: latents patchified 2×2 and batch-normed before packing -----------------------------
    def clean_sample(self, pixels: torch.Tensor) -> torch.Tensor:
        vae = self.pipe.vae
        latents = self.pipe._patchify_latents(vae.encode(pixels.to(vae.device, vae.dtype)).latent_dist.mean)
        mean, std = self._batch_norm(latents)
        return (latents - mean) / std

    def denoiser_sample(self, noisy: torch.Tensor) -> torch.Tensor:
        return self.pipe._pack_latents(noisy)


class Flux2Adapter(Flux2KleinAdapter):
    """FLUX.2 [dev]: [klein]'s reading with Mistral Small 3.1 (40 layers) and its own taps, ``hidden_states[10]``,
    ``[20]`` and ``[30]``; the prompt is one user turn after the pipeline's system message ("You are an AI that
    reasons about image descriptions ..."), rendered by the chat template of its tokenizer component (Mistral's
    multimodal processor). Guidance is distilled into the transformer (an input, no negative branch)."""

    family = "flux2"
    description = "FLUX.2 [dev] (Mistral Small 3.1 after a system message; raw layers 10, 20, 30 stacked)"
    pipeline_classes = ("Flux2Pipeline",)
    taps = (10, 20, 30)  # the pipeline's default text_encoder_out_layers

    def __init__(self, pipe, encoder: str | None = None):
        super().__init__(pipe, encoder)
        self.uses_negative_embeddings = False  # guidance-distilled: guidance_scale is an input of the transformer

    def encoder_specs(self):
        # the rendered template starts with the start token, so it is tokenized without special tokens, as the
        # processor's apply_chat_template does
        return (
            TextEncoderSpec(
                "text_encoder", "tokenizer", "llm", max_length=TOKENS, mask_to_encoder=True, add_special_tokens=False
            ),
        )

    def preprocess(self, texts: list[str]) -> list[str]:
        return [text.replace("[IMG]", "") for text in texts]  # as the pipeline's format_input

    def wrap(self, text: str) -> str:
        return chat_prompt(self.pipe.tokenizer, text, system=self.pipe.system_message, answer=False)
