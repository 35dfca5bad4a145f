"""Raw vs tuned: load a fine-tuned variant of a base pipeline and lens both with identical seeds, layers and noise.

A tuned variant can be a whole fine-tuned pipeline, fine-tuned components (a text encoder and/or UNet folder),
LoRA weights (loaded by diffusers' ``load_lora_weights`` through peft) or textual-inversion embeddings (diffusers'
``load_textual_inversion``). LoRA and textual inversion are applied to *copies* of the modules they change, so the
base pipeline is never modified and both can be lensed side by side.
"""

from __future__ import annotations

import copy
import importlib.util
import inspect
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ..core.engine import Lens, ProgressCallback, share_progress
from ..core.models import PICKLE_SUFFIXES, pickle_refusal
from ..core.results import LensResult

WHAT_WE_LOAD = (
    "a diffusers pipeline folder (model_index.json), a folder with text_encoder/ and/or unet/ (or transformer/) "
    "subfolders, a text-encoder, UNet or transformer folder (config.json + weights), LoRA weights "
    "(pytorch_lora_weights.safetensors or a .safetensors file of lora_A/lora_B tensors), or textual-inversion "
    "embeddings (learned_embeds.safetensors)"
)


# ---------------------------------------------------------------------------------------------------------------
# Architecture check
# ---------------------------------------------------------------------------------------------------------------
def _signature(pipe) -> dict:
    from ..adapters import adapter_for

    return adapter_for(pipe).signature()


def check_compatible(base, tuned) -> None:
    """Raise ValueError naming every difference when ``tuned`` is not the same architecture as ``base``.

    Raw vs tuned compares the same layers under the same noise, so the text encoders must have the same depth and
    width and the UNets must accept the same latents and conditioning. Vocabulary size may differ (textual
    inversion adds tokens).
    """
    ours, theirs = _signature(base), _signature(tuned)
    diffs = [f"{key}: base {ours[key]}, tuned {theirs[key]}" for key in ours if ours[key] != theirs[key]]
    if diffs:
        raise ValueError(
            "the tuned model does not have the base model's architecture, so raw vs tuned cannot "
            "compare them layer by layer (" + "; ".join(diffs) + ")"
        )


# ---------------------------------------------------------------------------------------------------------------
# Loading a tuned variant
# ---------------------------------------------------------------------------------------------------------------
def derived_pipeline(base, **replace):
    """A new pipeline of the base's class sharing every component except ``replace`` (and its own scheduler, so
    runs of base and variant never share scheduler state)."""
    components = {**base.components, "scheduler": type(base.scheduler).from_config(base.scheduler.config), **replace}
    extra = {}
    if "requires_safety_checker" in inspect.signature(type(base).__init__).parameters:
        extra["requires_safety_checker"] = bool(base.config.get("requires_safety_checker", False))
    pipe = type(base)(**components, **extra)
    pipe.set_progress_bar_config(**getattr(base, "_progress_bar_config", {}))
    return pipe


def _safetensors_keys(path: Path) -> list[str]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return list(f.keys())


def _is_lora_file(path: Path) -> bool:
    return path.suffix == ".safetensors" and any("lora" in k for k in _safetensors_keys(path))


def _kind_of(path: Path) -> tuple[str, Path]:
    """What a path holds: ("pipeline" | "components" | "text_encoder" | "unet" | "lora" | "textual_inversion")."""
    if path.is_file():
        if path.suffix.lower() in PICKLE_SUFFIXES:
            raise ValueError(f"{path}: {pickle_refusal('a tuned model')}")
        if _is_lora_file(path):
            return "lora", path
        if path.suffix == ".safetensors":
            return "textual_inversion", path
    elif path.is_dir():
        if (path / "model_index.json").exists():
            return "pipeline", path
        if any((path / sub / "config.json").exists() for sub in TUNABLE):
            return "components", path
        config = path / "config.json"
        if config.exists():
            import json

            spec = json.loads(config.read_text())
            if "UNet" in str(spec.get("_class_name", "")):
                return "unet", path
            if "Transformer" in str(spec.get("_class_name", "")):
                return "transformer", path
            if any("TextModel" in a for a in spec.get("architectures", [])):
                return "text_encoder", path
        for name in ("pytorch_lora_weights.safetensors", "learned_embeds.safetensors"):
            if (path / name).exists():
                return ("lora" if "lora" in name else "textual_inversion"), path / name
        loras = [f for f in sorted(path.glob("*.safetensors")) if _is_lora_file(f)]
        if loras:
            return "lora", loras[0]
        if any(f.suffix.lower() in PICKLE_SUFFIXES for f in path.iterdir()):
            raise ValueError(f"{path}: {pickle_refusal('a tuned model')}")
    raise ValueError(f"{path} holds no tuned model this tool can load; expected {WHAT_WE_LOAD}")


