"""CogView 4: one decoder-only language model (GLM-4) reads the bare prompt, **left-padded** with pad tokens to a
multiple of 16 and run without an attention mask (the pad tokens are read like words), and the transformer
conditions on the **raw penultimate** hidden state (``hidden_states[-2]``) of every one of those positions, with
no mask of its own: what it gets is the pads, then the prompt.

So CogView 4 is a single-tap family read as SDXL's CLIPs and Lumina 2 are: layer l is the raw hˡ, layer L − 1 is
the pipeline's own conditioning. Several texts are encoded in one pass as the pipeline encodes each alone: each
left-padded to its own multiple of 16, then right-padded to the longest (the encoder is causal: what follows a
text never changes it), and each handed on at its own length. Guidance is classifier-free as a second transformer
call per step. Attention maps read the joint attention over [text; image]; its text has no position encoding, so
a per-token pass hands the transformer the empty prompt's positions and the one word packed together.
"""

from __future__ import annotations

import math

import torch

from .denoising import TextInCall
from .encoders import TextEncoderSpec
from .family import FamilyAdapter
from .lens import Part, real_first

TOKENS = 1024  # the pipeline's default max_sequence_length
MULTIPLE = 16  # the pipeline left-pads every text to a multiple of this


def left_padded(batch, tokenizer, multiple: int = MULTIPLE):
    """The tokenized ``batch`` (right-padded) laid out as CogView 4's pipeline lays out each text alone: pad tokens
    on the left up to a multiple of ``multiple``, the text, then pad tokens on the right to the longest such row.
    The mask marks what the pipeline hands on (left pads included), ``own_tokens`` the text's own tokens (what a
    reader is shown); offsets follow their tokens."""
    lengths = batch["attention_mask"].sum(dim=1).tolist()
    padded = [math.ceil(n / multiple) * multiple for n in lengths]
    width = max(padded)
    pad = tokenizer.pad_token_id
    ids = torch.full((len(lengths), width), pad, dtype=batch["input_ids"].dtype)
    mask = torch.zeros((len(lengths), width), dtype=batch["attention_mask"].dtype)
    own = torch.zeros_like(mask)
    offsets = torch.zeros((len(lengths), width, 2), dtype=batch["offset_mapping"].dtype)
    for row, (n, m) in enumerate(zip(lengths, padded)):
        ids[row, m - n : m] = batch["input_ids"][row, :n]
        offsets[row, m - n : m] = batch["offset_mapping"][row, :n]
        mask[row, :m] = 1
        own[row, m - n : m] = 1
    batch["input_ids"], batch["attention_mask"], batch["offset_mapping"] = ids, mask, offsets
    batch["own_tokens"] = own
    return batch


class CogView4Adapter(FamilyAdapter):
    family = "cogview4"
    description = "CogView 4 (GLM-4, left-padded to a multiple of 16; raw penultimate layer)"
    pipeline_classes = ("CogView4Pipeline",)
    cuda_dtype = torch.bfloat16
    noise_schedule = "flow"
    guidance_layout = "calls"  # the conditional call, then the unconditional one

    def encoder_specs(self):
        return (
            TextEncoderSpec(
                "text_encoder", "tokenizer", "llm", max_length=TOKENS, penultimate=True, arrange=left_padded
            ),
        )

    def assemble(self, parts: dict[str, Part]) -> dict:
        part = parts["text_encoder"]
        return {"prompt_embeds": part.seq, "prompt_attention_mask": part.mask}

    def pipeline_kwargs(self, conds: list[dict], unconds: list[dict] | None) -> dict:
        """Each branch at its own length (the pipeline takes no text mask): the positions each text hands on."""

        def handed_on(items: list[dict]) -> torch.Tensor:
            length = int(items[0]["prompt_attention_mask"][0].sum())
            return real_first(items, length)[0]

        kwargs = {"prompt_embeds": handed_on(conds)}
        if unconds is not None:
            kwargs["negative_prompt_embeds"] = handed_on(unconds)
        return kwargs

    @property
    def size_multiple(self) -> int:
        return math.lcm(8, int(self.pipe.vae_scale_factor) * int(self.denoiser.config.patch_size))

    def attention_sites(self) -> list:
        # every block's joint attention over [text; image] (queries and keys alike)
        return [(n, m, "text_first") for n, m in self.denoiser.named_modules() if n.endswith(".attn1")]

    def text_in_call(self, cond: dict, kwargs: dict, height: int, width: int) -> TextInCall:
        positions = cond["prompt_attention_mask"][0].nonzero().flatten().tolist()  # packed first, in order
        return TextInCall(len(positions), positions)

    image_stream = 0  # its blocks return (image, text)
