"""Chroma: FLUX.1's architecture without CLIP. One T5-XXL reads the prompt (its attention mask passed to the encoder,
unlike FLUX), the transformer conditions on its final-normed output with a mask that keeps the real tokens **and
the first padding token** (the end of the text, as Chroma was trained), and classifier-free guidance runs as a
second transformer call per step.

So Chroma is T5 read as PixArt's is: layer l is ``norm(h^l)``, layer 24 is the pipeline's own conditioning, padding
past the first pad never reaches the image (``tokens="padding"`` is refused). Everything on the image side — packed
latents, joint attention over [text; image], the flow schedule, the denoiser taps — is FLUX's.
"""

from __future__ import annotations

import torch

from .encoders import TextEncoderSpec
from .flux import T5_TOKENS, FluxAdapter
from .lens import Part


def with_first_padding(mask: torch.Tensor) -> torch.Tensor:
    """The tokenizer's mask with the first padding position of each row opened too, as Chroma's pipeline builds
    its transformer mask (``positions <= real length`` for a contiguous mask; a per-token lens mask keeps its holes)."""
    opened = mask.clone()
    closed = opened == 0
    has_padding = closed.any(dim=1)
    first = closed.int().argmax(dim=1)
    rows = torch.arange(mask.shape[0], device=mask.device)[has_padding]
    opened[rows, first[has_padding]] = 1
    return opened


class ChromaAdapter(FluxAdapter):
    family = "chroma"
    description = "Chroma (FLUX.1 without CLIP: T5-XXL with its mask, one padding token kept; CFG as a second call)"
    pipeline_classes = ("ChromaPipeline",)
    uses_negative_embeddings = True
    masks_padding = True
    guidance_layout = "calls"  # the conditional call, then the unconditional one

    def encoder_specs(self):
        return (TextEncoderSpec("text_encoder", "tokenizer", "t5", max_length=T5_TOKENS, mask_to_encoder=True),)

    def assemble(self, parts: dict[str, Part]) -> dict:
        part = parts["text_encoder"]
        seq = part.tensor("seq")
        assert part.mask is not None  # every encoder pass has a tokenizer mask
        # the pipeline's mask is in the embeddings' dtype (its transformer multiplies it into a (text × text) mask)
        mask = with_first_padding(part.mask.to(seq.device)).to(seq.dtype)
        return {"prompt_embeds": seq, "prompt_attention_mask": mask}
