"""Conditioner: the conditioning of every (prompt, layer) of a run, from one text-encoder pass.

The lens embedding of layer l is the source encoder's final norm (or none, for the ablation) applied to its hidden
state h^l; the run's token range or per-token splicing then decides which positions carry it; the target pipeline's
adapter assembles the rest (other encoders, pooled vectors, attention masks) as the pipeline itself would.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from .run import LensRun


class Conditioner:
    """Builds the denoiser's conditioning for a resolved run. ``encoded`` is the target pipeline's pass over the
    prompts (then the negative text, then the empty prompt), ``lensed`` the source encoder's (the same object
    unless the run lenses another model's text encoder)."""

    def __init__(self, target, source, run: LensRun, encoded, lensed, do_cfg: bool):
        self.target, self.source, self.run = target, source, run
        self.encoded, self.lensed, self.do_cfg = encoded, lensed, do_cfg
        self.hidden = lensed.hidden_states
        self.empty = lensed.empty_index
        self.negative_index = len(run.prompts)

    def lens_at(self, layer: int, row: int) -> torch.Tensor:
        return self.source.lens_layer(self.hidden, layer, slice(row, row + 1), self.run.final_norm)

    def normal_seq(self, row: int) -> torch.Tensor:
        return self.source.normal_part(self.lensed, self.source.encoder_name, row).seq

    def pooled_at(self, layer: int, row: int):
        if not self.run.lens_pooled:
            return None
        return self.source.lens_pooled(self.hidden[layer][row : row + 1], self.lensed.token_ids[row : row + 1])

    def _cond(self, index: int, seq, layer: int, mask=None) -> dict:
        return self.target.conditioning(
            self.encoded, index, seq, pooled=self.pooled_at(layer, index), mask=mask, other=self.run.other_encoders
        )

    def unconditional(self) -> dict | None:
        """The negative branch per layer: its normal conditioning, or lensed at the same layer (lens_negative)."""
        if not self.do_cfg:
            return None
        neg, layers = self.negative_index, self.run.layers
        if self.run.lens_negative:
            return {
                l: self.target.conditioning(
                    self.encoded, neg, self.lens_at(l, neg), pooled=self.pooled_at(l, neg), other="normal"
                )
                for l in layers
            }
        normal = self.target.unconditional(self.encoded, neg, self.run.negative_prompt is not None)
        return {l: normal for l in layers}

    def conditions(self, index: int):
        """(conditioning per layer, unconditional per layer, lens embedding per layer) of prompt ``index``."""
        layers, token_range = self.run.layers, self.run.tokens
        embeddings = {l: self.lens_at(l, index) for l in layers}
        sequences = dict(embeddings)
        if token_range != "all":
            real = self.lensed.mask[index].bool().to(self.lensed.device)
            keep = real if token_range == "prompt" else ~real
            neutral = self.normal_seq(self.empty)
            # tokens are the second-to-last axis (a family's conditioning may stack layers before it: HiDream)
            sequences = {l: torch.where(keep[:, None], e, neutral) for l, e in embeddings.items()}
        cond = {l: self._cond(index, sequences[l], l) for l in layers}
        return cond, self.unconditional(), self.vectors(embeddings)

    def vectors(self, embeddings: dict) -> dict:
        """The lens embedding of each layer as a result keeps it, (1, tokens, width), from conditioning-shaped ones."""
        return {l: self.source.lens_vectors(e) for l, e in embeddings.items()}

    def per_token(self, index: int) -> Iterator[tuple]:
        """One ((position, token), conditions) per shown position of prompt ``index`` (its tokens, never a
        template's): the empty prompt's lens embedding at each layer with only that position taken from the prompt."""
        layers = self.run.layers
        positions = self.lensed.words[index].nonzero().flatten().tolist()
        if not positions:
            raise ValueError("per_token needs a prompt with at least one token")
        empty_mask = self.lensed.mask[self.empty : self.empty + 1].to(self.lensed.device)
        embeddings = {l: self.lens_at(l, index) for l in layers}
        neutral = {l: self.lens_at(l, self.empty) for l in layers}
        uncond = self.unconditional()
        vectors = self.vectors(embeddings)
        for p in positions:
            cond = {}
            for l in layers:
                seq = neutral[l].clone()
                seq[..., p, :] = embeddings[l][..., p, :]
                token_mask = empty_mask.clone()
                token_mask[:, p] = 1
                cond[l] = self._cond(index, seq, l, mask=token_mask)
            yield (p, self.lensed.tokens[index][p]), (cond, uncond, vectors)
