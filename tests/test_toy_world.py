"""The shapes world, its tokenizer and the annotator (on rendered images, where the truth is known)."""

import collections

import numpy as np
import pytest
from PIL import Image

from difflens_widgets.toy import language
from difflens_widgets.toy.annotate import (
    Detection,
    annotate,
    ask,
    explain_color,
    judge,
    parse_caption,
    relation_axis,
)
from difflens_widgets.toy.tokenizer import MAX_LENGTH, build_tokenizer, learn_merges
from difflens_widgets.toy.world import (
    BACKGROUND,
    COLOR_FREQUENCY,
    COLOR_TIERS,
    COLORS,
    RELATION_MARGIN,
    SIZES,
    Scene,
    ShapeObject,
    World,
    clearly,
    held_out_pairs,
    pair_key,
    render,
    satisfies,
    vocabulary,
)


def test_world_is_deterministic():
    a_images, a_scenes = World(5).batch(24)
    b_images, b_scenes = World(5).batch(24)
    assert [s.caption for s in a_scenes] == [s.caption for s in b_scenes]
    assert all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(a_images, b_images))
    assert [s.caption for s in World(6).batch(24)[1]] != [s.caption for s in a_scenes]


def test_captions_agree_with_drawn_objects():
    world = World(11)
    orders, phrases = collections.Counter(), collections.Counter()
    for _ in range(400):
        scene = world.sample()
        assert scene.image_size == 64 and render(scene).size == (64, 64)
        if scene.family == "empty":  # any scene of the world with its caption dropped
            assert scene.caption == "" and len(scene.objects) in (1, 2)
            continue
        parsed = parse_caption(scene.caption)
        assert len(parsed.objects) == len(scene.objects)
        for (color, shape), obj in zip(parsed.objects, scene.objects):
            assert shape == obj.shape
            assert color == (obj.color if scene.named_colors else None)
        if scene.family == "relation":
            assert parsed.relation == scene.relation
            assert satisfies(scene.objects[0], scene.objects[1], scene.relation, margin=RELATION_MARGIN)
            assert clearly(*scene.objects, scene.relation)  # a visible gap along the axis, little skew across it
            orders[scene.relation] += 1
            a, b = (language.noun_phrase(o.color, o.shape) for o in scene.objects)
            (phrase,) = [p for p in language.RELATION_PHRASES[scene.relation] if scene.caption == f"{a} {p} {b}"]
            phrases[phrase] += 1
    assert set(orders) == {"left of", "right of", "above", "below"}  # both word orders of both axes
    assert set(phrases) == {p for ps in language.RELATION_PHRASES.values() for p in ps}  # every synonym


def test_held_out_pairs_never_in_training():
    held = held_out_pairs()
    assert len(held) == 44  # 10% of the 435 pairs of distinct core-coloured shapes (5 colours × 6 shapes)
    train, heldout = World(1), World(1, split="heldout")
    for _ in range(300):
        scene = train.sample("and")
        a, b = ((o.color, o.shape) for o in scene.objects)
        assert pair_key(a, b) not in held
        scene = heldout.sample("relation")
        a, b = ((o.color, o.shape) for o in scene.objects)
        assert pair_key(a, b) in held


def test_colour_tiers_have_their_frequencies():
    world = World(3)
    objects = [o for _ in range(6000) for o in world.sample().objects]
    counts = collections.Counter(o.color for o in objects)
    for tier, (colors, _) in COLOR_TIERS.items():
        for color in colors:
            share = counts[color] / len(objects)
            assert abs(share - COLOR_FREQUENCY[color]) < 0.25 * COLOR_FREQUENCY[color] + 0.002, (tier, color, share)
    shares = [COLOR_FREQUENCY[cs[0]] for cs, _ in COLOR_TIERS.values()]
    assert shares == sorted(shares, reverse=True) and shares[0] / shares[-1] > 20  # graded: ~25% down to ~1%
    assert abs(sum(COLOR_FREQUENCY.values()) - 1) < 1e-9 and set(COLOR_FREQUENCY) == set(COLORS)


def test_tokenizer_splits_every_word_as_designed():
    """Single-piece and multi-piece names in every colour tier (and among the equally frequent shapes), split
    exactly where the design says by merges the BPE learned; every letter is known, so a new word splits into
    real pieces instead of turning into the end token."""
    tokenizer = build_tokenizer()
    for word in vocabulary():
        pieces = list(language.pieces(word))
        pieces[-1] += "</w>"
        assert tokenizer.convert_ids_to_tokens(tokenizer(word, add_special_tokens=False).input_ids) == pieces, word
    for tier, (colors, _) in COLOR_TIERS.items():
        counts = sorted(len(language.pieces(c)) for c in colors)
        assert counts[0] == 1 and counts[-1] > 1, (tier, counts)  # "rare" and "split" are separable
    ids = tokenizer("a green triangle to the left of a yellow diamond", padding="max_length").input_ids
    assert (
        len(ids) == MAX_LENGTH == 24 and ids[0] == tokenizer.bos_token_id and ids[17:] == [tokenizer.eos_token_id] * 7
    )
    assert tokenizer.convert_ids_to_tokens(tokenizer("a xon triangle").input_ids)[1:4] == ["a</w>", "x", "on</w>"]


