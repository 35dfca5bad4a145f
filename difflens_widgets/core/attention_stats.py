"""Numbers from a word's cross-attention map, for tables and sweeps (the maps themselves: ``LensResult.attention``).

For one (layer, seed) image and one word of the prompt:

- ``share``: the word's part of the text attention the image's queries gave, averaged over the captured steps (the
  pieces of a word add up; the start token usually takes most of it, as in every CLIP-conditioned model);
- ``peak`` and ``centroid``: where the map is highest and its centre of mass, as fractions of the image's width and
  height (0 = left/top, 1 = right/bottom);
- ``spread``: how far the map's mass lies from its centroid (root mean square distance, in image sides): small
  when a word lands on one place, 0.41 for a flat map;
- ``inside`` (when a region is given, e.g. the annotator's blob for the object the word names): the share of the
  map's mass inside that region, and ``peak_inside``: whether the peak is.

Centroid, spread and inside are taken on the map min-max normalised (DAAM's ``expand_image``): a word's raw map is
mostly an even floor (every query gives every token something), which would pull every centroid to the middle.
"""

from __future__ import annotations

import math

import numpy as np

from .results import LensResult, shown_span, token_positions, word_spans

FLAT_SPREAD = math.sqrt(1 / 6)  # the spread of a uniform map over the unit square: √(1/12 + 1/12)


def prompt_words(result: LensResult) -> list[str]:
    """The words of the prompt as the maps know them (start, end and padding tokens left out), first occurrences."""
    seen: list[str] = []
    for word, _positions in word_spans(result.tokens, shown_span(result.tokens, result.params)):
        special = word.startswith("<") and word.endswith(">")
        if not special and word and word.lower() not in seen:
            seen.append(word.lower())
    return seen


def map_stats(heat: np.ndarray, region: np.ndarray | None = None) -> dict:
    """``peak``, ``centroid`` and ``spread`` of one map (any 2-D grid; values clamped at 0, its floor taken off), and,
    for a boolean ``region`` of the same shape, ``inside`` and ``peak_inside``."""
    heat = np.clip(np.asarray(heat, np.float64), 0, None)
    heat = heat - heat.min()  # the floor every position gets (then scaled to 1 at the peak: the weights below)
    height, width = heat.shape
    ys, xs = (np.arange(height) + 0.5) / height, (np.arange(width) + 0.5) / width
    total = heat.sum()
    weights = heat / total if total > 0 else np.full(heat.shape, 1 / heat.size)
    cx, cy = float((weights.sum(axis=0) * xs).sum()), float((weights.sum(axis=1) * ys).sum())
    spread = float(np.sqrt((weights * ((xs[None, :] - cx) ** 2 + (ys[:, None] - cy) ** 2)).sum()))
    py, px = np.unravel_index(int(np.argmax(heat)), heat.shape)
    out = {
        "peak": [round(float(xs[px]), 4), round(float(ys[py]), 4)],
        "centroid": [round(cx, 4), round(cy, 4)],
        "spread": round(spread, 4),
    }
    if region is not None:
        region = np.asarray(region, bool)
        if region.shape != heat.shape:
            raise ValueError(f"the region is {region.shape}, the map {heat.shape}: give one of the image's size")
        out["inside"] = round(float(weights[region].sum()), 4)
        out["peak_inside"] = bool(region[py, px])
    return out


def word_stats(
    result: LensResult, layer: int, seed: int, regions: dict[str, np.ndarray] | None = None
) -> dict[str, dict]:
    """Every prompt word's numbers at ``layer`` and ``seed`` (see the module docstring); ``regions`` maps a word
    to a boolean mask of the image's size (e.g. ``{"red": the red blob}``) for ``inside`` and ``peak_inside``."""
    if not result.attention_maps:
        raise ValueError("this result has no attention maps: run the lens with attention=True")
    regions = {k.lower(): v for k, v in (regions or {}).items()}
    mass = result.attention_mass.get((layer, seed))
    stats = {}
    for word in prompt_words(result):
        entry = map_stats(result.attention(layer, word, seed), regions.get(word))
        if mass is not None:  # per step: the word's part of what every text token received
            word_mass = mass[:, token_positions(result.tokens, word)].sum(axis=1)
            entry["share"] = round(float((word_mass / np.maximum(mass.sum(axis=1), 1e-12)).mean()), 5)
        stats[word] = entry
    return stats
