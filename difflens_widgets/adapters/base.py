"""What the lens needs to know about one family of pipelines, and nothing else.

An adapter answers four questions for its family: how to get every hidden state of the text encoder in one pass,
what the lens embedding of a layer is (the encoder's own final norm applied to that hidden state), how to hand
embeddings to the pipeline, and how to turn latents into a cheap preview. The engine is family-agnostic.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
from PIL import Image


@dataclass
class EncodedPrompts:
    """Every hidden state of one text-encoder pass: ``hidden_states[l]`` has shape (batch, tokens, width)."""

    hidden_states: tuple[torch.Tensor, ...]
    token_ids: torch.Tensor
    tokens: list[list[str]]

    @property
    def num_layers(self) -> int:
        return len(self.hidden_states) - 1


class LensAdapter:
    """Base class; subclasses set ``family`` and implement the abstract methods."""

    family: str = ""
    description: str = ""

    def __init__(self, pipe):
        self.pipe = pipe

    @classmethod
    def matches(cls, pipe) -> bool:
        raise NotImplementedError

    # ---- geometry -------------------------------------------------------------------------------------------
    @property
    def num_layers(self) -> int:
        """L: the number of encoder blocks; lens layers are 0..L."""
        raise NotImplementedError

    @property
    def size_multiple(self) -> int:
        raise NotImplementedError

    def default_size(self) -> tuple[int, int]:
        raise NotImplementedError

    # ---- text side ------------------------------------------------------------------------------------------
    def encode(self, prompts: list[str]) -> EncodedPrompts:
        raise NotImplementedError

    def lens(self, hidden: torch.Tensor, final_norm: bool = True) -> torch.Tensor:
        raise NotImplementedError

    def pipeline_kwargs(self, cond: torch.Tensor, uncond: torch.Tensor | None) -> dict:
        raise NotImplementedError

    # ---- image side -----------------------------------------------------------------------------------------
    def decode_preview(self, latents: torch.Tensor) -> list[Image.Image]:
        raise NotImplementedError

    @staticmethod
    def warn_truncated(prompt: str, kept: int, dropped: list[str]) -> None:
        warnings.warn(
            f"prompt {prompt!r} is longer than the text encoder's limit of {kept} tokens; "
            f"this part was cut: {' '.join(dropped)!r}",
            UserWarning, stacklevel=4,
        )
