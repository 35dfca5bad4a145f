"""Sana: one decoder-only language model (Gemma 2) reads the prompt behind a long instruction (the pipeline's
``complex_human_instruction``: "Given a user prompt, generate an 'Enhanced prompt' ... User Prompt: "), and the
transformer cross-attends, with the attention mask, to the **last hidden state, final-normed** — but only at the
first position and the last ``max_sequence_length − 1`` (300 − 1): most of the instruction is dropped, the user's
words and padding are kept. The negative prompt is encoded **bare**, its first 300 positions kept.

So Sana is a single-tap family read as T5 is: layer l is ``norm(h^l)`` at the kept positions, layer L is the
pipeline's own conditioning. The dropped positions never reach the lens (:meth:`kept_positions`), so every position
a result names is one the transformer sees. Guidance is classifier-free in one batch ([negative; prompt]), as in
PixArt, whose prompt clean-up (lower-case, strip) Sana shares.
"""

from __future__ import annotations

import inspect

import torch

from . import encoders as enc
from .encoders import TextEncoderSpec
from .lens import Part
from .pixart import PixArtAdapter

TOKENS = 300  # the pipeline's default max_sequence_length


class SanaAdapter(PixArtAdapter):
    family = "sana"
    description = "Sana (Gemma 2 behind an instruction; last layer final-normed, the instruction's tokens dropped)"
    pipeline_classes = ("SanaPipeline",)
    wraps_negative = False  # the instruction goes before the prompt only
    noise_schedule = "flow"

    @property
    def max_tokens(self) -> int:
        return TOKENS

    @property
    def instruction(self) -> str:
        """The instruction the pipeline puts before every prompt: its ``complex_human_instruction`` default, one
        line each ("" where a variant has none)."""
        default = inspect.signature(type(self.pipe).__call__).parameters["complex_human_instruction"].default
        return "\n".join(default) if default else ""

    @property
    def instruction_tokens(self) -> int:
        """Tokens of the instruction alone (its start token included), as the pipeline counts them."""
        if not self.instruction:
            return 0
        tokenizer = self.pipe.tokenizer
        with enc.object_lock(tokenizer):
            return len(tokenizer.encode(self.instruction))

    def encoder_specs(self):
        length = self.instruction_tokens + TOKENS - 2 if self.instruction else TOKENS
        return (TextEncoderSpec("text_encoder", "tokenizer", "llm", max_length=length, mask_to_encoder=True),)

    def wrap(self, text: str) -> str:
        return self.instruction + text

    def kept_positions(self, length: int, bare: bool = False) -> list[int] | None:
        if bare or not self.instruction:
            return list(range(TOKENS))
        return [0, *range(length - (TOKENS - 1), length)]

    def assemble(self, parts: dict[str, Part]) -> dict:
        part = parts["text_encoder"]
        return {"prompt_embeds": part.seq, "prompt_attention_mask": part.mask}

    # ---- the denoiser taps: a deep-compression autoencoder, the flow's σ scaled as the transformer takes it ----
    def clean_sample(self, pixels: torch.Tensor) -> torch.Tensor:
        vae = self.pipe.vae
        return vae.encode(pixels.to(vae.device, vae.dtype)).latent * vae.config.scaling_factor

    def denoiser_timestep(self, timestep: int, batch: int, like: torch.Tensor) -> torch.Tensor:
        scale = float(self.denoiser.config.timestep_scale)
        return torch.full((batch,), timestep * scale, dtype=like.dtype, device=like.device)