def test_learned_merges_never_cross_a_piece_boundary():
    merges = learn_merges({"abab": 5, "ab": 1}, {"abab": ("ab", "ab")})
    # most frequent first (a+b</w>: 6, a+b: 5); the pair across the boundary (b+a, 5 times) is never merged
    assert merges == [("a", "b</w>"), ("a", "b")]
    # a design BPE cannot produce is refused, not shipped: the word "an" needs the merge a + n</w>, which would
    # also join the last two of cyan's designed pieces c|y|a|n
    with pytest.raises(RuntimeError, match="designed"):
        build_tokenizer(["an", "cyan"], design={"cyan": ("c", "y", "a", "n")})


@pytest.mark.parametrize("family", ["object", "colored", "and", "relation"])
def test_annotator_accuracy_on_rendered_images(family):
    world = World(21, split="heldout")
    scores = collections.defaultdict(list)
    for _ in range(80):
        scene = world.sample(family)
        for aspect, ok in judge(render(scene), scene.caption).items():
            scores[aspect].append(ok)
    for aspect, oks in scores.items():
        assert sum(oks) / len(oks) >= 0.95, (family, aspect, sum(oks) / len(oks))


def test_annotator_positions_and_questions():
    red = ShapeObject("triangle", "red", "large", 20, 16, 11)
    blue = ShapeObject("circle", "blue", "small", 44, 46, 7)
    image = render(Scene("", "relation", (red, blue)))
    found = {d.phrase: d for d in annotate(image)}
    assert set(found) == {"red triangle", "blue circle"}
    assert abs(found["blue circle"].x - 44) < 1.5 and abs(found["blue circle"].y - 46) < 1.5
    assert ask(image, "is there a red triangle?") and not ask(image, "is there a green triangle?")
    assert ask(image, "is the red triangle above the blue circle?")
    assert not ask(image, "is the triangle left of the circle?")  # mostly above it: "above" is the relation
    assert not ask(image, "is the triangle below the circle?")
    beside = render(Scene("", "relation", (red, ShapeObject("circle", "blue", "small", 46, 22, 7))))
    assert ask(beside, "is the triangle left of the circle?") and not ask(beside, "is the triangle above the circle?")
    with pytest.raises(ValueError, match="cannot read the question"):
        ask(image, "how many shapes?")
    with pytest.raises(ValueError, match="not a shapes-world caption"):
        parse_caption("a cat on a mat")


def test_relation_axis_tells_a_flipped_arrangement_from_a_wrong_axis():
    red = ShapeObject("triangle", "red", "large", 20, 16, 11)
    image = render(Scene("", "relation", (red, ShapeObject("circle", "blue", "small", 44, 46, 7))))
    detections = annotate(image)
    assert relation_axis(detections, "a red triangle above a blue circle") is True
    flipped = "a red triangle below a blue circle"
    assert relation_axis(detections, flipped) is True and not judge(detections, flipped)["relation"]
    assert relation_axis(detections, "a red triangle left of a blue circle") is False
    assert relation_axis(detections, "a red triangle above a green circle") is None  # one object missing
    with pytest.raises(ValueError, match="needs a caption naming two objects and a relation"):
        relation_axis(detections, "a red triangle and a blue circle")


@pytest.mark.parametrize(
    ("drawn", "caption", "objects"),
    [
        (["red circle"], "a red circle", True),
        (["red circle", "red circle"], "a red circle", False),  # the first object drawn twice: an extra object
        (["red circle", "blue square"], "a red circle", False),
        (["red circle", "blue blob"], "a red circle", True),  # paint no shape can be called is not an object
        (["red triangle", "blue circle"], "a red triangle above a blue circle", True),
        (["red triangle", "blue circle", "blue circle"], "a red triangle above a blue circle", False),
        (["red circle", "blue circle"], "a red circle and a blue circle", True),
        (["red circle"], "a red circle and a blue circle", False),
        ([], "a circle", False),
    ],
)
def test_the_objects_check_refuses_extra_objects(drawn, caption, objects):
    detections = [Detection(p.split()[1], p.split()[0], 8 + 16 * i, 32, 100, 0.9) for i, p in enumerate(drawn)]
    assert judge(detections, caption)["objects"] is objects


