"""Parsing and validation of the lens's user-facing options.

Everything here runs before any model is touched, so a bad argument costs nothing and its message can say exactly
what was wrong and what is allowed.
"""

from __future__ import annotations

import math
import numbers
import unicodedata
from collections.abc import Iterable, Sequence
from typing import TypeGuard

MAX_SEED = 2**32  # torch's CPU generator keeps 32 bits of a seed: 0 and 2**32 would draw the same noise
MAX_STEPS = 1000  # the noise schedules of every supported family have 1,000 training timesteps
MAX_SIDE = 4096  # pixels; beyond this no supported model was trained, and one image no longer fits a GPU
MAX_IMAGES = 4096  # images of one run (layers × seeds × prompts, × tokens per token, × panels side by side)
MAX_GUIDANCE = 100.0  # published scales are 1-20; far above, the guided step overflows (1e20 gives NaN images)
MAX_PIXELS = MAX_IMAGES * 1024 * 1024  # and their pixels together: 4096 one-megapixel images, or 16 at 16 MP

LayerSpec = None | int | str | range | Sequence[int]
SeedSpec = int | str | Iterable[int]


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def parse_layers(spec: LayerSpec, num_layers: int) -> list[int]:
    """Turn a layer spec into a sorted list of ``hidden_states`` indices in ``0..num_layers``.

    ``None`` is every layer; an int, a list or a ``range`` name layers exactly (negative ints count from the end, as
    in Python); a string is either a comma list (``"0,3,6"``) or a Python slice over ``0..L`` (``"0:12:2"``,
    ``"::2"``, ``"-4:"``), which, like any slice, stops at the last layer.
    """
    valid = f"valid layers for this model are 0..{num_layers} (0 = token embeddings, {num_layers} = last block)"
    if spec is None:
        return list(range(num_layers + 1))
    if isinstance(spec, str):
        text = spec.strip()
        if ":" in text:
            parts = text.split(":")
            if len(parts) > 3:
                raise ValueError(f"layer slice {spec!r} has too many ':'; use start:stop[:step]")
            try:
                bounds = [int(p) if p.strip() else None for p in parts]
            except ValueError:
                raise ValueError(f"layer slice {spec!r} must hold integers, like '0:12:2'; {valid}") from None
            if len(bounds) == 3 and bounds[2] == 0:
                raise ValueError(f"layer slice {spec!r} has step 0")
            chosen = list(range(num_layers + 1))[slice(*bounds)]
            if not chosen:
                raise ValueError(f"layer slice {spec!r} selects no layer; {valid}")
            return chosen
        try:
            spec = [int(p) for p in text.split(",") if p.strip()]
        except ValueError:
            raise ValueError(f"layers {spec!r} must be integers, a comma list or a slice like '0:12:2'") from None
    if _is_int(spec):
        spec = [spec]
    if not isinstance(spec, (list, tuple, range)) and not hasattr(spec, "__iter__"):
        raise TypeError(f"layers must be None, an int, a list, a range or a string, not {type(spec).__name__}")
    layers = list(spec)
    if not layers:
        raise ValueError(f"no layers given; {valid}")
    resolved = []
    for layer in layers:
        if not _is_int(layer):
            raise TypeError(f"layer {layer!r} is not an integer; {valid}")
        index = int(layer) + (num_layers + 1 if layer < 0 else 0)
        if not 0 <= index <= num_layers:
            raise ValueError(f"layer {layer} is out of range; {valid}")
        resolved.append(index)
    return sorted(set(resolved))