TUNABLE = ("text_encoder", "text_encoder_2", "text_encoder_3", "unet", "transformer")  # diffusers' folder names


def _tunable(pipe) -> list[str]:
    """The components a fine-tune can change that this pipeline has (its adapter knows them)."""
    from ..adapters import adapter_for

    return adapter_for(pipe).tunable_components


def _load_module(folder: Path, like):
    """A component folder loaded with the class, device and dtype of the base's component ``like``."""
    from ..core.models import dtype_keyword

    if not any(folder.glob("*.safetensors")):
        raise ValueError(f"{folder}: {pickle_refusal('its weights')}")
    module = type(like).from_pretrained(folder, use_safetensors=True, **{dtype_keyword(type(like)): like.dtype})
    return module.to(like.device).eval()


def load_tuned(base, source, *, lora_scale: float = 1.0, token: str | None = None):
    """A fine-tuned variant of ``base`` (a pipeline, or anything :func:`load_pipeline` accepts), ready to compare.

    ``source`` is a pipeline object or a path holding one of: a pipeline folder; ``text_encoder/`` and/or
    ``unet/`` subfolders; a single text-encoder or UNet folder; LoRA weights (scaled by ``lora_scale``; 0 gives
    back the base's behaviour); textual-inversion embeddings (``token`` names the new token when the file does
    not). The base is never modified. Raises ValueError when ``source`` holds none of these or has a different
    architecture than the base (checked before any run).
    """
    from ..core.models import load_pipeline

    if isinstance(base, (str, os.PathLike)):
        base = load_pipeline(base)
    if not isinstance(source, (str, os.PathLike)):
        tuned = load_pipeline(source)
        check_compatible(base, tuned)
        return tuned
    path = Path(source).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"no tuned model at {path}; expected {WHAT_WE_LOAD}")
    kind, target = _kind_of(path)
    if kind == "pipeline":
        tuned = load_pipeline(target, device=base.device, dtype=base.dtype)
    elif kind in ("components", "text_encoder", "unet", "transformer"):
        parts = _tunable(base) if kind == "components" else (kind,)
        replace = {}
        for part in parts:
            folder = target / part if kind == "components" else target
            if (folder / "config.json").exists():
                replace[part] = _load_module(folder, getattr(base, part))
        tuned = derived_pipeline(base, **replace)
    elif kind == "lora":
        if importlib.util.find_spec("peft") is None:
            raise ImportError(
                f"{target} holds LoRA weights, which diffusers loads through peft: "
                "pip install 'difflens-widgets[lora]' (or pip install peft)"
            )
        tuned = derived_pipeline(base, **{name: copy.deepcopy(getattr(base, name)) for name in _tunable(base)})
        tuned.load_lora_weights(str(target.parent), weight_name=target.name, adapter_name="tuned")
        tuned.set_adapters(["tuned"], adapter_weights=[float(lora_scale)])
    else:
        tuned = derived_pipeline(
            base, tokenizer=copy.deepcopy(base.tokenizer), text_encoder=copy.deepcopy(base.text_encoder)
        )
        tuned.load_textual_inversion(str(target), token=token)
    check_compatible(base, tuned)
    return tuned


