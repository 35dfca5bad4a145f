"""The annotator: what shapes an image of the shapes world shows, their colours and positions.

An analytic detector rather than a trained classifier, so its judgements can be explained:

1. the background colour is the median of the border pixels; pixels far from it are foreground;
2. foreground pixels are split into 4-connected components (tiny specks dropped);
3. a component's colour is the palette colour nearest to its median pixel;
4. its shape is the template (each shape rendered, cropped to its bounding box, resized to 24×24) with the highest
   IoU against the component's own cropped, resized mask. Scale and position do not matter; aspect ratio does,
   which is what tells a diamond from a square.

``ask(image, "is the red triangle above the blue circle?")`` answers the paper's questions, and
:func:`judge` scores an image against a caption (objects / colours / both / relation), which is what the emergence
report counts.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image

from .world import COLORS, INVERSE_RELATION, RELATIONS, SHAPES, SIZES, Scene, ShapeObject, render

TEMPLATE_SIDE = 24
FOREGROUND_DISTANCE = 70.0  # RGB distance from the background that counts as paint
MIN_AREA_FRACTION = 0.004  # components smaller than this share of the image are noise (16 px at 64×64)


@dataclass(frozen=True)
class Detection:
    shape: str
    color: str
    x: float  # centre, pixels
    y: float
    area: int
    shape_score: float  # IoU with the best template

    @property
    def phrase(self) -> str:
        return f"{self.color} {self.shape}"


@lru_cache(maxsize=None)
def _templates() -> dict[str, np.ndarray]:
    """Bounding-box-normalised masks of each shape (rendered large, so edges are clean)."""
    out = {}
    for shape in SHAPES:
        scene = Scene("", "object", (ShapeObject(shape, "red", "large", 64, 64, 48),), image_size=128)
        out[shape] = _normalised_mask(_foreground(np.asarray(render(scene), dtype=np.float32)))
    return out


def _foreground(pixels: np.ndarray) -> np.ndarray:
    border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    background = np.median(border, axis=0)
    return np.linalg.norm(pixels - background, axis=-1) > FOREGROUND_DISTANCE


def _normalised_mask(mask: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(mask)
    crop = mask[ys.min():ys.max() + 1, xs.min():xs.max() + 1]
    small = Image.fromarray((crop * 255).astype(np.uint8)).resize((TEMPLATE_SIDE, TEMPLATE_SIDE), Image.BILINEAR)
    return np.asarray(small) > 127


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


def _nearest_color(rgb: np.ndarray) -> str:
    names = list(COLORS)
    palette = np.array([COLORS[n] for n in names], dtype=np.float32)
    return names[int(np.argmin(np.linalg.norm(palette - rgb, axis=1)))]


def annotate(image: Image.Image) -> list[Detection]:
    """Every shape found in ``image``, largest first."""
    pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
    mask = _foreground(pixels)
    min_area = MIN_AREA_FRACTION * mask.size
    detections = []
    for members in _components(mask):
        if len(members) < min_area:
            continue
        ys, xs = members[:, 0], members[:, 1]
        component = np.zeros_like(mask)
        component[ys, xs] = True
        color = _nearest_color(np.median(pixels[ys, xs], axis=0))
        normalised = _normalised_mask(component)
        scores = {s: float((normalised & t).sum() / max(1, (normalised | t).sum())) for s, t in _templates().items()}
        shape = max(scores, key=scores.get)
        detections.append(Detection(shape, color, float(xs.mean()), float(ys.mean()), len(members), scores[shape]))
    return sorted(detections, key=lambda d: -d.area)


# ---------------------------------------------------------------------------------------------------------------
# Captions and questions
# ---------------------------------------------------------------------------------------------------------------
_OBJECT = rf"(?:an? )?(?:(?P<c{{i}}>{'|'.join(COLORS)}) )?(?P<s{{i}}>{'|'.join(SHAPES)})"
_CAPTION = re.compile(
    "^" + _OBJECT.format(i=1) + rf"(?: (?P<link>and|{'|'.join(RELATIONS)}) " + _OBJECT.format(i=2) + ")?$"
)


@dataclass(frozen=True)
class ParsedCaption:
    objects: tuple[tuple[str | None, str], ...]  # (color or None, shape)
    relation: str | None


def parse_caption(caption: str) -> ParsedCaption:
    """Parse a shapes-world caption ("a red triangle above a blue circle")."""
    m = _CAPTION.match(caption.strip().lower())
    if not m:
        raise ValueError(f"not a shapes-world caption: {caption!r}; expected e.g. 'a red triangle above a blue "
                         f"circle' (shapes: {', '.join(SHAPES)}; colors: {', '.join(COLORS)})")
    objects = [(m["c1"], m["s1"])]
    if m["s2"]:
        objects.append((m["c2"], m["s2"]))
    link = m["link"]
    return ParsedCaption(tuple(objects), link if link in RELATIONS else None)


def _holds(a: Detection, b: Detection, relation: str) -> bool:
    """Loose relation test on centres (image y grows downwards)."""
    return {"left of": a.x < b.x, "right of": a.x > b.x, "above": a.y < b.y, "below": a.y > b.y}[relation]


def _find(detections: list[Detection], color: str | None, shape: str) -> list[Detection]:
    return [d for d in detections if d.shape == shape and (color is None or d.color == color)]


def judge(image_or_detections, caption: str) -> dict[str, bool]:
    """Score an image against a caption.

    Returns ``objects`` (every named shape is present), ``colors`` (every named colour is present, vacuously true
    when none is named), ``both`` (every named colour-shape pair is present, on distinct shapes) and, for
    relation captions, ``relation`` (both named objects present *and* in the named arrangement).
    """
    detections = image_or_detections if isinstance(image_or_detections, list) else annotate(image_or_detections)
    parsed = parse_caption(caption)
    shapes = [d.shape for d in detections]
    colors = [d.color for d in detections]
    out = {
        "objects": all(shapes.count(s) >= [o[1] for o in parsed.objects].count(s) for _, s in parsed.objects),
        "colors": all(c is None or c in colors for c, _ in parsed.objects),
    }
    (c1, s1), *rest = parsed.objects
    first = _find(detections, c1, s1)
    if rest:
        (c2, s2), = rest
        second = _find(detections, c2, s2)
        pairs = [(a, b) for a in first for b in second if a is not b]
        out["both"] = bool(pairs)
        if parsed.relation:
            out["relation"] = any(_holds(a, b, parsed.relation) for a, b in pairs)
    else:
        out["both"] = bool(first)
    return out


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
    raise ValueError(f"cannot read the question {question!r}; ask 'is there a red triangle?' or "
                     f"'is the triangle above the blue circle?' (relations: {', '.join(RELATIONS)})")


__all__ = ["Detection", "ParsedCaption", "annotate", "ask", "emergence", "judge", "judge_images", "parse_caption",
           "INVERSE_RELATION", "SIZES"]