def test_blank_image_has_nothing():
    blank = render(Scene("", "empty", ()))
    assert annotate(blank) == []
    assert judge(blank, "a red circle") == {"objects": False, "colors": False, "both": False}


def test_a_faded_colour_keeps_its_name():
    """Generated shapes are often washed out: red halfway to the background is still red, not pink."""
    background = np.array(BACKGROUND, np.float32)
    for name, rgb in COLORS.items():
        for fade in (1.0, 0.7, 0.5):
            color, fitted, residual = explain_color(background + fade * (np.array(rgb) - background))
            assert color == name and abs(fitted - fade) < 0.02 and residual < 1.0, (name, fade, color)


def test_washes_of_colour_are_not_shapes():
    """Faint smooth colour fields and large washes — what early layers and the no-norm ablation often draw — are
    not reported as shapes; a shape drawn on top of a faint wash still is."""
    rng = np.random.default_rng(0)
    background = np.array(BACKGROUND, np.float32)
    for _ in range(30):
        field = Image.fromarray(np.clip(128 + rng.normal(size=(6, 6, 3)) * 18, 0, 255).astype(np.uint8))
        faint = np.asarray(field.resize((64, 64), Image.BICUBIC), np.float32) - 128
        image = Image.fromarray(np.clip(background + faint, 0, 255).astype(np.uint8))
        assert annotate(image) == [], [d.phrase for d in annotate(image)]
    wash = np.tile(background, (64, 64, 1))
    wash[:, :40] = background + 0.8 * (np.array(COLORS["pink"]) - background)  # 62% of the image, one colour
    assert annotate(Image.fromarray(wash.astype(np.uint8))) == []
    scene = Scene("", "colored", (ShapeObject("square", "blue", "large", 40, 30, 11),))
    tinted = np.clip(np.asarray(render(scene), np.float32) + faint, 0, 255).astype(np.uint8)
    assert [d.phrase for d in annotate(Image.fromarray(tinted))] == ["blue square"]


def test_a_noise_field_has_no_shapes_but_a_shape_at_the_edge_is_kept():
    """Full-frame coloured noise (toy-t5 without its final norm) forms blobs that look like shapes; with paint over
    the border and most of the frame there is no background for a shape to stand on, so none is reported. A shape
    cut off at the edge paints a little border and is still found."""
    rng = np.random.default_rng(0)
    palette = np.array(
        [COLORS[c] for c in ("orange", "blue", "purple", "green", "red")] + [BACKGROUND, (170, 160, 200)], np.float32
    )
    for _ in range(20):
        blocks = palette[rng.integers(0, len(palette), size=(6, 6))]  # the old rules found "shapes" in 9 of these 20
        field = Image.fromarray(blocks.astype(np.uint8)).resize((64, 64), Image.BILINEAR)
        assert annotate(field) == [], [d.phrase for d in annotate(field)]
    at_the_edge = Scene("", "colored", (ShapeObject("star", "red", "large", 32, 5, 11),))
    assert [d.color for d in annotate(render(at_the_edge))] == ["red"]


def test_a_speck_is_not_a_shape_but_the_smallest_shape_is():
    """Late no-norm layers leave specks of paint (≤ 40 px) that the rules would name "brown star" or "red triangle";
    the area floor drops them, while the world's smallest shape, a small star, is still found."""
    background = np.full((64, 64, 3), BACKGROUND, np.uint8)
    for color, side in (("red", 4), ("blue", 5), ("green", 6)):  # 16, 25 and 36 px squares of full paint
        speck = background.copy()
        speck[30 : 30 + side, 20 : 20 + side] = COLORS[color]
        assert annotate(Image.fromarray(speck)) == [], (color, side)
    smallest = Scene("", "colored", (ShapeObject("star", "red", "small", 32, 32, SIZES["small"] * 64),))
    assert [(d.color, d.shape) for d in annotate(render(smallest))] == [("red", "star")]


def test_placement_reads_a_relation_from_colours_alone():
    """The shape-blind relation check training tracks: right on renders, wrong for the opposite relation."""
    from difflens_widgets.toy.annotate import placement
    from difflens_widgets.toy.world import INVERSE_RELATION

    world = World(4)
    checked = 0
    for _ in range(60):
        scene = world.sample("relation")
        a, b = scene.objects
        if a.color == b.color:
            continue
        caption = f"a {a.color} {a.shape} {scene.relation} a {b.color} {b.shape}"
        opposite = f"a {a.color} {a.shape} {INVERSE_RELATION[scene.relation]} a {b.color} {b.shape}"
        assert placement(render(scene), caption) == {"colours": True, "placement": True}, caption
        assert placement(render(scene), opposite)["placement"] is False
        checked += 1
    assert checked > 30
    with pytest.raises(ValueError, match="two different colours"):
        placement(render(scene), "a red circle left of a red square")
