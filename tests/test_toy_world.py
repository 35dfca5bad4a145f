"""The shapes world, its tokenizer and the annotator (on rendered images, where the truth is known)."""

import collections

import numpy as np
import pytest

from difflens_widgets.toy.annotate import annotate, ask, judge, parse_caption
from difflens_widgets.toy.tokenizer import build_tokenizer
from difflens_widgets.toy.world import (RARE_COLORS, RARE_SHAPES, Scene, ShapeObject, World, held_out_pairs,
                                        pair_key, render, satisfies, vocabulary)


def test_world_is_deterministic():
    a_images, a_scenes = World(5).batch(24)
    b_images, b_scenes = World(5).batch(24)
    assert [s.caption for s in a_scenes] == [s.caption for s in b_scenes]
    assert all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(a_images, b_images))
    assert [s.caption for s in World(6).batch(24)[1]] != [s.caption for s in a_scenes]


def test_captions_agree_with_drawn_objects():
    world = World(11)
    orders = collections.Counter()
    for _ in range(400):
        scene = world.sample()
        assert scene.image_size == 64 and render(scene).size == (64, 64)
        if scene.family == "empty":
            assert scene.caption == "" and len(scene.objects) == 1
            continue
        parsed = parse_caption(scene.caption)
        assert len(parsed.objects) == len(scene.objects)
        for (color, shape), obj in zip(parsed.objects, scene.objects):
            assert shape == obj.shape
            assert color == (obj.color if scene.named_colors else None)
        if scene.family == "relation":
            assert parsed.relation == scene.relation
            assert satisfies(scene.objects[0], scene.objects[1], scene.relation, margin=4.0)
            orders[scene.relation] += 1
    assert set(orders) == {"left of", "right of", "above", "below"}  # both word orders of both axes


def test_held_out_pairs_never_in_training():
    held = held_out_pairs()
    assert len(held) == 63  # 10% of the 630 pairs of distinct common coloured shapes
    train, heldout = World(1), World(1, split="heldout")
    for _ in range(300):
        scene = train.sample("and")
        a, b = ((o.color, o.shape) for o in scene.objects)
        assert pair_key(a, b) not in held
        scene = heldout.sample("relation")
        a, b = ((o.color, o.shape) for o in scene.objects)
        assert pair_key(a, b) in held


def test_rare_concepts_are_rare():
    world = World(3)
    objects = [o for _ in range(4000) for o in world.sample("colored").objects]
    rare_shapes = sum(o.shape in RARE_SHAPES for o in objects) / len(objects)
    rare_colors = sum(o.color in RARE_COLORS for o in objects) / len(objects)
    assert 0.003 < rare_shapes < 0.02 and 0.003 < rare_colors < 0.02


def test_tokenizer_keeps_every_word_whole():
    tokenizer = build_tokenizer()
    for word in vocabulary():
        assert tokenizer.convert_ids_to_tokens(tokenizer(word, add_special_tokens=False).input_ids) == [word + "</w>"]
    ids = tokenizer("a red circle left of a blue square", padding="max_length").input_ids
    assert len(ids) == 16 and ids[0] == tokenizer.bos_token_id and ids[9:] == [tokenizer.eos_token_id] * 7


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
    assert ask(image, "is the triangle left of the circle?")
    assert not ask(image, "is the triangle below the circle?")
    with pytest.raises(ValueError, match="cannot read the question"):
        ask(image, "how many shapes?")
    with pytest.raises(ValueError, match="not a shapes-world caption"):
        parse_caption("a cat on a mat")


def test_blank_image_has_nothing():
    blank = render(Scene("", "empty", ()))
    assert annotate(blank) == []
    assert judge(blank, "a red circle") == {"objects": False, "colors": False, "both": False}
