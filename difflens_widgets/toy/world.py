"""The shapes world: a seeded generator of captioned images whose content is fully known.

Every image shows one or two flat shapes on a plain background. Because the generator knows exactly what it drew,
every lens finding on the toy model can be measured exactly (see :mod:`difflens_widgets.toy.annotate`). Captions are
sentences of the world's language (:mod:`.language`: word pieces crossed with frequency, synonyms, relation phrases).

Caption families mirror the Diffusion Lens paper's experiments:

=============  ==========================================
family         example
=============  ==========================================
``empty``      ``""``: any scene, its caption dropped (for classifier-free guidance)
``object``     ``"a triangle"`` (colour not named)
``colored``    ``"a red triangle"``
``and``        ``"a red triangle and a blue circle"``
``relation``   ``"a red triangle above a blue circle"`` / ``"a blue circle under a red triangle"``
=============  ==========================================

Graded concept frequency, so "common concepts emerge before rare ones" can be measured: colours come in four
frequency tiers (:data:`COLOR_TIERS`), about 25%, 8.5%, 2.5% and 0.85% of objects per colour, two or three colours
per tier so a tier's curve is not one colour's quirk, and each tier has a one-piece and a multi-piece name. Shapes
are uniform. Held-out pairs: a fixed 10% of the two-object combinations of the *core* colours (the two most frequent
tiers) never appear in training and form the held-out evaluation set for the ``and`` and ``relation`` families.

Relation scenes are drawn unambiguously by default (``layout="clear"``): a visible gap between the two shapes along
the relation's axis and little offset across it, so a caption's arrangement is never a matter of a few pixels.
"""

from __future__ import annotations

import itertools
import math
import random
import re
from dataclasses import dataclass, field

from PIL import Image, ImageDraw

from . import language
from .language import article, noun_phrase  # noqa: F401 (re-exported: the world's phrases)

SHAPES = ("circle", "square", "triangle", "star", "cross", "diamond")

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "green": (30, 160, 60),
    "blue": (35, 75, 215),
    "yellow": (235, 200, 20),
    "orange": (245, 125, 20),
    "purple": (130, 50, 175),
    "cyan": (0, 180, 195),
    "pink": (255, 120, 200),
    "brown": (125, 80, 40),
}
# Frequency tiers: (colours, relative weight per colour). Shares per colour: 30/118 ≈ 25%, 10/118 ≈ 8.5%,
# 3/118 ≈ 2.5%, 1/118 ≈ 0.85% of objects.
COLOR_TIERS: dict[str, tuple[tuple[str, ...], int]] = {
    "common": (("red", "green", "blue"), 30),
    "uncommon": (("yellow", "orange"), 10),
    "rare": (("purple", "cyan"), 3),
    "very rare": (("pink", "brown"), 1),
}
COLOR_FREQUENCY: dict[str, float] = {
    color: weight / sum(len(cs) * w for cs, w in COLOR_TIERS.values())
    for cs, weight in COLOR_TIERS.values()
    for color in cs
}
TIER_OF_COLOR = {color: tier for tier, (cs, _) in COLOR_TIERS.items() for color in cs}
CORE_COLORS = COLOR_TIERS["common"][0] + COLOR_TIERS["uncommon"][0]  # enough data for every pair to be learned

BACKGROUND = (240, 240, 236)
RELATIONS = tuple(language.RELATION_PHRASES)
INVERSE_RELATION = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
SIZES = {"small": 0.11, "large": 0.17}  # radius as a fraction of the image side
RELATION_MARGIN = 6.0  # pixels: the centres differ at least this much along the relation's axis
RELATION_GAP = 6.0  # clear layout: pixels of background between the two shapes along the relation's axis
RELATION_SKEW = 0.4  # clear layout: offset across the axis at most this share of the distance along it
SLOT = 0.27  # "slots" layout: the objects' centres along the relation's axis, as a share of the side from each end
SLOT_JITTER = 3.0  # pixels around each slot, along the axis
SLOT_SPREAD = 6.0  # pixels across the axis around the middle
LAYOUTS = ("clear", "uniform", "slots")

