"""Z-Image: one decoder-only language model (Qwen3) reads the prompt through its chat template, and the transformer
conditions on the **raw penultimate** hidden state (``hidden_states[-2]``, no final norm) of the real positions
only: the pipeline hands it one tensor per prompt with padding removed, so padding never reaches the image.

So Z-Image is a single-tap family, read as SDXL's CLIPs are read: layer l is the raw hˡ, layer L − 1 is the
pipeline's own conditioning, and ``final_norm=True`` applies Qwen3's final RMS norm. Guidance is
``pos + g·(pos − neg)``: on for any scale above 0 (the Turbo model runs with 0), both branches in one batch with
the conditional one first. Only the user's words are shown; the template's tokens are the family's business.

Attention maps read the main layers' attention over [image; caption] (each padded to a multiple of 32 tokens), the
conditional half of the batch; the denoiser taps read the same layers' image tokens, handing the transformer a list
of latents (one per image) as the pipeline does.
"""

from __future__ import annotations

import math

import torch

from .denoising import TextInCall, image_grid, one_minus_sigma
from .encoders import TextEncoderSpec, chat_prompt
from .family import FamilyAdapter
from .lens import Part

TOKENS = 512  # the pipeline's default max_sequence_length
SIZE = 1024  # the pipeline's default height and width
PATCH = 2  # the pipeline's default patch_size
SEQUENCE_MULTIPLE = 32  # the transformer pads image and caption tokens to multiples of this


def _padded(tokens: int) -> int:
    return math.ceil(tokens / SEQUENCE_MULTIPLE) * SEQUENCE_MULTIPLE


class ZImageAdapter(FamilyAdapter):
    family = "z-image"
    description = "Z-Image (Qwen3 through its chat template; raw penultimate layer, padding removed)"
    pipeline_classes = ("ZImagePipeline",)
    cuda_dtype = torch.bfloat16
    noise_schedule = "flow"
    masks_padding = True  # the transformer gets the real positions only
    guidance_layout = "batch-conditional-first"

    def encoder_specs(self):
        return (
            TextEncoderSpec(
                "text_encoder", "tokenizer", "llm", max_length=TOKENS, penultimate=True, mask_to_encoder=True
            ),
        )

    def wrap(self, text: str) -> str:
        return chat_prompt(self.pipe.tokenizer, text, enable_thinking=True)

    def guides(self, guidance_scale: float) -> bool:
        return guidance_scale > 0

    def assemble(self, parts: dict[str, Part]) -> dict:
        part = parts["text_encoder"]
        return {"prompt_embeds": part.seq, "prompt_attention_mask": part.mask}

    def pipeline_kwargs(self, conds: list[dict], unconds: list[dict] | None) -> dict:
        """One tensor per image, its masked positions only, as the pipeline's own encoding gives them."""

        def real(cond: dict) -> torch.Tensor:
            return cond["prompt_embeds"][0][cond["prompt_attention_mask"][0].bool().to(cond["prompt_embeds"].device)]

        kwargs = {"prompt_embeds": [real(c) for c in conds]}
        if unconds is not None:
            kwargs["negative_prompt_embeds"] = [real(u) for u in unconds]
        return kwargs

    def default_size(self) -> tuple[int, int]:
        """1024², the pipeline's own; a pipeline given a ``default_sample_size`` (a latent side, as FLUX's has) draws
        that many latents times the VAE factor (the tiny test pipelines: 32²)."""
        sample = getattr(self.pipe, "default_sample_size", None)
        side = int(sample) * int(self.pipe.vae_scale_factor) if sample else SIZE
        return side, side

    @property
    def size_multiple(self) -> int:
        return math.lcm(8, 2 * int(self.pipe.vae_scale_factor))  # latents are patchified 2×2

    def attention_sites(self) -> list:
        # the main layers attend over [image; caption], each padded to a multiple of 32 (the refiners see one side)
        return [(n, m, "image_first") for n, m in self.denoiser.named_modules() if n.startswith("layers.")
                and n.endswith(".attention")]  # fmt: skip

    def text_in_call(self, cond: dict, kwargs: dict, height: int, width: int) -> TextInCall:
        """Per item: the image's tokens, padded to a multiple of 32, then the caption's real tokens (in order),
        padded likewise; a batch with longer captions (the negative's) pads after that."""
        positions = cond["prompt_attention_mask"][0].nonzero().flatten().tolist()
        rows, cols = self._patch_grid(height, width)
        image = rows * cols
        return TextInCall(_padded(len(positions)), positions, image_tokens=image, start=_padded(image))

    def _patch_grid(self, height: int, width: int) -> tuple[int, int]:
        """The transformer's image tokens of an image this size, as rows × columns of 2×2 latent patches."""
        side = int(self.pipe.vae_scale_factor) * PATCH
        return height // side, width // side

    # ---- the denoiser taps: a list of one-frame latents in, the main layers' [image; caption] sequence out ---------
    unguided_scale = 0.0  # pos + g·(pos − neg) guides above 0

    def denoiser_blocks(self) -> dict[str, torch.nn.Module]:
        """The main layers, which see image and caption together (the refiners before them see one side each)."""
        return {f"block{i}": layer for i, layer in enumerate(self.denoiser.layers)}

    def block_feature(self, output) -> torch.Tensor:
        """A main layer's image tokens — each item's sequence starts with them, row by row, before their padding
        and the caption — folded back onto the patch grid of the taps' size."""
        rows, cols = self._patch_grid(*self.default_size())
        return image_grid(output[:, : rows * cols], rows, cols)

    def denoiser_sample(self, noisy: torch.Tensor) -> list[torch.Tensor]:
        return list(noisy.unsqueeze(2).unbind(0))  # one (channels, 1 frame, h, w) latent per image

    def denoiser_timestep(self, timestep: int, batch: int, like: torch.Tensor) -> torch.Tensor:
        return one_minus_sigma(timestep, batch, like)
