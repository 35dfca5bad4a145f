"""The annotator: what shapes an image of the shapes world shows, their colours and positions.

Built to judge the toy model's *generated* images, which are softer than renders: faded, blurred, sometimes
touching, sometimes a tinted noise field with no shape at all. Each step can be explained:

1. the background colour is the median of the border pixels; pixels far from it are paint;
2. paint is split into 4-connected blobs; a blob whose strongly painted pixels fall into two world colours whose
   centres lie apart (two touching shapes) is split by colour; specks are dropped;
3. a blob's colour is the world colour that best explains its median pixel as ``background + s · (colour −
   background)`` with a fade ``s`` — so a faded red stays red instead of turning pink. Colour names are categories,
   so a name may have more than one prototype (:data:`SHADES`: the magenta in which models paint "purple" is still
   purple to a person). A blob no colour explains, or too faint, too large, too ragged or too hazy (paint fading
   out from a peak instead of a solid fill) to be a drawn shape, is noise and not reported; so is everything in a
   *noise field* — an image whose border is itself mostly paint, with paint over much of the frame (what T5's
   unnormalised states make the toy-t5 draw): with no background there is no shape on it, whatever blobs the noise
   happens to form;
4. its shape comes from a tiny CNN (:mod:`.shape_classifier`) trained on renders passed through the toy VAE's round
   trip and softened, reading the blob's soft paint mask in a square window (aspect ratio kept: diamond vs square).
   Below :data:`SHAPE_CONFIDENCE` the blob is reported as a ``"blob"``: its colour counts, no shape does — as a
   person would say "there is something red, I cannot tell what".

How far to trust it on generated images is measured, not assumed: ``toy/handchecked/`` holds generated images
labelled by eye, and ``python -m difflens_widgets.studies.handcheck agreement`` re-measures the annotator against them.

``ask(image, "is the red triangle above the blue circle?")`` answers the paper's questions, and
:func:`judge` scores an image against a caption (objects / colours / both / relation), which is what the emergence
report counts.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

import numpy as np
from PIL import Image

from . import shape_classifier
from .language import ParsedCaption, caption_parser
from .world import BACKGROUND, COLORS, INVERSE_RELATION, RELATIONS, SHAPES, SIZES, satisfies

FOREGROUND_DISTANCE = 55.0  # RGB distance from the background that counts as paint
CORE_PAINT = 0.6  # a blob's "core": pixels painted at least this share of its strongest pixel
# Blobs smaller than this share of the image are specks (41 px at 64×64): about half the world's smallest shape
# (a small star, 79 px). Chosen in-sample on the three hand-labelled sets: every named detection under 45 px was
# wrong (8 specks, ≤ 39 px, at no-norm late layers) and the smallest right one covered 49 px.
MIN_AREA_FRACTION = 0.01
MAX_AREA_FRACTION = 0.16  # a large star at 64×64 covers < 9%; a blob over 16% is a wash of colour, not a shape
MIN_FADE = 0.4  # weaker than 40% of a world colour's saturation: a tint, not a drawn shape
MIN_PAINT = 65.0  # and its core at least this far (RGB) from the background: pink is near the background, so 40%
#                  of pink alone is a faint blush
COLOR_RESIDUAL = 0.35  # RGB distance left after the best colour × fade, as a share of the paint's distance from the
#                       background: more means no world colour
MIN_SOLIDITY = 0.75  # mean paint / peak paint over the blob: drawn shapes are solid (≈ 0.9), hazes fade out (≈ 0.6)
MIN_FILL = 0.3  # blob area / bounding-box area; drawn shapes fill ≥ 0.4 (a star), ragged noise less
SPLIT_SHARE = 0.25  # the second colour must hold this share of the core for a blob to be two shapes
SPLIT_DISTANCE = 6.0  # pixels between the two colour groups' centres for a split
SHAPE_CONFIDENCE = 0.5  # the classifier's probability below which a blob has no nameable shape
NOISE_BORDER = 0.08  # a scene's border is background: when more of it than this is paint (and ...
NOISE_PAINT = 0.3  # ... more of the image than this), there is no background for a shape to stand on: a noise field
BLOB = "blob"


@dataclass(frozen=True)
class Blob:
    """A segmented blob before its shape is named: the classifier's input (``window``) and the rest."""

    color: str
    x: float  # centre, pixels
    y: float
    area: int
    fade: float
    window: np.ndarray
    mask: np.ndarray  # its pixels in the image (boolean, the image's size)


