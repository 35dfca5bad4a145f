"""LensRun: one lens run with every option resolved, the one place where defaults are decided and arguments checked.

:meth:`Lens.resolve` turns what a person passed (``layers="0:12:2"``, ``final_norm=None``, ``seeds="0,1"``) into a
frozen LensRun — the layer list, the family's own final-norm choice for the encoder being lensed, the image size the
pipeline would use — raising the error a bad argument deserves before any model work. Everything that runs a lens
(:meth:`Lens.run`, the panels, the dashboard, the magic, the command line, sweeps) resolves once and passes the
LensRun down; nothing below re-checks or re-decides. In the spirit of TransformerLens's ``HookedTransformerConfig``
and diffusers' single ``check_inputs``.

A result's ``params`` (and ``lens.json``) are derived from it, with the same keys as before LensRun existed, so
saved results still load.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from . import validate
from .attention import AttentionSettings

# options that describe what is computed, in the order results have always listed them
OPTION_FIELDS = (
    "layers",
    "seeds",
    "num_inference_steps",
    "guidance_scale",
    "negative_prompt",
    "height",
    "width",
    "final_norm",
    "lens_negative",
    "tokens",
    "per_token",
    "skip_layers",
    "other_encoders",
    "lens_pooled",
    "encoder",
    "text_from",
    "snapshot_every",
    "attention",
)


@dataclass(frozen=True)
class LensRun:
    """Everything a lens run needs, resolved and checked (build one with :meth:`Lens.resolve`)."""

    prompts: tuple[str, ...]
    layers: tuple[int, ...]
    seeds: tuple[int, ...]
    num_inference_steps: int
    guidance_scale: float
    negative_prompt: str | None  # None: the pipeline's own unconditional text
    height: int
    width: int
    final_norm: bool
    lens_negative: bool
    tokens: str
    per_token: bool
    skip_layers: tuple[int, ...]
    other_encoders: str
    lens_pooled: bool
    encoder: str  # the lensed text encoder (the component name)
    text_from: str | None  # cross-model lens: the model whose text encoder gives the embeddings
    snapshot_every: int | None
    attention: AttentionSettings | None  # capture the denoiser's text cross-attention (None: no capture)
    max_batch: int | None
    sequential: bool
    use_cache: bool
    # what the run was resolved against
    family: str
    num_layers: int
    images: int  # images the run makes: layers × seeds × prompts (× real tokens, per_token)
    normal_layer: int | None  # the layer whose image is the pipeline's own image under this run, if any
    single: bool = True  # one prompt given as a string: one result, not a list
    source: Any = field(default=None, compare=False, repr=False)  # text_from's adapter (None: the lens's own)

    @property
    def images_per_prompt(self) -> int:
        return len(self.layers) * len(self.seeds)

    def for_prompt(self, prompt: str) -> LensRun:
        """The same run for another prompt (checked as any prompt is): a sweep resolves once, then runs each."""
        if self.per_token:
            raise ValueError("a per-token run is resolved for its own prompt (its images depend on its tokens)")
        images = self.images_per_prompt
        return dataclasses.replace(self, prompts=tuple(validate.parse_prompts(prompt)), single=True, images=images)

    def replace(self, **changes) -> LensRun:
        """A variant of this run (the panels' final-norm ablation or lensed negative): only options whose value
        needs no resolution may change, and the pipeline's own image is no longer claimed for a changed run."""
        allowed = {"final_norm", "lens_negative", "snapshot_every", "use_cache", "max_batch"}
        unknown = sorted(set(changes) - allowed)
        if unknown:
            raise TypeError(
                f"a resolved run can only vary {', '.join(sorted(allowed))}; resolve again to change "
                f"{', '.join(unknown)}"
            )
        for name in ("final_norm", "lens_negative", "use_cache"):
            if name in changes:
                validate.check_flag(name, changes[name])
        for name in ("snapshot_every", "max_batch"):
            if name in changes:
                validate.check_positive_int(name, changes[name])
        changed = {k: v for k, v in changes.items() if getattr(self, k) != v}
        normal = None if {"final_norm", "lens_negative"} & set(changed) else self.normal_layer
        return dataclasses.replace(self, **changes, normal_layer=normal)

    def options(self) -> dict:
        """The options that decide the images, as plain values (lists for sequences), keyed as ``params`` is."""
        return {name: _plain(getattr(self, name)) for name in OPTION_FIELDS}

    def params(self) -> dict:
        """The resolved parameters as ``Lens.run(..., dry_run=True)`` has always returned them."""
        return {
            **self.options(),
            "layers": list(self.layers),
            "seeds": list(self.seeds),
            "skip_layers": self.skip_layers,
            "family": self.family,
            "num_layers": self.num_layers,
            "sequential": self.sequential,
        }

    def describe(self) -> dict:
        """JSON-ready description (what a sweep's manifest compares on resume)."""
        return {
            **self.options(),
            "family": self.family,
            "num_layers": self.num_layers,
            "normal_layer": self.normal_layer,
        }


def _plain(value):
    if isinstance(value, AttentionSettings):
        return {k: _plain(v) for k, v in dataclasses.asdict(value).items()}
    return list(value) if isinstance(value, tuple) else value