# Share of each caption family in training. Two-object captions are about two thirds of the data: binding and
# relations are where a small model is weakest and where the lens has most to show.
FAMILY_WEIGHTS = {"empty": 0.10, "object": 0.05, "colored": 0.20, "and": 0.20, "relation": 0.45}
FAMILIES = tuple(FAMILY_WEIGHTS)
HELD_OUT_FRACTION = 0.10
HELD_OUT_SEED = 1234


@dataclass(frozen=True)
class ShapeObject:
    """One drawn shape; ``x``, ``y`` are its centre and ``radius`` its half extent, all in pixels."""

    shape: str
    color: str
    size: str
    x: float
    y: float
    radius: float

    @property
    def phrase(self) -> str:
        return f"{self.color} {self.shape}"


@dataclass(frozen=True)
class Scene:
    """A caption and the objects that make it true. ``relation`` holds for ``objects[0] relation objects[1]``."""

    caption: str
    family: str
    objects: tuple[ShapeObject, ...] = ()
    relation: str | None = None
    named_colors: bool = True
    image_size: int = 64
    meta: dict = field(default_factory=dict, compare=False)


def pair_key(a: tuple[str, str], b: tuple[str, str]) -> tuple[tuple[str, str], tuple[str, str]]:
    """Order-free key of a pair of (color, shape) objects."""
    return (a, b) if a <= b else (b, a)


def held_out_pairs() -> frozenset:
    """The fixed set of core-colour (color, shape) pairs that training never shows together; same on every
    machine."""
    objects = list(itertools.product(CORE_COLORS, SHAPES))
    pairs = [pair_key(a, b) for a, b in itertools.combinations(objects, 2)]
    rng = random.Random(HELD_OUT_SEED)
    return frozenset(rng.sample(pairs, round(HELD_OUT_FRACTION * len(pairs))))


def shape_polygon(shape: str, x: float, y: float, r: float) -> list[tuple[float, float]] | None:
    """Vertices of ``shape`` centred on (x, y) with half extent r; None for the circle (drawn as an ellipse)."""
    if shape == "circle":
        return None
    if shape == "square":
        h = 0.85 * r
        return [(x - h, y - h), (x + h, y - h), (x + h, y + h), (x - h, y + h)]
    if shape == "triangle":
        return [(x, y - r), (x + r, y + 0.8 * r), (x - r, y + 0.8 * r)]
    if shape == "diamond":
        return [(x, y - r), (x + 0.75 * r, y), (x, y + r), (x - 0.75 * r, y)]
    if shape == "star":
        points = []
        for k in range(10):
            radius = r if k % 2 == 0 else 0.42 * r
            angle = -math.pi / 2 + k * math.pi / 5
            points.append((x + radius * math.cos(angle), y + radius * math.sin(angle)))
        return points
    if shape == "cross":
        w = 0.34 * r
        return [
            (x - w, y - r),
            (x + w, y - r),
            (x + w, y - w),
            (x + r, y - w),
            (x + r, y + w),
            (x + w, y + w),
            (x + w, y + r),
            (x - w, y + r),
            (x - w, y + w),
            (x - r, y + w),
            (x - r, y - w),
            (x - w, y - w),
        ]
    raise ValueError(f"unknown shape {shape!r}; known shapes: {', '.join(SHAPES)}")


def render(scene: Scene, supersample: int = 4) -> Image.Image:
    """Draw ``scene`` as an RGB image (antialiased by drawing at ``supersample``× and reducing)."""
    big = scene.image_size * supersample
    image = Image.new("RGB", (big, big), BACKGROUND)
    draw = ImageDraw.Draw(image)
    for obj in scene.objects:
        x, y, r = obj.x * supersample, obj.y * supersample, obj.radius * supersample
        fill = COLORS[obj.color]
        polygon = shape_polygon(obj.shape, x, y, r)
        if polygon is None:
            draw.ellipse([x - r, y - r, x + r, y + r], fill=fill)
        else:
            draw.polygon(polygon, fill=fill)
    return image.reduce(supersample) if supersample > 1 else image