@dataclass(frozen=True)
class Detection:
    shape: str
    color: str
    x: float  # centre, pixels
    y: float
    area: int
    shape_score: float  # the classifier's probability of its best shape (``shape`` is "blob" below the threshold)

    @property
    def phrase(self) -> str:
        return f"{self.color} {self.shape}"


# Extra prototypes of a colour name: shades a person still calls by that name. They count only when saturated
# (fade ≥ SHADE_FADE): a faded magenta is pink, not purple.
SHADES: dict[str, tuple[tuple[int, int, int], ...]] = {"purple": ((190, 45, 150),), "pink": ((228, 105, 168),)}
SHADE_FADE = 0.8
_NAMES = list(COLORS) + [name for name, shades in SHADES.items() for _ in shades]
_PALETTE = np.array(
    [COLORS[n] for n in COLORS] + [rgb for shades in SHADES.values() for rgb in shades], dtype=np.float32
)


def border_of(array: np.ndarray) -> np.ndarray:
    """The values along an image's four edges (pixels or mask entries), one after another."""
    return np.concatenate([array[0], array[-1], array[:, 0], array[:, -1]])


def background_of(pixels: np.ndarray) -> np.ndarray:
    """The image's background colour: the median of its border pixels (shapes never touch the border)."""
    return np.median(border_of(pixels), axis=0)


