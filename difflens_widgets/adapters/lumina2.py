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

Not read yet: the denoiser taps (its joint blocks carry caption and image tokens of per-item lengths).
"""

from __future__ import annotations

import math

import torch

from .denoising import TextInCall
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

    def denoiser_blocks(self) -> dict[str, torch.nn.Module]:
        raise ValueError(
            "the denoiser taps do not read Lumina 2 yet: its joint blocks carry each item's caption and image tokens "
            "in one sequence of per-item lengths"
        )
