"""HiDream-I1: four text encoders — two CLIPs (their projected end tokens, concatenated, as the pooled vector), T5-XXL
(final-normed, 128 tokens, as the sequence every block reads) and Llama 3.1 8B, of which the transformer reads
**every layer**: the pipeline hands it ``hidden_states[1:]`` stacked (the last one final-normed, the others raw), and
block b reads the entry ``llama_layers[b]`` (in the published models block b reads layer b + 1, and the last
blocks the last layer). Classifier-free guidance runs in one batch, [negative; prompt].

What "the lens at layer l" means when each block reads its own layer: **the encoder stopped at layer l** — every
tap deeper than l reads layer l instead, ``min(k, l)``, the shallower ones keep their own. At l = L (32 for Llama
3.1 8B) that is the pipeline's own conditioning; at l = 1 every block reads the first layer. Taps are taken as the
pipeline takes them (raw, the last layer normed); ``final_norm=True`` normalises every tap. A result's lens
embedding of layer l is hˡ itself (the deepest entry of the stack).

Lensing ``text_encoder_3`` (T5) reads it like FLUX's T5; the CLIPs give only the pooled vector. Attention maps read
every block's attention over [image; T5; the deepest Llama tap; the block's own tap]: a Llama word's map is the
attention that lands on both of its copies. The denoiser taps read every block's image tokens: the first output of
a dual-stream block, the start of a single-stream block's [image; text] sequence.
"""

from __future__ import annotations

import math

import torch

from . import encoders as enc
from .denoising import TextInCall, image_grid
from .encoders import TextEncoderSpec
from .family import FamilyAdapter
from .lens import EncodedPrompts, Part

TOKENS = 128  # the pipeline's default max_sequence_length
LLAMA = "text_encoder_4"