def _explain(offsets: np.ndarray, background: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For N pixel offsets from the background: best colour index, fade and residual of each (see explain_color)."""
    directions = _PALETTE - background
    fades = np.clip(offsets @ directions.T / (directions * directions).sum(1), 0.0, 1.3)  # N × colours
    residuals = np.linalg.norm(offsets[:, None, :] - fades[..., None] * directions[None], axis=-1)
    residuals[:, len(COLORS) :][fades[:, len(COLORS) :] < SHADE_FADE] = np.inf
    best = residuals.argmin(1)
    rows = np.arange(len(offsets))
    return best, fades[rows, best], residuals[rows, best]


_WORLD_BACKGROUND = np.array(BACKGROUND, np.float32)


def explain_color(rgb, background=_WORLD_BACKGROUND) -> tuple[str, float, float]:
    """(colour, fade, residual): the colour ``c`` and fade ``s`` with ``rgb ≈ background + s·(c − background)``.

    Distances in plain RGB call a faded red "pink" and a dark orange "red"; fitting the fade first compares hues.
    """
    offset = np.asarray(rgb, dtype=np.float32)[None] - background
    best, fade, residual = _explain(offset, background)
    return _NAMES[int(best[0])], float(fade[0]), float(residual[0])


def _components(mask: np.ndarray) -> list[np.ndarray]:
    """4-connected components of ``mask`` as index arrays (a plain flood fill; images are tiny)."""
    h, w = mask.shape
    labels = np.zeros((h, w), dtype=np.int32)
    found = []
    for start in zip(*np.nonzero(mask)):
        if labels[start]:
            continue
        label = len(found) + 1
        stack, members = [start], []
        labels[start] = label
        while stack:
            y, x = stack.pop()
            members.append((y, x))
            for ny, nx in ((y + 1, x), (y - 1, x), (y, x + 1), (y, x - 1)):
                if 0 <= ny < h and 0 <= nx < w and mask[ny, nx] and not labels[ny, nx]:
                    labels[ny, nx] = label
                    stack.append((ny, nx))
        found.append(np.array(members))
    return found


def _split_by_color(
    members: np.ndarray, pixels: np.ndarray, paint: np.ndarray, background: np.ndarray
) -> list[np.ndarray]:
    """One blob, or two when its core is two world colours whose centres lie apart (shapes that touch)."""
    ys, xs = members[:, 0], members[:, 1]
    strength = paint[ys, xs]
    core = strength >= CORE_PAINT * strength.max()
    names = np.array(_NAMES)[_explain(pixels[ys[core], xs[core]] - background, background)[0]]
    counts = sorted(((n, int((names == n).sum())) for n in set(names)), key=lambda kv: -kv[1])
    if len(counts) < 2 or counts[1][1] < SPLIT_SHARE * core.sum():
        return [members]
    first, second = counts[0][0], counts[1][0]
    centres = [members[core][names == n].mean(0) for n in (first, second)]
    if np.linalg.norm(centres[0] - centres[1]) < SPLIT_DISTANCE:
        return [members]
    targets = _PALETTE[[_NAMES.index(first), _NAMES.index(second)]] - background
    offsets = pixels[ys, xs] - background
    cos = (offsets @ targets.T) / (
        np.linalg.norm(offsets, axis=1, keepdims=True) * np.linalg.norm(targets, axis=1) + 1e-6
    )
    side = cos.argmax(1)
    parts = []
    for k in (0, 1):
        mask = np.zeros(paint.shape, bool)
        mask[ys[side == k], xs[side == k]] = True
        parts.extend(_components(mask))
    return parts


def is_noise_field(mask: np.ndarray) -> bool:
    """Whether a paint mask is a noise field rather than a scene: paint over the border *and* over much of the frame.

    Either alone is not enough — a shape cut off at the edge paints a little of the border, and a wash of colour
    behind a shape paints much of the frame with a clean border."""
    return bool(border_of(mask).mean() > NOISE_BORDER and mask.mean() > NOISE_PAINT)


def segment(image: Image.Image) -> list[Blob]:
    """The blobs of paint in ``image`` that could be drawn shapes (noise rejected), largest first."""
    pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
    background = background_of(pixels)
    paint = shape_classifier.paint_strength(pixels, background)
    mask = np.linalg.norm(pixels - background, axis=-1) > FOREGROUND_DISTANCE
    if is_noise_field(mask):
        return []
    size = mask.size
    blobs = []
    for component in _components(mask):
        for members in _split_by_color(component, pixels, paint, background):
            if not MIN_AREA_FRACTION * size <= len(members) <= MAX_AREA_FRACTION * size:
                continue
            ys, xs = members[:, 0], members[:, 1]
            if len(members) < MIN_FILL * (np.ptp(ys) + 1) * (np.ptp(xs) + 1):
                continue
            strength = paint[ys, xs]
            core = strength >= CORE_PAINT * strength.max()
            median = np.median(pixels[ys[core], xs[core]], axis=0)
            color, fade, residual = explain_color(median, background)
            distance = float(np.linalg.norm(median - background))
            if (
                fade < MIN_FADE
                or distance < MIN_PAINT
                or residual > COLOR_RESIDUAL * distance
                or strength.mean() < MIN_SOLIDITY * strength.max()
            ):
                continue
            own = np.zeros(mask.shape, bool)
            own[ys, xs] = True
            blobs.append(
                Blob(
                    color,
                    float(xs.mean()),
                    float(ys.mean()),
                    len(members),
                    fade,
                    shape_classifier.crop_window(paint, own),
                    own,
                )
            )
    return sorted(blobs, key=lambda b: -b.area)


def annotate(image: Image.Image) -> list[Detection]:
    """Every shape found in ``image``, largest first (shape ``"blob"`` where none can be named)."""
    return [detection for detection, _ in regions(image)]


def regions(image: Image.Image) -> list[tuple[Detection, np.ndarray]]:
    """:func:`annotate`'s detections with the pixels each covers (a boolean mask of the image's size): where a
    word's attention map should land."""
    blobs = segment(image)
    shapes = shape_classifier.classify([b.window for b in blobs])
    return [
        (
            Detection(
                shape if score >= SHAPE_CONFIDENCE and shape != shape_classifier.OTHER else BLOB,
                b.color,
                b.x,
                b.y,
                b.area,
                score,
            ),
            b.mask,
        )
        for b, (shape, score) in zip(blobs, shapes)
    ]


# ---------------------------------------------------------------------------------------------------------------
# Captions and questions
# ---------------------------------------------------------------------------------------------------------------
# The questions judge() answers — one home for every list of them (report, hand-check, sweeps, dashboards) — in the
# order they are shown, each with its short label and its rule, which the dashboard shows one click away.
QUESTIONS: dict[str, tuple[str, str]] = {
    "objects": ("obj", "the shapes drawn are the shapes named, no more and no fewer (a shape named twice, twice)"),
    "colors": ("col", "every colour the prompt names is there, on whatever shape"),
    "both": ("bind", "each named colour is on its own named shape (two objects: two different shapes)"),
    "relation": (
        "rel",
        "both objects are drawn and placed as named: from the first object's centre the second's "
        "lies in the named direction, along the axis that dominates (so 'left of' is not a mostly "
        "vertical arrangement)",
    ),
}