class World:
    """Seeded sampler of :class:`Scene` objects.

    ``split="train"`` never produces a held-out pair; ``split="heldout"`` produces only held-out pairs for the
    two-object families (single-object families are the same in both splits).
    """

    def __init__(
        self,
        seed: int = 0,
        image_size: int = 64,
        split: str = "train",
        layout: str = "clear",
        family_weights: dict[str, float] | None = None,
    ):
        if split not in ("train", "heldout"):
            raise ValueError(f"split must be 'train' or 'heldout', got {split!r}")
        if layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
        unknown = set(family_weights or ()) - set(FAMILIES)
        if unknown:
            raise ValueError(f"unknown caption families {sorted(unknown)}; known: {', '.join(FAMILIES)}")
        self.rng = random.Random(seed)
        self.image_size = image_size
        self.split = split
        self.layout = layout
        self.family_weights = dict(family_weights or FAMILY_WEIGHTS)
        self.held_out = held_out_pairs()

    # ---- sampling helpers -------------------------------------------------------------------------------------
    def _color(self) -> str:
        """A colour drawn by its frequency tier (the held-out split draws core colours uniformly)."""
        if self.split == "heldout":
            return self.rng.choice(CORE_COLORS)
        return self.rng.choices(tuple(COLOR_FREQUENCY), weights=tuple(COLOR_FREQUENCY.values()))[0]

    def _object(self, color: str, shape: str) -> ShapeObject:
        size = self.rng.choice(tuple(SIZES))
        radius = SIZES[size] * self.image_size
        lo, hi = radius + 1.5, self.image_size - radius - 1.5
        return ShapeObject(shape, color, size, self.rng.uniform(lo, hi), self.rng.uniform(lo, hi), radius)

    def _along(self, radius_a: float, radius_b: float, delta: float) -> tuple[float, float]:
        """Coordinates of two shapes on one axis, ``delta`` apart, both inside the image (uniform over the room)."""
        lo = max(radius_a + 1.5, radius_b + 1.5 - delta)
        hi = min(self.image_size - radius_a - 1.5, self.image_size - radius_b - 1.5 - delta)
        first = self.rng.uniform(lo, hi)
        return first, first + delta

    def _place_clear(self, first: ShapeObject, second: ShapeObject, relation: str) -> tuple[ShapeObject, ShapeObject]:
        """``first relation second`` drawn unambiguously (see :func:`clearly`): the distance along the axis drawn
        between the gap's minimum and the most the image allows, the offset across it within the skew bound, then
        the pair placed uniformly where it fits."""
        sizes = [self.rng.choice(tuple(SIZES)) for _ in range(2)]
        ra, rb = (SIZES[size] * self.image_size for size in sizes)
        distance = self.rng.uniform(ra + rb + RELATION_GAP, self.image_size - 3 - ra - rb)
        sign = 1 if relation in ("left of", "above") else -1  # second lies after first along the axis
        along = self._along(ra, rb, sign * distance)
        across = self._along(ra, rb, self.rng.uniform(-RELATION_SKEW, RELATION_SKEW) * distance)
        (xa, xb), (ya, yb) = (along, across) if relation in ("left of", "right of") else (across, along)
        return (
            ShapeObject(first.shape, first.color, sizes[0], xa, ya, ra),
            ShapeObject(second.shape, second.color, sizes[1], xb, yb, rb),
        )

    def _place_slots(self, first: ShapeObject, second: ShapeObject, relation: str) -> tuple[ShapeObject, ShapeObject]:
        """``first relation second`` in two slots along the relation's axis (a quarter of the side in from each
        end, a few pixels of jitter), both near the middle across it: where each object goes is then a function
        of the caption alone, the strongest signal a small denoiser can learn a relation from."""
        sizes = [self.rng.choice(tuple(SIZES)) for _ in range(2)]
        side = self.image_size
        early, late = SLOT * side, (1 - SLOT) * side
        along = [slot + self.rng.uniform(-SLOT_JITTER, SLOT_JITTER) for slot in (early, late)]
        if relation in ("right of", "below"):
            along.reverse()
        across = [side / 2 + self.rng.uniform(-SLOT_SPREAD, SLOT_SPREAD) for _ in range(2)]
        horizontal = relation in ("left of", "right of")
        objects = []
        for obj, size, a, c in zip((first, second), sizes, along, across):
            x, y = (a, c) if horizontal else (c, a)
            objects.append(ShapeObject(obj.shape, obj.color, size, x, y, SIZES[size] * side))
        return objects[0], objects[1]

    def _place_pair(self, first: ShapeObject, second: ShapeObject, relation: str | None) -> tuple | None:
        """Positions for two objects that do not touch and, if given, satisfy ``first relation second``."""
        if relation is not None and self.layout == "clear":
            return self._place_clear(first, second, relation)
        if relation is not None and self.layout == "slots":
            return self._place_slots(first, second, relation)
        for _ in range(100):
            a = self._object(first.color, first.shape)
            b = self._object(second.color, second.shape)
            if math.hypot(a.x - b.x, a.y - b.y) < a.radius + b.radius + 3:
                continue
            if relation is None or satisfies(a, b, relation, margin=RELATION_MARGIN):
                return a, b
        return None

    def _pair(self) -> tuple[tuple[str, str], tuple[str, str]]:
        while True:
            a = (self._color(), self.rng.choice(SHAPES))
            b = (self._color(), self.rng.choice(SHAPES))
            if a == b:
                continue
            held = pair_key(a, b) in self.held_out
            if held == (self.split == "heldout"):
                return a, b

    # ---- public -----------------------------------------------------------------------------------------------
    def sample(self, family: str | None = None) -> Scene:
        """One scene of ``family`` (drawn by :data:`FAMILY_WEIGHTS` when None)."""
        weights = self.family_weights
        if family is None:
            family = self.rng.choices(tuple(weights), weights=tuple(weights.values()))[0]
        size = self.image_size
        if family == "empty":  # any scene of the world, caption dropped: the unconditional model learns p(image)
            drawn = {f: w for f, w in weights.items() if f != "empty" and w > 0} or {"colored": 1.0}
            scene = self.sample(self.rng.choices(tuple(drawn), weights=tuple(drawn.values()))[0])
            return Scene("", family, scene.objects, named_colors=False, image_size=size)
        if family in ("object", "colored"):
            obj = self._object(self._color(), self.rng.choice(SHAPES))
            named = family == "colored"
            return Scene(
                noun_phrase(obj.color if named else None, obj.shape),
                family,
                (obj,),
                named_colors=named,
                image_size=size,
            )
        if family in ("and", "relation"):
            relation = self.rng.choice(RELATIONS) if family == "relation" else None
            while True:
                (ca, sa), (cb, sb) = self._pair()
                placed = self._place_pair(ShapeObject(sa, ca, "", 0, 0, 0), ShapeObject(sb, cb, "", 0, 0, 0), relation)
                if placed is not None:
                    break
            a, b = placed
            if relation is None:
                caption = f"{noun_phrase(a.color, a.shape)} and {noun_phrase(b.color, b.shape)}"
                return Scene(caption, family, (a, b), image_size=size)
            if self.rng.random() < 0.5:  # both word orders: "A above B" and "B below A"
                a, b, relation = b, a, INVERSE_RELATION[relation]
            return self.phrased(Scene("", family, (a, b), relation=relation, image_size=size))
        raise ValueError(f"unknown caption family {family!r}; known: {', '.join(FAMILIES)}")

    def phrased(self, scene: Scene) -> Scene:
        """``scene`` (two objects in ``scene.relation``) captioned "A <relation> B" with one of the relation's
        phrases (:data:`.language.RELATION_PHRASES`: synonyms), drawn at random."""
        (a, b), phrase = scene.objects, self.rng.choice(language.RELATION_PHRASES[scene.relation])
        caption = f"{noun_phrase(a.color, a.shape)} {phrase} {noun_phrase(b.color, b.shape)}"
        return Scene(caption, scene.family, scene.objects, relation=scene.relation, image_size=scene.image_size)

    def inverse(self, scene: Scene) -> Scene:
        """The same relation scene said the other way round: "A left of B" → "B right of A"."""
        a, b = scene.objects
        return self.phrased(
            Scene("", scene.family, (b, a), relation=INVERSE_RELATION[scene.relation], image_size=scene.image_size)
        )

    def batch(self, n: int, paired: bool = False) -> tuple[list[Image.Image], list[Scene]]:
        """``n`` scenes and their renders. ``paired``: every relation scene comes twice, said both ways ("A left of
        B" and "B right of A", the same image), so word order is the only thing telling the two captions apart."""
        scenes: list[Scene] = []
        while len(scenes) < n:
            scene = self.sample()
            scenes.append(scene)
            if paired and scene.relation and len(scenes) < n:
                scenes.append(self.inverse(scene))
        return [render(s) for s in scenes], scenes


