"""Per-family knowledge lives here and only here. ``adapter_for(pipe)`` picks the adapter of a pipeline.

Each family adapter is a :class:`~.lens.LensAdapter` (the text side: encoders, the lens, the conditioning) and a
:class:`~.denoising.DenoiserTaps` (the denoiser side: blocks and noising, for the feature taps)."""

from __future__ import annotations

from .chroma import ChromaAdapter
from .cogview4 import CogView4Adapter
from .deepfloyd_if import DeepFloydIFAdapter
from .family import FamilyAdapter
from .flux import FluxAdapter
from .flux2 import Flux2Adapter, Flux2KleinAdapter
from .hidream import HiDreamAdapter
from .lens import EncodedPrompts, LensAdapter, denoiser_of
from .lumina2 import Lumina2Adapter
from .pixart import PixArtAdapter
from .qwen_image import QwenImageAdapter
from .sana import SanaAdapter
from .sd3 import StableDiffusion3Adapter
from .sdxl import StableDiffusionXLAdapter
from .stable_diffusion import StableDiffusionAdapter
from .z_image import ZImageAdapter

ADAPTERS: list[type[FamilyAdapter]] = [
    StableDiffusionAdapter,
    StableDiffusionXLAdapter,
    StableDiffusion3Adapter,
    FluxAdapter,
    ChromaAdapter,
    Flux2KleinAdapter,
    Flux2Adapter,
    PixArtAdapter,
    DeepFloydIFAdapter,
    ZImageAdapter,
    QwenImageAdapter,
    Lumina2Adapter,
    SanaAdapter,
    CogView4Adapter,
    HiDreamAdapter,
]


def supported_families() -> str:
    return "; ".join(f"{a.family}: {a.description}" for a in ADAPTERS)


def adapter_class_for(pipeline_class: str) -> type[FamilyAdapter] | None:
    """The adapter of a diffusers pipeline class name (as in a folder's ``model_index.json``), or None; lets
    ``load_pipeline`` choose a family's precision before any weight is read."""
    return next((a for a in ADAPTERS if pipeline_class in a.pipeline_classes), None)


def adapter_for(pipe, encoder: str | None = None) -> FamilyAdapter:
    """The adapter that understands ``pipe`` (lensing ``encoder``, default: the family's main one), or a
    ValueError/TypeError listing what is supported."""
    if not hasattr(pipe, "components"):
        raise TypeError(
            f"expected a diffusers pipeline, got {type(pipe).__name__}; load one with dl.load_pipeline(...)"
        )
    for adapter in ADAPTERS:
        if adapter.matches(pipe):
            return adapter(pipe, encoder)
    raise ValueError(f"{type(pipe).__name__} is not a supported pipeline family yet. Supported: {supported_families()}")


__all__ = [
    "ADAPTERS",
    "FamilyAdapter",
    "EncodedPrompts",
    "LensAdapter",
    "adapter_class_for",
    "adapter_for",
    "denoiser_of",
    "supported_families",
]