def question_specs() -> list[dict]:
    """The questions for a front-end: name, short label and rule."""
    return [{"name": name, "short": short, "rule": rule} for name, (short, rule) in QUESTIONS.items()]


parse_caption = caption_parser(COLORS, SHAPES)
parse_caption.__doc__ = """Parse a shapes-world caption ("a red triangle above a blue circle", "a cyan star under a red
square"): its (colour, shape) objects and its relation, whichever of the relation's phrases it uses."""


def _holds(a: Detection, b: Detection, relation: str) -> bool:
    """``a relation b`` on the centres, as the world draws it: the right direction along the relation's axis, and
    that axis dominating ("left of" is not a mostly vertical arrangement)."""
    return satisfies(a, b, relation)


def _find(detections: list[Detection], color: str | None, shape: str) -> list[Detection]:
    return [d for d in detections if d.shape == shape and (color is None or d.color == color)]


def judge(image_or_detections, caption: str) -> dict[str, bool]:
    """Score an image against a caption.

    Returns ``objects`` (the shapes drawn are exactly the shapes named, as many of each: an extra shape, such as
    the first object drawn twice at an early layer, is wrong; paint the annotator cannot call a shape is not
    counted), ``colors`` (every named colour is present, vacuously true when none is named), ``both`` (every named
    colour-shape pair is present, on distinct shapes) and, for relation captions, ``relation`` (both named objects
    present *and* in the named arrangement).
    """
    detections = image_or_detections if isinstance(image_or_detections, list) else annotate(image_or_detections)
    parsed = parse_caption(caption)
    shapes = [d.shape for d in detections]
    colors = [d.color for d in detections]
    out = {
        "objects": Counter(s for s in shapes if s != BLOB) == Counter(s for _, s in parsed.objects),
        "colors": all(c is None or c in colors for c, _ in parsed.objects),
    }
    (c1, s1), *rest = parsed.objects
    first = _find(detections, c1, s1)
    if rest:
        ((c2, s2),) = rest
        second = _find(detections, c2, s2)
        pairs = [(a, b) for a in first for b in second if a is not b]
        out["both"] = bool(pairs)
        if parsed.relation:
            out["relation"] = any(_holds(a, b, parsed.relation) for a, b in pairs)
    else:
        out["both"] = bool(first)
    return out


def word_regions(image_or_regions, caption: str) -> dict[str, np.ndarray]:
    """The pixels each object word of ``caption`` names in ``image``: a named object's colour word and shape word
    map to its blob (the largest detection of that colour and shape; else of that colour; else of that shape). A
    word naming two objects ("a red circle above a blue circle") or an object not drawn gets no region."""
    found = image_or_regions if isinstance(image_or_regions, list) else regions(image_or_regions)
    out: dict[str, np.ndarray] = {}
    named: dict[str, int] = {}
    for color, shape in parse_caption(caption).objects:
        for word in (color, shape):
            if word:
                named[word] = named.get(word, 0) + 1
        candidates = (
            [m for d, m in found if d.color == color and d.shape == shape]
            or [m for d, m in found if color and d.color == color]
            or [m for d, m in found if not color and d.shape == shape]
        )
        if candidates:  # regions() lists the largest first
            for word in (color, shape):
                if word:
                    out[word] = candidates[0]
    return {word: mask for word, mask in out.items() if named[word] == 1}


def judge_images(images: dict, caption: str) -> dict | None:
    """:func:`judge` of every image in ``{(layer, seed): image}``; None when ``caption`` is not a shapes-world
    caption (the annotator only knows this world)."""
    try:
        parse_caption(caption)
    except ValueError:
        return None
    return {key: judge(image, caption) for key, image in images.items()}


def emergence(verdicts: dict, layers: list[int]) -> dict[str, list[float | None]]:
    """Per question (objects, colors, both, relation), the share of seeds judged right at each layer: the prompt's
    own emergence curve (None where a layer has no judged image)."""
    questions = next(iter(verdicts.values()), {}).keys()
    curves = {}
    for question in questions:
        curve = []
        for layer in layers:
            marks = [v[question] for (l, _), v in verdicts.items() if l == layer]
            curve.append(round(sum(marks) / len(marks), 4) if marks else None)
        curves[question] = curve
    return curves


