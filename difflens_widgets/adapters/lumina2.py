"""Lumina-Image 2.0: one decoder-only language model (Gemma 2) reads the prompt behind a system prompt ("You are an
assistant designed to generate superior images ... <Prompt Start> "), and the transformer conditions on the **raw
penultimate** hidden state (``hidden_states[-2]``) of the real positions: it packs each caption's real tokens first,
then the image's, so padding never reaches the image. The negative prompt is encoded **bare**, without the system
prompt, as the pipeline does.

So Lumina 2 is a single-tap family read as SDXL's CLIPs and Z-Image are: layer l is the raw hˡ, layer L − 1 is the
pipeline's own conditioning, ``final_norm=True`` applies Gemma's final RMS norm. Guidance is classifier-free as a
second transformer call per step (then rescaled to the conditional prediction's norm, ``cfg_normalization``).
Attention maps read the joint layers' attention over [caption; image] (not the refiners'); the caption the
transformer sees is the real positions packed first, and the maps are put back at the encoder's positions.

The denoiser taps read the joint layers' image tokens, which start after each item's own caption length (watched
on the transformer's position embedder while tapping).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from .denoising import TextInCall, image_grid, one_minus_sigma
from .encoders import TextEncoderSpec
from .family import FamilyAdapter
from .lens import Part, real_first

TOKENS = 256  # the pipeline's default max_sequence_length


class Lumina2Adapter(FamilyAdapter):
    family = "lumina2"
    description = "Lumina-Image 2.0 (Gemma 2 behind a system prompt; raw penultimate layer, real positions only)"
    pipeline_classes = ("Lumina2Pipeline",)
    cuda_dtype = torch.bfloat16
    noise_schedule = "flow"
    masks_padding = True
    wraps_negative = False  # the system prompt goes before the prompt only
    guidance_layout = "calls"  # the conditional call, then the unconditional one

    def encoder_specs(self):
        return (
            TextEncoderSpec(
                "text_encoder", "tokenizer", "llm", max_length=TOKENS, penultimate=True, mask_to_encoder=True
            ),
        )

    def wrap(self, text: str) -> str:
        return f"{self.pipe.system_prompt} <Prompt Start> {text}"

    def assemble(self, parts: dict[str, Part]) -> dict:
        part = parts["text_encoder"]
        return {"prompt_embeds": part.seq, "prompt_attention_mask": part.mask}

    def pipeline_kwargs(self, conds: list[dict], unconds: list[dict] | None) -> dict:
        """Each item's real positions first, as the pipeline's transformer reads its caption (the items of one call
        share their mask); the unconditional branch likewise, padded to the same length."""

        branches = {"": conds, "negative_": unconds or []}
        # both branches one length (the pipeline insists), the longest caption's
        length = max(int(c["prompt_attention_mask"][0].sum()) for items in branches.values() for c in items)
        kwargs = {}
        for prefix, items in branches.items():
            if items:
                seq, mask = real_first(items, length)
                kwargs.update({f"{prefix}prompt_embeds": seq, f"{prefix}prompt_attention_mask": mask})
        return kwargs

    @property
    def size_multiple(self) -> int:
        return math.lcm(8, int(self.pipe.vae_scale_factor) * int(self.denoiser.config.patch_size))

    def attention_sites(self) -> list:
        # the joint layers attend over [caption; image] (queries and keys alike); the refiners see one side only
        return [(n, m, "text_first") for n, m in self.denoiser.named_modules() if n.startswith("layers.")
                and n.endswith(".attn")]  # fmt: skip

    def text_in_call(self, cond: dict, kwargs: dict, height: int, width: int) -> TextInCall:
        positions = cond["prompt_attention_mask"][0].nonzero().flatten().tolist()  # packed first, in order
        return TextInCall(len(positions), positions)

    # ---- the denoiser taps: each item's joint sequence is [its caption; the image], so the image starts per item --
    def denoiser_blocks(self) -> dict[str, torch.nn.Module]:
        """The joint layers, which see caption and image together (the refiners before them see one side each)."""
        return {f"block{i}": layer for i, layer in enumerate(self.denoiser.layers)}

    @contextmanager
    def tap_context(self) -> Iterator[None]:
        """Watch the transformer's position embedder, which gives each item's caption length and the latent size."""

        def watch(_module, args, output):
            self._tapped_layout = (list(output[4]), tuple(args[0].shape[-2:]))

        handle = self.denoiser.rope_embedder.register_forward_hook(watch)
        try:
            yield
        finally:
            handle.remove()

    def block_feature(self, output) -> torch.Tensor:
        """A joint layer's image tokens — after each item's own caption, row by row — on their patch grid."""
        lengths, (height, width) = self._tapped_layout
        patch = int(self.denoiser.config.patch_size)
        rows, cols = height // patch, width // patch
        image = torch.stack([output[i, start : start + rows * cols] for i, start in enumerate(lengths)])
        return image_grid(image, rows, cols)

    def denoiser_timestep(self, timestep: int, batch: int, like: torch.Tensor) -> torch.Tensor:
        return one_minus_sigma(timestep, batch, like)