def satisfies(a: ShapeObject, b: ShapeObject, relation: str, margin: float = 0.0) -> bool:
    """Whether ``a relation b`` holds: the centres differ by more than ``margin`` along the relation's axis and
    the relation's axis dominates (so "left of" is not a mostly vertical arrangement). Image y grows downwards."""
    dx, dy = b.x - a.x, b.y - a.y
    if relation == "left of":
        return dx > margin and abs(dx) > abs(dy)
    if relation == "right of":
        return -dx > margin and abs(dx) > abs(dy)
    if relation == "above":
        return dy > margin and abs(dy) > abs(dx)
    if relation == "below":
        return -dy > margin and abs(dy) > abs(dx)
    raise ValueError(f"unknown relation {relation!r}; known: {', '.join(RELATIONS)}")


def clearly(a: ShapeObject, b: ShapeObject, relation: str) -> bool:
    """Whether ``a relation b`` is drawn unambiguously: a gap of :data:`RELATION_GAP` pixels between the shapes
    along the relation's axis, and an offset across it of at most :data:`RELATION_SKEW` of the distance along it."""
    along, across = (b.x - a.x, b.y - a.y) if relation in ("left of", "right of") else (b.y - a.y, b.x - a.x)
    return (
        abs(along) >= a.radius + b.radius + RELATION_GAP
        and abs(across) <= RELATION_SKEW * abs(along)
        and satisfies(a, b, relation)
    )


