"""Cross-attention maps per lens layer: shapes, sums, an independent recomputation, images unchanged, hooks gone."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import difflens_widgets as dl
from difflens_widgets.core import attention as capture_module
from difflens_widgets.testing import TINY_FAMILIES, tiny_stable_diffusion

PROMPT = "a red circle left of a blue square"
RUN = dict(layers=[1, 4], seeds=[0, 1], num_inference_steps=2, use_cache=False)


MAPS_NOT_READ: dict[str, str] = {}  # family -> its name in the refusal, for a family whose maps are not read


def family_run(name: str, pipe):
    extra = {"height": 32, "width": 32} if name in ("flux", "flux2-klein", "flux2", "stable-diffusion-3") else {}
    guidance = 3.5 if name == "flux" else 7.5
    return dict(RUN, guidance_scale=guidance, **extra)


@pytest.mark.parametrize("family", sorted(TINY_FAMILIES))
def test_every_family_captures_maps_without_changing_an_image(family):
    pipe = TINY_FAMILIES[family]()
    lens = dl.Lens(pipe)
    options = family_run(family, pipe)
    if family in MAPS_NOT_READ:  # refused before any work, saying why
        with pytest.raises(ValueError, match=f"attention maps are not read for {MAPS_NOT_READ[family]} yet: "):
            lens.resolve(PROMPT, attention=True, **options)
        return
    layers = [1, min(4, lens.num_layers)]
    plain = lens.run(PROMPT, **dict(options, layers=layers))
    sdpa = F.scaled_dot_product_attention
    mapped = lens.run(PROMPT, **dict(options, layers=layers), attention=True)
    assert F.scaled_dot_product_attention is sdpa  # observed for the run, given back after it
    for key, image in plain.images.items():
        assert np.array_equal(np.asarray(image), np.asarray(mapped.images[key])), key  # bit-identical
    tokens = len(mapped.tokens)
    steps = options["num_inference_steps"]
    for key in plain.images:
        maps = mapped.attention_maps[key]
        assert maps.ndim == 3 and maps.shape[0] == tokens and np.isfinite(maps).all() and (maps >= 0).all()
        assert mapped.attention_mass[key].shape == (steps, tokens)
        if family in ("stable-diffusion", "stable-diffusion-xl", "pixart"):  # keys are the lensed tokens only:
            assert np.allclose(maps.sum(axis=0), steps, atol=1e-3)  # probabilities sum to 1 per step and pixel
        else:  # joint or added attention: the text keys hold part of the probability, the rest is the image's
            assert (maps.sum(axis=0) <= steps + 1e-3).all()
    overlay = mapped.attention(layers[-1], "red", seed=1, overlay=True)
    assert overlay.size == mapped.image(layers[-1], 1).size
    heat = mapped.attention(layers[-1], "red")
    assert heat.shape == (mapped.image(layers[-1]).height, mapped.image(layers[-1]).width) and heat.min() >= 0


def test_a_map_is_what_the_attention_probabilities_say():
    """Recompute one map from the raw probabilities diffusers' own attention would use (get_attention_scores on
    the module's own projections), without the capture, and compare."""
    pipe = tiny_stable_diffusion()
    lens = dl.Lens(pipe)
    result = lens.run(PROMPT, layers=[4], seeds=[0], num_inference_steps=1, guidance_scale=7.5, use_cache=False,
                      attention=True)  # fmt: skip
    recorded = []

    def record(module, args, kwargs, output):
        hidden, context = args[0], kwargs["encoder_hidden_states"]
        query = module.head_to_batch_dim(module.to_q(hidden))
        key = module.head_to_batch_dim(module.to_k(context))
        probs = module.get_attention_scores(query, key)  # (batch·heads, queries, keys)
        batch = hidden.shape[0]
        recorded.append(probs.reshape(batch, module.heads, *probs.shape[1:])[batch // 2 :].mean(1))

    sites = [m for n, m in pipe.unet.named_modules() if n.endswith("attn2")]
    handles = [m.register_forward_hook(record, with_kwargs=True) for m in sites]
    try:
        lens.run(PROMPT, layers=[4], seeds=[0], num_inference_steps=1, guidance_scale=7.5, use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    grids = {}
    for probs in recorded:  # each site: (1, queries, tokens) → tokens × side × side, summed per resolution
        side = int(probs.shape[1] ** 0.5)
        grids[side] = grids.get(side, 0) + probs[0].T.reshape(-1, side, side)
    finest = max(grids)
    total = sum(
        F.interpolate(g[None], size=(finest, finest), mode="bilinear", align_corners=False)[0] if s != finest else g
        for s, g in grids.items()
    )
    expected = (total / len(recorded)).detach().numpy()
    assert np.allclose(result.attention_maps[(4, 0)], expected, atol=1e-5)


def test_settings_select_steps_sites_and_heads_and_words_average_their_pieces():
    lens = dl.Lens(tiny_stable_diffusion())
    every = lens.run(PROMPT, layers=[4], num_inference_steps=3, attention=True, use_cache=False)
    first = lens.run(PROMPT, layers=[4], num_inference_steps=3, attention=True, attention_steps="0", use_cache=False)
    assert np.allclose(first.attention_mass[(4, 0)], every.attention_mass[(4, 0)][:1])
    assert np.allclose(first.attention_maps[(4, 0)].sum(axis=0), 1, atol=1e-3)  # one step summed
    head = lens.run(PROMPT, layers=[4], num_inference_steps=3, attention=True, attention_heads=[0], use_cache=False)
    assert not np.allclose(head.attention_maps[(4, 0)], every.attention_maps[(4, 0)])
    with pytest.raises(ValueError, match=r"attention_steps \[5\]: every value must be in 0..2"):
        lens.resolve(PROMPT, num_inference_steps=3, attention=True, attention_steps="5")
    with pytest.raises(ValueError, match="turn attention on too"):
        lens.resolve(PROMPT, attention_heads=[0])
    with pytest.raises(ValueError, match="no attention maps: run the lens with attention=True"):
        lens.run(PROMPT, layers=[4], num_inference_steps=1).attention(4, "red")
    with pytest.raises(KeyError, match="'dog' is not a word of this prompt"):
        every.attention(4, "dog")
    with pytest.raises(ValueError, match=r"attention_resolutions \[999\] match no attention site of this run: its "
                       r"sites have query grids of side \d"):  # fmt: skip
        lens.run(PROMPT, layers=[4], num_inference_steps=2, attention=True, attention_resolutions="999")
    for module in (m for n, m in lens.pipe.unet.named_modules() if n.endswith("attn2")):
        assert not module._forward_hooks and not module._forward_pre_hooks  # the refusal left no hook behind


def test_word_maps_are_the_mean_of_their_pieces():
    from difflens_widgets.core.results import token_positions

    tokens = ["<|startoftext|>", "a</w>", "g", "re", "en</w>", "tri", "an", "gle</w>", "<|endoftext|>"]
    assert token_positions(tokens, "green") == [2, 3, 4] and token_positions(tokens, "triangle") == [5, 6, 7]
    assert token_positions(["▁a", "▁red", "▁cir", "cle", "</s>"], "circle") == [2, 3]  # T5's pieces
    with pytest.raises(KeyError, match="not a word"):
        token_positions(tokens, "re")  # a piece, not a word


def test_hooks_are_gone_after_a_failure_and_a_cancel():
    pipe = tiny_stable_diffusion()
    lens = dl.Lens(pipe)
    sdpa = F.scaled_dot_product_attention
    sites = [m for n, m in pipe.unet.named_modules() if n.endswith("attn2")]

    def fail(*a, **k):
        raise RuntimeError("denoiser failed")

    original = pipe.unet.forward
    pipe.unet.forward = fail
    try:
        with pytest.raises(RuntimeError, match="denoiser failed"):
            lens.run(PROMPT, layers=[4], num_inference_steps=2, attention=True, use_cache=False)
    finally:
        pipe.unet.forward = original
    stopped = lens.run(PROMPT, layers=[1, 4], num_inference_steps=3, max_batch=1, attention=True, use_cache=False,
                       progress=lambda done, total, preview: done == 2)  # fmt: skip
    assert not stopped.complete and set(stopped.attention_maps) == set(stopped.images)
    for module in sites:
        assert not module._forward_hooks and not module._forward_pre_hooks
    assert F.scaled_dot_product_attention is sdpa and capture_module._patch_users == 0


def test_a_family_without_a_place_for_the_tokens_refuses_clearly():
    flux = TINY_FAMILIES["flux"]()
    with pytest.raises(ValueError, match="only as a pooled vector.*text_encoder_2"):
        dl.Lens(flux, encoder="text_encoder").resolve(PROMPT, attention=True)


def test_maps_survive_copies_and_per_token_runs(tiny_pipe):
    lens = dl.Lens(tiny_pipe)
    result = lens.run(PROMPT, layers=[4], num_inference_steps=1, attention=True)
    again = lens.run(PROMPT, layers=[4], num_inference_steps=1, attention=True)  # from the cache: a copy
    assert np.array_equal(again.attention_maps[(4, 0)], result.attention_maps[(4, 0)])
    again.attention_maps[(4, 0)][:] = 0
    assert lens.run(PROMPT, layers=[4], num_inference_steps=1, attention=True).attention_maps[(4, 0)].any()
    tokens = lens.run("a red circle", layers=[4], num_inference_steps=1, attention=True, per_token=True)
    assert all(r.attention_maps[(4, 0)].shape[0] == len(r.tokens) for r in tokens)
    assert torch.is_tensor(torch.as_tensor(tokens[0].attention_maps[(4, 0)]))


def test_compared_and_tuned_panels_carry_their_own_maps(tiny_pipe):
    from difflens_widgets.analyses.panels import run_panels

    lens = dl.Lens(tiny_pipe)
    normal, no_norm = run_panels(lens, PROMPT, compare="final_norm", layers=[1], num_inference_steps=1, attention=True)
    assert normal.result.attention_maps.keys() == no_norm.result.attention_maps.keys() == {(1, 0)}
    assert not np.allclose(normal.result.attention_maps[(1, 0)], no_norm.result.attention_maps[(1, 0)])
    tuned = dl.Lens(tiny_stable_diffusion(seed=1))  # other weights: a stand-in for a fine-tune
    panels = run_panels(lens, PROMPT, tuned=tuned, layers=[1], num_inference_steps=1, attention=True)
    with_maps = [p for p in panels if p.result.attention_maps]
    assert [p.key for p in panels] == ["raw", "tuned", "difference"] and [p.key for p in with_maps] == ["raw", "tuned"]
    assert not np.allclose(with_maps[0].result.attention_maps[(1, 0)], with_maps[1].result.attention_maps[(1, 0)])


def test_map_numbers_find_a_bump_and_say_a_flat_map_is_flat():
    from difflens_widgets.core.attention_stats import FLAT_SPREAD, map_stats

    ys, xs = np.mgrid[0:64, 0:64] + 0.5
    bump = 1.0 + 3 * np.exp(-((xs - 48) ** 2 + (ys - 16) ** 2) / (2 * 3**2))  # a floor and a bump at (0.75, 0.25)
    region = (xs - 48) ** 2 + (ys - 16) ** 2 <= 10**2
    stats = map_stats(bump, region)
    assert np.allclose(stats["peak"], [0.75, 0.25], atol=0.01)
    assert np.allclose(stats["centroid"], [0.75, 0.25], atol=0.01) and stats["spread"] < 0.08
    assert stats["inside"] > 0.95 and stats["peak_inside"] is True
    assert map_stats(bump, ~region)["inside"] < 0.05 and map_stats(bump, ~region)["peak_inside"] is False
    flat = map_stats(np.full((8, 8), 0.3))
    assert np.allclose(flat["centroid"], [0.5, 0.5]) and abs(flat["spread"] - FLAT_SPREAD) < 0.01
    with pytest.raises(ValueError, match="the region is \\(4, 4\\), the map \\(8, 8\\)"):
        map_stats(np.ones((8, 8)), np.ones((4, 4), bool))


def test_word_regions_are_the_named_objects_blobs():
    from difflens_widgets.toy.annotate import word_regions
    from difflens_widgets.toy.world import Scene, ShapeObject, render

    red, blue = ShapeObject("circle", "red", "large", 16, 32, 10), ShapeObject("square", "blue", "large", 48, 32, 10)
    image = render(Scene("", "relation", (red, blue)))
    found = word_regions(image, "a red circle left of a blue square")
    assert set(found) == {"red", "circle", "blue", "square"} and found["red"] is found["circle"]
    assert found["red"][32, 16] and not found["red"][32, 48] and found["blue"][32, 48]
    assert found["red"].sum() > 200  # the blob, not a pixel
    twice = word_regions(render(Scene("", "relation", (red, ShapeObject("circle", "blue", "large", 48, 32, 10)))),
                         "a red circle left of a blue circle")  # fmt: skip
    assert set(twice) == {"red", "blue"}  # "circle" names both objects: no single place it should land
    assert set(word_regions(image, "a green star")) == set()  # not drawn: nothing to land in


def test_the_toy_attention_study_counts_hits_against_a_shuffled_baseline():
    """The study's counts on a short toy run: every drawn object's word counted once per image, hits and baseline
    hits within n, the rates inside their Wilson intervals; a one-prompt group is refused (no blob to shuffle)."""
    from difflens_widgets.studies.attention import measure, rates

    groups = {"single object": ["a red circle", "a blue square"]}
    counts = measure("toy", [0, 1], 3, groups=groups, layers=[0, 8])
    table = {kind: rates(c) for kind, c in counts["single object"].items()}
    for kind in ("colour", "shape"):
        assert set(table[kind]) <= {0, 8}
        for layer, c in counts["single object"][kind].items():
            assert 0 < c["n"] <= 2 * 2  # two prompts x two seeds, one object each
            assert 0 <= c["hits"] <= c["n"] and 0 <= c["baseline"] <= c["n"]
            assert 0 <= c["inside"] <= c["n"]
            r = table[kind][layer]
            assert r["hit_interval"][0] <= r["hit"] <= r["hit_interval"][1]
            assert r["baseline_interval"][0] <= r["baseline"] <= r["baseline_interval"][1]
    with pytest.raises(ValueError, match="at least two prompts"):
        measure("toy", [0], 2, groups={"one": ["a red circle"]}, layers=[8])


def test_the_conditional_rows_follow_the_familys_guidance_layout():
    from difflens_widgets.core.attention import AttentionCapture, AttentionSettings, _conditional_rows

    assert _conditional_rows(4, cfg=True) == slice(2, 4)  # diffusers' [unconditional; conditional]
    assert _conditional_rows(4, cfg=True, guidance="batch-conditional-first") == slice(0, 2)  # Z-Image's order
    assert _conditional_rows(4, cfg=True, guidance="calls") == slice(0, 4)  # the unconditional call is skipped
    assert _conditional_rows(4, cfg=False) == slice(0, 4)
    with pytest.raises(ValueError, match="guidance layout must be one of"):
        AttentionCapture([], AttentionSettings(), slice(0, None), 1.0, guidance="interleaved")