def parse_seeds(spec: SeedSpec) -> list[int]:
    """One seed or several, as ints ≥ 0 (``"0,1,2"`` is accepted for command lines)."""
    if isinstance(spec, str):
        try:
            spec = [int(p) for p in spec.split(",") if p.strip()]
        except ValueError:
            raise TypeError(f"seeds {spec!r} must be integers separated by commas, like '0,1,2'") from None
    if _is_int(spec):
        spec = [spec]
    if not isinstance(spec, Iterable):
        raise TypeError(f"seeds must be an int or a list of ints, not {type(spec).__name__}")
    seeds = list(spec)
    if not seeds:
        raise ValueError("no seeds given; pass one seed (an int) or a list of ints")
    for seed in seeds:
        if not _is_int(seed):
            raise TypeError(f"seed {seed!r} is not an integer; seeds must be ints ≥ 0")
        if not 0 <= seed < MAX_SEED:
            raise ValueError(
                f"seed {seed} is out of range; seeds must be ints in 0..{MAX_SEED - 1} (torch's CPU "
                "generator keeps 32 bits, so larger seeds would repeat the noise of smaller ones)"
            )
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds {seeds} repeat a seed; each seed must appear once")
    return [int(s) for s in seeds]


def parse_prompts(prompt: str | Sequence[str]) -> list[str]:
    if isinstance(prompt, str):
        prompts = [prompt]
    elif isinstance(prompt, Sequence):
        prompts = list(prompt)
        if not prompts:
            raise ValueError("the prompt list is empty; pass a string or a list of one or more strings")
    else:
        raise TypeError(f"prompt must be a string or a list of strings, not {type(prompt).__name__}")
    for p in prompts:
        if not isinstance(p, str):
            raise TypeError(f"prompt {p!r} is not a string")
        control = sorted({f"U+{ord(c):04X}" for c in p if unicodedata.category(c) == "Cc" and c not in "\t\n\r"})
        if control:
            raise ValueError(
                f"prompt {short(p)} holds control characters ({', '.join(control)}); "
                "remove them (tabs and newlines are fine)"
            )
        if not "".join(c for c in p if unicodedata.category(c) not in ("Cf", "Zs", "Zl", "Zp")).strip():
            raise ValueError(
                "a prompt is empty (or only spaces / invisible characters); the lens needs some text to look at"
            )
    return prompts


def short(text: str, limit: int = 60) -> str:
    """``repr`` of ``text`` cut to ``limit`` characters, for error messages about long inputs."""
    return repr(text if len(text) <= limit else text[:limit] + "…")


def check_work(images: int, height: int, width: int, counted: str = "layers × seeds × prompts") -> None:
    """Refuse a run of more than :data:`MAX_IMAGES` images, or of more than :data:`MAX_PIXELS` pixels in all, before
    any model work: the one cap every surface goes through (``counted`` says what was multiplied)."""
    if images > MAX_IMAGES:
        raise ValueError(
            f"this run asks for {images} images ({counted}); one run is limited to "
            f"{MAX_IMAGES}: split the seeds or layers over several runs"
        )
    if images * height * width > MAX_PIXELS:
        raise ValueError(
            f"this run asks for {images} images of {width}×{height} pixels ({images * height * width / 1e9:.1f} "
            f"gigapixels); one run is limited to {MAX_PIXELS / 1e9:.1f} gigapixels (e.g. {MAX_IMAGES} images of "
            "1024×1024): fewer images, or smaller ones"
        )


def check_flag(name: str, value: object, allow_none: bool = False) -> bool | None:
    """A real boolean (``"no"`` would otherwise count as True)."""
    if value is None and allow_none:
        return None
    if not isinstance(value, bool):
        allowed = "True, False or None" if allow_none else "True or False"
        raise TypeError(f"{name} must be {allowed}, got {value!r}")
    return value


def check_callback(name: str, value: object):
    if value is not None and not callable(value):
        raise TypeError(f"{name} must be a function (or None), got {type(value).__name__}")
    return value


def check_steps(steps: object) -> int:
    if not _is_int(steps):
        raise TypeError(f"num_inference_steps must be an integer ≥ 1, got {steps!r}")
    if not 1 <= steps <= MAX_STEPS:
        raise ValueError(f"num_inference_steps must be in 1..{MAX_STEPS}, got {steps}")
    return int(steps)