def vocabulary() -> list[str]:
    """Every word a caption can contain."""
    return language.vocabulary(COLORS, SHAPES)


def unknown_words(prompt: str) -> list[str]:
    """The words of ``prompt`` the shapes world never says (lower-cased, first appearance first): a toy model saw
    none of them in training, so the tokenizer splits them into pieces it never learned to read together."""
    known = set(vocabulary())
    words = re.findall(r"[^\W\d_]+|\d+", prompt.lower())
    return list(dict.fromkeys(w for w in words if w not in known))


def unknown_words_note(prompt: str) -> str:
    """One plain line for a user who typed ``prompt`` into a toy model ("" when every word is the world's own):
    which words it does not know, what it does know, and that the lens runs anyway."""
    unknown = unknown_words(prompt)
    if not unknown:
        return ""
    named = [f"'{w}'" for w in unknown[:6]] + ([f"{len(unknown) - 6} more"] if len(unknown) > 6 else [])
    listed = named[0] if len(named) == 1 else f"{', '.join(named[:-1])} and {named[-1]}"
    return (
        f"the toy model does not know {listed}: its world has only coloured shapes ({', '.join(SHAPES)}) in "
        f"{len(COLORS)} colours, alone, side by side or above/below one another; the lens still runs, and shows "
        "what the encoder makes of words it never saw"
    )


def world_probe_set(n: int, seed: int = 0, image_size: int = 64) -> tuple[list[Image.Image], dict[str, list[str]]]:
    """``n`` renders of single objects, balanced over the core colours × shapes (cycled), with random sizes and
    positions, and their labels: ``color``, ``shape``, ``size`` and ``side`` (left or right half)."""
    if n < 2:
        raise ValueError(f"a probe set needs at least 2 images, got {n}")
    world = World(seed=seed, image_size=image_size)
    pairs = [(c, s) for c in CORE_COLORS for s in SHAPES]
    world.rng.shuffle(pairs)
    images, labels = [], {"color": [], "shape": [], "size": [], "side": []}
    for i in range(n):
        color, shape = pairs[i % len(pairs)]
        obj = world._object(color, shape)
        images.append(render(Scene(noun_phrase(color, shape), "colored", (obj,), image_size=image_size)))
        for key, value in (
            ("color", color),
            ("shape", shape),
            ("size", obj.size),
            ("side", "left" if obj.x < image_size / 2 else "right"),
        ):
            labels[key].append(value)
    return images, labels