# ---------------------------------------------------------------------------------------------------------------
# Comparing
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class Comparison:
    """Two lens runs with identical prompt, seeds, layers and initial noise: ``raw`` and ``tuned``."""

    raw: LensResult
    tuned: LensResult

    @property
    def layers(self) -> list[int]:
        return self.raw.layers

    @property
    def seeds(self) -> list[int]:
        return self.raw.seeds

    @property
    def complete(self) -> bool:
        return self.raw.complete and self.tuned.complete

    def pair(self, layer: int, seed: int | None = None) -> tuple[Image.Image, Image.Image]:
        return self.raw.image(layer, seed), self.tuned.image(layer, seed)

    def pairs(self) -> list[tuple[int, int, Image.Image, Image.Image]]:
        """(layer, seed, raw image, tuned image) for every pair both runs finished."""
        return [
            (l, s, self.raw.images[(l, s)], self.tuned.images[(l, s)])
            for (l, s) in sorted(self.raw.images)
            if (l, s) in self.tuned.images
        ]

    def difference(self, layer: int, seed: int | None = None) -> np.ndarray:
        """|raw − tuned| per pixel and channel, float32 in 0..255."""
        raw, tuned = self.pair(layer, seed)
        return np.abs(np.asarray(raw, dtype=np.float32) - np.asarray(tuned, dtype=np.float32))

    def difference_image(self, layer: int, seed: int | None = None, gain: float = 4.0) -> Image.Image:
        """The difference as an image, amplified by ``gain`` so small changes show."""
        return Image.fromarray(np.clip(self.difference(layer, seed) * gain, 0, 255).astype(np.uint8))

    def mean_difference(self) -> dict[tuple[int, int], float]:
        """Mean absolute pixel difference (0..255) per (layer, seed): where in depth tuning changes the image."""
        return {(l, s): float(self.difference(l, s).mean()) for l, s, _, _ in self.pairs()}

    def token_shift(self):
        """cos(raw, tuned) lens embedding per token and layer (see :func:`similarity.raw_tuned_similarity`)."""
        from .similarity import Similarity, _labels, raw_tuned_similarity, shown_positions

        sims, _, layers = raw_tuned_similarity(self.raw, self.tuned)
        labels = _labels(self.raw.tokens, shown_positions(self.raw.tokens, self.raw))
        return Similarity(sims, layers, labels, f"raw vs tuned per token: {self.raw.prompt!r}", "cos raw↔tuned")

    def grid(self) -> Image.Image:
        """Rows per seed: raw, tuned and |raw − tuned| (a viridis heatmap on one scale for the whole comparison, as
        the dashboard shows it); columns: layers."""
        from .panels import Panel, difference_panel, panels_grid

        if not self.pairs():
            raise ValueError("this comparison holds no finished pair of images")
        return panels_grid(
            [Panel("raw", "raw", self.raw), Panel("tuned", "tuned", self.tuned), difference_panel(self.raw, self.tuned)]
        )


def compare(raw, tuned, prompt: str, *, progress: ProgressCallback | None = None, **lens_options) -> Comparison:
    """Lens ``prompt`` on ``raw`` and ``tuned`` (pipelines, ``Lens`` objects or model names) with identical seeds,
    layers and initial noise. ``lens_options`` are :meth:`Lens.run`'s; ``progress`` sees one run of twice the
    length. When the raw run is cancelled, the tuned one is not started (its result is then empty)."""
    if not isinstance(prompt, str):
        raise TypeError(f"compare takes one prompt string, not {type(prompt).__name__}")
    raw_lens, tuned_lens = Lens.of(raw), Lens.of(tuned)
    check_compatible(raw_lens.pipe, tuned_lens.pipe)

    run = raw_lens.resolve(prompt, **lens_options)  # once: the tuned model runs the very same run
    raw_result = raw_lens.execute(run, share_progress(progress, 0, 2))
    if not raw_result.complete:
        empty = LensResult(
            prompt,
            raw_result.layers,
            raw_result.seeds,
            {},
            {},
            raw_result.tokens,
            dict(raw_result.params),
            complete=False,
        )
        return Comparison(raw_result, empty)
    return Comparison(raw_result, tuned_lens.execute(run, share_progress(progress, 1, 2)))