class HiDreamAdapter(FamilyAdapter):
    family = "hidream"
    description = "HiDream-I1 (Llama 3.1, every layer to its own block; T5-XXL; two CLIPs pooled)"
    pipeline_classes = ("HiDreamImagePipeline",)
    cuda_dtype = torch.bfloat16
    noise_schedule = "flow"

    def encoder_specs(self):
        def tokens(name: str) -> int:
            tokenizer = getattr(self.pipe, name, None)
            return min(TOKENS, getattr(tokenizer, "model_max_length", TOKENS) or TOKENS)

        return (
            TextEncoderSpec(
                "text_encoder", "tokenizer", "clip", max_length=TOKENS, pooled="projection", sequence=False
            ),
            TextEncoderSpec(
                "text_encoder_2", "tokenizer_2", "clip", max_length=TOKENS, pooled="projection", sequence=False
            ),
            TextEncoderSpec(
                "text_encoder_3", "tokenizer_3", "t5", max_length=tokens("tokenizer_3"), mask_to_encoder=True
            ),
            TextEncoderSpec(LLAMA, "tokenizer_4", "llm", max_length=tokens("tokenizer_4"), mask_to_encoder=True),
        )

    def default_encoder(self) -> str:
        return LLAMA

    @property
    def lenses_llama(self) -> bool:
        return self.spec.component == LLAMA

    @property
    def own_final_norm(self) -> bool:
        return False if self.lenses_llama else super().own_final_norm

    # ---- the stack of Llama layers -------------------------------------------------------------------------------
    def llama_stack(self, hidden: tuple[torch.Tensor, ...], layer: int, rows: slice, final_norm: bool) -> torch.Tensor:
        """The (L, texts, tokens, width) stack the transformer picks its blocks' layers from, the encoder stopped at
        ``layer``: entry k − 1 holds layer min(k, ``layer``), raw, the last layer normed (every one with
        ``final_norm``)."""
        last = len(hidden) - 1
        norm = enc.final_norm(getattr(self.pipe, LLAMA))

        def tap(k: int) -> torch.Tensor:
            state = hidden[k][rows]
            if final_norm or k == last:
                with torch.no_grad():
                    return norm(state)
            return state

        taps = {k: tap(k) for k in sorted({min(k, layer) for k in range(1, last + 1)})}
        return torch.stack([taps[min(k, layer)] for k in range(1, last + 1)])

    def layers_read(self, layer: int) -> set[int]:
        if not self.lenses_llama:
            return {layer}
        return {min(k, layer) for k in range(1, self.num_layers + 1)}  # as llama_stack takes them

    def layers_of_own_conditioning(self, spec: TextEncoderSpec) -> set[int]:
        if spec.component != LLAMA:
            return super().layers_of_own_conditioning(spec)
        return set(range(1, enc.num_blocks(getattr(self.pipe, LLAMA)) + 1))  # the whole stack

    def lens_layer(self, hidden: tuple[torch.Tensor, ...], layer: int, rows: slice, final_norm: bool) -> torch.Tensor:
        if not self.lenses_llama:
            return super().lens_layer(hidden, layer, rows, final_norm)
        return self.llama_stack(hidden, layer, rows, final_norm)

    def lens_vectors(self, seq: torch.Tensor) -> torch.Tensor:
        # the stack's deepest entry is layer l itself
        return seq[-1] if self.lenses_llama else seq

    def normal_part(self, encoded: EncodedPrompts, component: str, index: int) -> Part:
        if component != LLAMA or self.lenses_llama:
            return super().normal_part(encoded, component, index)
        run = encoded.runs[LLAMA]  # not lensed: the pipeline's own stack
        rows = slice(index, index + 1)
        stack = self.llama_stack(run.hidden, len(run.hidden) - 1, rows, final_norm=False)
        return Part(stack, None, run.mask[rows].to(stack.device))

    def assemble(self, parts: dict[str, Part]) -> dict:
        pooled = torch.cat([parts["text_encoder"].tensor("pooled"), parts["text_encoder_2"].tensor("pooled")], dim=-1)
        return {
            "prompt_embeds_t5": parts["text_encoder_3"].tensor("seq"),
            "prompt_embeds_llama3": parts[LLAMA].tensor("seq"),
            "pooled_prompt_embeds": pooled,
        }

    def pipeline_kwargs(self, conds: list[dict], unconds: list[dict] | None) -> dict:
        """Items batched as the pipeline batches them: the Llama stack along its second axis."""

        def batched(items: list[dict], prefix: str = "") -> dict:
            return {
                f"{prefix}{key}": torch.cat([c[key] for c in items], dim=1 if key == "prompt_embeds_llama3" else 0)
                for key in items[0]
            }

        kwargs = batched(conds)
        if unconds is not None:
            kwargs.update(batched(unconds, "negative_"))
        return kwargs

    # ---- geometry ------------------------------------------------------------------------------------------------
    @property
    def size_multiple(self) -> int:
        return int(self.pipe.vae_scale_factor) * 2

    def check_size(self, height: int, width: int) -> None:
        """HiDream's pipeline redraws any size at its own area (``default_sample_size`` × the VAE factor, squared),
        keeping only the aspect ratio: a size it would change is refused, with the one it would draw."""
        division = self.size_multiple
        area = (self.pipe.default_sample_size * self.pipe.vae_scale_factor) ** 2
        scale = math.sqrt(area / (width * height))
        drawn = (int(height * scale // division * division), int(width * scale // division * division))
        if drawn != (height, width):
            raise ValueError(
                f"HiDream draws every image at its own area ({math.isqrt(area)}² pixels), so {height}×{width} would "
                f"come out {drawn[0]}×{drawn[1]}: ask for a size of that area (e.g. {drawn[0]}×{drawn[1]})"
            )

    def attention_sites(self) -> list:
        # every block's attention over [image; T5; the last Llama tap; this block's Llama tap]
        return [(n, m, "image_first") for n, m in self.denoiser.named_modules() if n.endswith(".attn1")]

    def attention_text(self) -> slice | list[slice] | None:
        """Where the lensed encoder's tokens sit in the blocks' text: T5's first; Llama's twice — the deepest tap,
        carried from block to block, then the block's own — and a word's map is what lands on both."""
        t5, llama = (enc.max_length(self.pipe, s) for s in self.specs if s.component in ("text_encoder_3", LLAMA))
        if self.spec.component == "text_encoder_3":
            return slice(0, t5)
        if self.lenses_llama:
            return [slice(t5, t5 + llama), slice(t5 + llama, t5 + 2 * llama)]
        return None  # a CLIP gives only the pooled vector

    def text_in_call(self, cond: dict, kwargs: dict, height: int, width: int) -> TextInCall:
        t5, llama = kwargs["prompt_embeds_t5"].shape[1], kwargs["prompt_embeds_llama3"].shape[-2]
        side = self.size_multiple  # the VAE's factor × the 2×2 patches
        image = (height // side) * (width // side)
        # a non-square image's tokens are padded to the transformer's longest image sequence
        start = image if height == width else int(self.denoiser.max_seq)
        return TextInCall(t5 + 2 * llama, image_tokens=image, start=start)

    # ---- the denoiser taps: dual-stream blocks return (image, text); single-stream ones [image; text] ------------
    def denoiser_blocks(self) -> dict[str, torch.nn.Module]:
        """The dual-stream blocks (``block0..``), then the single-stream ones (``single0..``)."""
        denoiser = self.denoiser
        blocks = {f"block{i}": b for i, b in enumerate(denoiser.double_stream_blocks)}
        blocks.update({f"single{i}": b for i, b in enumerate(denoiser.single_stream_blocks)})
        return blocks

    def batched_argument(self, name, value, batch):
        if name == "encoder_hidden_states_llama3":  # (Llama layers, batch, tokens, width): the batch comes second
            return value.expand(value.shape[0], batch, *value.shape[2:]).contiguous()
        return super().batched_argument(name, value, batch)

    def block_feature(self, output) -> torch.Tensor:
        """A block's image tokens — a dual-stream block's first output, the start of a single-stream block's
        sequence — on the patch grid of the taps' (square) size."""
        image = output[0] if isinstance(output, tuple) else output
        height, width = self.default_size()
        rows, cols = height // self.size_multiple, width // self.size_multiple
        return image_grid(image[:, : rows * cols], rows, cols)