def relation_axis(image_or_detections, caption: str) -> bool | None:
    """For a relation caption whose two objects are drawn: do they stand on the relation's axis in *either* order?
    None when one is missing. Beside judge()'s ``relation`` it tells a model that has not learned the relation at
    all (wrong axis) from one that has the axis but not which named object goes where (word order bound to the
    objects: the part of a relation a model learns last)."""
    detections = image_or_detections if isinstance(image_or_detections, list) else annotate(image_or_detections)
    parsed = parse_caption(caption)
    if parsed.relation is None or len(parsed.objects) != 2:
        raise ValueError(f"relation_axis needs a caption naming two objects and a relation, got {caption!r}")
    (c1, s1), (c2, s2) = parsed.objects
    pairs = [(a, b) for a in _find(detections, c1, s1) for b in _find(detections, c2, s2) if a is not b]
    if not pairs:
        return None
    inverse = INVERSE_RELATION[parsed.relation]
    return any(_holds(a, b, parsed.relation) or _holds(a, b, inverse) for a, b in pairs)


def placement(image: Image.Image, caption: str, min_pixels: int = 12) -> dict[str, bool]:
    """A shape-blind check of a relation caption, for models too young to draw shapes: ``colours`` (each named
    colour explains at least ``min_pixels`` painted pixels) and ``placement`` (their centroids stand in the named
    relation, the world's rule). Training tracks it from the first steps; judge() needs recognisable shapes."""
    parsed = parse_caption(caption)
    colours = [c for c, _ in parsed.objects]
    if parsed.relation is None or len(colours) != 2 or not all(colours) or colours[0] == colours[1]:
        raise ValueError(f"placement needs a relation caption naming two different colours, got {caption!r}")
    pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
    background = background_of(pixels)
    offsets = (pixels - background).reshape(-1, 3)
    distance = np.linalg.norm(offsets, axis=1)
    best, fade, residual = _explain(offsets, background)
    painted = (distance > FOREGROUND_DISTANCE) & (fade >= MIN_FADE) & (residual <= COLOR_RESIDUAL * distance)
    names = np.array(_NAMES)[best]
    width = pixels.shape[1]
    centres = []
    for color, _ in parsed.objects:
        where = np.nonzero(painted & (names == color))[0]
        if len(where) < min_pixels:
            return {"colours": False, "placement": False}
        centres.append(Detection("", color, float((where % width).mean()), float((where // width).mean()), 0, 0.0))
    return {"colours": True, "placement": _holds(centres[0], centres[1], parsed.relation)}


_QUESTION_PRESENT = re.compile(r"^is there (?P<obj>.+?)\??$")
_QUESTION_RELATION = re.compile(rf"^is (?P<a>.+?) (?P<rel>{'|'.join(RELATIONS)}) (?P<b>.+?)\??$")


def ask(image_or_detections, question: str) -> bool:
    """Answer "is there a red triangle?" or "is the triangle above the blue circle?" about an image."""
    detections = image_or_detections if isinstance(image_or_detections, list) else annotate(image_or_detections)
    q = question.strip().lower()
    if m := _QUESTION_PRESENT.match(q):
        return judge(detections, m["obj"])["both"]
    if m := _QUESTION_RELATION.match(q):
        a = parse_caption(re.sub(r"^the ", "a ", m["a"])).objects[0]
        b = parse_caption(re.sub(r"^the ", "a ", m["b"])).objects[0]
        return any(_holds(x, y, m["rel"]) for x in _find(detections, *a) for y in _find(detections, *b) if x is not y)
    raise ValueError(
        f"cannot read the question {question!r}; ask 'is there a red triangle?' or "
        f"'is the triangle above the blue circle?' (relations: {', '.join(RELATIONS)})"
    )


__all__ = [
    "QUESTIONS",
    "Detection",
    "ParsedCaption",
    "annotate",
    "ask",
    "emergence",
    "judge",
    "judge_images",
    "parse_caption",
    "INVERSE_RELATION",
    "SIZES",
]