def check_guidance(guidance: object) -> float:
    if not isinstance(guidance, numbers.Real) or isinstance(guidance, bool):
        raise TypeError(f"guidance_scale must be a number ≥ 0, got {guidance!r}")
    guidance = float(guidance)
    if not math.isfinite(guidance) or not 0 <= guidance <= MAX_GUIDANCE:
        raise ValueError(
            f"guidance_scale must be a number in 0..{MAX_GUIDANCE:g} (≤ 1 turns classifier-free guidance off; "
            f"published models use 1-20), got {guidance:g}"
        )
    return guidance


def check_size(name: str, value: object, multiple: int) -> int:
    if not _is_int(value):
        raise TypeError(f"{name} must be an integer number of pixels, got {value!r}")
    if value <= 0 or value % multiple or value > MAX_SIDE:
        raise ValueError(
            f"{name}={value} must be a positive multiple of {multiple} for this pipeline, at most {MAX_SIDE}"
        )
    return int(value)


def check_positive_int(name: str, value: object, allow_none: bool = True) -> int | None:
    if value is None and allow_none:
        return None
    if not _is_int(value) or value < 1:
        raise ValueError(f"{name} must be an integer ≥ 1{' or None' if allow_none else ''}, got {value!r}")
    return int(value)


def parse_indices(name: str, spec: object, upper: int | None = None, lower: int = 0) -> tuple[int, ...] | None:
    """None (all), or integers from an int, a list or a string ("0,2,4" or a slice "0:10:2" when ``upper`` is
    known), each in ``lower..upper-1``."""
    if spec is None or (isinstance(spec, str) and not spec.strip()):
        return None
    if isinstance(spec, str) and ":" in spec:
        if upper is None:
            raise ValueError(f"{name} {spec!r}: a slice needs a known length; list the values, like '8,16'")
        try:
            values = list(range(upper))[slice(*[int(p) if p.strip() else None for p in spec.split(":")])]
        except (ValueError, TypeError):
            raise ValueError(f"{name} {spec!r} must be integers or a slice like '0:10:2'") from None
    else:
        if isinstance(spec, str):
            try:
                spec = [int(p) for p in spec.split(",") if p.strip()]
            except ValueError:
                raise ValueError(f"{name} {spec!r} must be integers separated by commas") from None
        listed = [spec] if _is_int(spec) else list(spec) if isinstance(spec, Iterable) else None
        if listed is None or not all(_is_int(v) for v in listed):
            raise TypeError(f"{name} must be None, an int, a list of ints or a string, got {spec!r}")
        values = listed
    bound = f"{lower}..{upper - 1}" if upper is not None else f"≥ {lower}"
    bad = [v for v in values if v < lower or (upper is not None and v >= upper)]
    if bad or not values:
        raise ValueError(f"{name} {spec!r}: every value must be in {bound}" + (f" ({bad} are not)" if bad else ""))
    return tuple(sorted(set(int(v) for v in values)))


TOKEN_RANGES = ("all", "prompt", "padding")
OTHER_ENCODERS = ("empty", "normal")


def check_choice(name: str, value: object, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(repr(a) for a in allowed)}, got {value!r}")
    return str(value)


def parse_skip_layers(spec: object, num_layers: int) -> tuple[int, ...]:
    """Block numbers 1..L to bypass (block l turns h^(l-1) into h^l; bypassed, h^l = h^(l-1))."""
    if spec is None:
        return ()
    if _is_int(spec):
        spec = [spec]
    if isinstance(spec, str):
        try:
            spec = [int(p) for p in spec.split(",") if p.strip()]
        except ValueError:
            raise ValueError(f"skip_layers {spec!r} must be block numbers like '3,4'") from None
    if not isinstance(spec, Iterable):
        raise TypeError(f"skip_layers must be a block number or a list of them, not {type(spec).__name__}")
    blocks = list(spec)
    for block in blocks:
        if not _is_int(block):
            raise TypeError(f"skip_layers entry {block!r} is not an integer")
        if not 1 <= block <= num_layers:
            raise ValueError(
                f"skip_layers entry {block} is out of range: blocks are numbered 1..{num_layers} "
                f"(block l produces hidden_states[l]; 0 is the embedding layer and cannot be skipped)"
            )
    return tuple(sorted(set(blocks)))
