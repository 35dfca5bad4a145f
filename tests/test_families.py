"""Every pipeline family through its adapter, plus per-token, token-range, skip-layer and cross-model lenses.

Each family is a tiny random pipeline built from configs (no download). The key invariant: the layer the pipeline
itself conditions on, lensed as the pipeline does it and with the other encoders at their normal output,
reproduces the pipeline's own image for the same seed.
"""

import numpy as np
import pytest
import torch

import difflens_widgets as dl
from difflens_widgets.testing import TINY_FAMILIES, tiny_chroma, tiny_pixart, tiny_sdxl, tiny_stable_diffusion

PROMPT = "a red circle"
# family → (expected lensed blocks L, the pipeline's own layer, guidance, extra call kwargs)
EXPECTED = {
    "stable-diffusion": (4, 4, 5.0, {}),
    "stable-diffusion-xl": (5, 4, 5.0, {}),  # text_encoder_2, penultimate
    "stable-diffusion-3": (3, 3, 5.0, {}),  # T5
    "flux": (3, 3, 3.5, {"height": 32, "width": 32}),  # T5; guidance is FLUX's distilled guidance
    "chroma": (3, 3, 4.0, {}),  # T5 with its mask, one padding token kept; CFG as a second call
    "flux2-klein": (36, 27, 4.0, {}),  # Qwen3; its taps 9, 18, 27 scaled to depth l
    "flux2": (40, 30, 4.0, {}),  # Mistral 3; its taps 10, 20, 30 scaled to depth l; guidance distilled
    "qwen-image": (4, 4, 4.0, {"negative_prompt": ""}),  # Qwen2.5-VL's last layer; true CFG needs a negative
    "lumina2": (4, 3, 4.0, {}),  # Gemma 2's raw penultimate layer behind a system prompt
    "sana": (4, 4, 4.0, {"height": 32, "width": 32}),  # Gemma 2's last layer, most of the instruction dropped
    "cogview4": (4, 3, 4.0, {}),  # GLM-4's raw penultimate layer, left-padded to a multiple of 16
    "hidream": (4, 4, 4.0, {}),  # Llama: the encoder stopped at layer l (every deeper tap reads l)
    "pixart": (3, 3, 5.0, {}),
    "deepfloyd-if": (3, 3, 5.0, {}),
}


def pixels(image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def own_image(pipe, lens, guidance, size):
    extra = {k: v for k, v in lens.adapter.call_kwargs().items() if k != "negative_prompt"}
    if lens.adapter.family in ("pixart", "deepfloyd-if"):
        extra["clean_caption"] = False
    return pipe(
        prompt=PROMPT,
        num_inference_steps=3,
        **lens.adapter.guidance_kwargs(guidance),
        generator=torch.Generator().manual_seed(0),
        **size,
        **extra,
    ).images[0]


@pytest.mark.parametrize("family", list(TINY_FAMILIES))
def test_each_family_reproduces_its_own_image_at_its_own_layer(family, count_calls):
    pipe = TINY_FAMILIES[family]()
    lens = dl.Lens(pipe)
    blocks, own, guidance, size = EXPECTED[family]
    assert lens.adapter.family == family and lens.num_layers == blocks and lens.adapter.own_layer == own
    encoders = [count_calls(getattr(pipe, spec.component)) for spec in lens.adapter.specs]
    res = lens.run(PROMPT, seeds=0, num_inference_steps=3, guidance_scale=guidance, other_encoders="normal", **size)
    assert [len(calls) for calls in encoders] == [1] * len(encoders)  # one pass each, whatever the layers
    assert res.layers == list(range(blocks + 1)) and len(res.images) == blocks + 1
    reference = own_image(pipe, lens, guidance, size)
    assert np.abs(pixels(res.image(own)) - pixels(reference)).max() <= 2
    assert not np.array_equal(pixels(res.image(0)), pixels(res.image(own)))  # the layers do differ


def test_sdxl_other_encoder_empty_by_default_and_either_encoder_can_be_lensed():
    pipe = tiny_sdxl()
    default = dl.Lens(pipe).run(PROMPT, layers=[4], seeds=0, num_inference_steps=2)
    normal = dl.Lens(pipe).run(PROMPT, layers=[4], seeds=0, num_inference_steps=2, other_encoders="normal")
    assert default.params["other_encoders"] == "empty" and default.params["final_norm"] is False
    assert not np.array_equal(pixels(default.image(4)), pixels(normal.image(4)))
    first = dl.Lens(pipe, encoder="text_encoder")
    assert first.num_layers == 4 and first.adapter.own_layer == 3
    first_run = first.run(PROMPT, seeds=0, num_inference_steps=2, guidance_scale=5.0, other_encoders="normal")
    own = pipe(PROMPT, num_inference_steps=2, guidance_scale=5.0, generator=torch.Generator().manual_seed(0)).images[0]
    assert np.abs(pixels(first_run.image(3)) - pixels(own)).max() <= 2
    with pytest.raises(
        ValueError,
        match=r"encoder 'text_encoder_3' is not a text encoder.*\['text_encoder', "
        r"'text_encoder_2'\]",
    ):
        dl.Lens(pipe, encoder="text_encoder_3")


def test_pooled_embeddings_are_normal_unless_lensed():
    pipe = tiny_sdxl()
    lens = dl.Lens(pipe)
    plain = lens.run(PROMPT, layers=[1], seeds=0, num_inference_steps=2)
    pooled = lens.run(PROMPT, layers=[1], seeds=0, num_inference_steps=2, lens_pooled=True)
    assert not np.array_equal(pixels(plain.image(1)), pixels(pooled.image(1)))
    with pytest.raises(ValueError, match="text_encoder gives no pooled embedding.*\\['text_encoder_2'\\]"):
        dl.Lens(pipe, encoder="text_encoder").run(PROMPT, lens_pooled=True)
    with pytest.raises(ValueError, match="gives no pooled embedding"):
        dl.Lens(tiny_stable_diffusion()).run(PROMPT, lens_pooled=True)


def test_flux_clip_lens_drives_only_the_pooled_vector():
    pipe = TINY_FAMILIES["flux"]()
    lens = dl.Lens(pipe, encoder="text_encoder")
    res = lens.run(
        PROMPT, seeds=0, num_inference_steps=2, guidance_scale=3.5, height=32, width=32, other_encoders="normal"
    )
    assert res.layers == [0, 1, 2, 3, 4] and res.params["lens_pooled"] is True
    own = pipe(
        PROMPT,
        num_inference_steps=2,
        guidance_scale=3.5,
        height=32,
        width=32,
        generator=torch.Generator().manual_seed(0),
    ).images[0]
    assert np.abs(pixels(res.image(4)) - pixels(own)).max() <= 2  # pooler_output = final norm of the last block
    assert not np.array_equal(pixels(res.image(0)), pixels(res.image(4)))


@pytest.mark.parametrize("other, pooled_text", [("empty", ""), ("normal", PROMPT)])
def test_flux_t5_lens_feeds_the_empty_prompts_pooled_clip_vector_by_default(count_calls, other, pooled_text):
    """As the paper's FLUX notebook does: with the prompt's own pooled vector the whole prompt would reach the
    model at every T5 layer. Checked against diffusers' own encode_prompt."""
    pipe = TINY_FAMILIES["flux"]()
    transformer = count_calls(pipe.transformer)
    dl.Lens(pipe).run(
        PROMPT,
        layers=[1],
        seeds=0,
        num_inference_steps=1,
        guidance_scale=3.5,
        height=32,
        width=32,
        other_encoders=other,
    )
    fed = transformer.calls[0][1]["pooled_projections"]
    _, expected, _ = pipe.encode_prompt(pooled_text, prompt_2=pooled_text)
    assert torch.allclose(fed, expected, atol=1e-6)


# ---- per-token and token ranges (checked on what reaches the UNet) ----------------------------------------------
def unet_conditioning(counter) -> torch.Tensor:
    return counter.calls[0][1]["encoder_hidden_states"]


def test_per_token_puts_one_prompt_token_into_the_empty_prompts_context(count_calls):
    pipe = tiny_stable_diffusion()
    lens = dl.Lens(pipe)
    empty = lens.adapter.encode([""])
    results = lens.run(PROMPT, layers=[2], seeds=0, num_inference_steps=1, guidance_scale=1.0, per_token=True)
    assert [r.params["token"] for r in results] == [
        "<|startoftext|>",
        "a</w>",
        "red</w>",
        "circle</w>",
        "<|endoftext|>",
    ]
    counter = count_calls(pipe.unet)
    red = lens.run(PROMPT, layers=[2], seeds=0, num_inference_steps=1, guidance_scale=1.0, per_token=True)[2]
    assert len(counter) == 5  # one UNet call per token (one step, no guidance)
    seen = counter.calls[2][1]["encoder_hidden_states"][0]
    neutral = lens.adapter.lens(empty.hidden_states[2][:1])[0]
    prompt_lens = torch.from_numpy(red.embeddings[2])
    assert torch.allclose(seen[2], prompt_lens[2], atol=1e-6)  # the token's own lens embedding at layer 2
    others = [p for p in range(seen.shape[0]) if p != 2]
    assert torch.allclose(seen[others], neutral[others], atol=1e-6)  # everything else: the empty prompt, layer 2
    # the start token is prompt-independent in a causal encoder, so its per-token image does not depend on the prompt
    other_prompt = lens.run(
        "a blue square", layers=[2], seeds=0, num_inference_steps=1, guidance_scale=1.0, per_token=True
    )
    assert np.array_equal(pixels(results[0].image(2)), pixels(other_prompt[0].image(2)))
    assert not np.array_equal(pixels(results[2].image(2)), pixels(other_prompt[2].image(2)))


@pytest.mark.parametrize("token_range", ["prompt", "padding"])
def test_token_ranges_lens_only_their_positions(count_calls, token_range):
    pipe = tiny_stable_diffusion()
    lens = dl.Lens(pipe)
    counter = count_calls(pipe.unet)
    res = lens.run(PROMPT, layers=[1], seeds=0, num_inference_steps=1, guidance_scale=1.0, tokens=token_range)
    seen = unet_conditioning(counter)[0]
    lensed = torch.from_numpy(res.embeddings[1])
    empty_normal = pipe.encode_prompt("", "cpu", 1, False)[0][0]
    real = torch.arange(seen.shape[0]) < 5  # <start> a red circle <end>
    keep = real if token_range == "prompt" else ~real
    assert torch.allclose(seen[keep], lensed[keep], atol=1e-6)
    assert torch.allclose(seen[~keep], empty_normal[~keep], atol=1e-5)


def test_bad_per_token_and_token_range_requests():
    lens = dl.Lens(tiny_stable_diffusion())
    with pytest.raises(ValueError, match="empty"):
        lens.run("   ", per_token=True)
    with pytest.raises(ValueError, match="per_token takes one prompt"):
        lens.run(["a", "b"], per_token=True)
    with pytest.raises(ValueError, match="tokens must be one of 'all', 'prompt', 'padding'"):
        lens.run(PROMPT, tokens="words")
    with pytest.raises(ValueError, match="masks padding positions"):
        dl.Lens(tiny_pixart()).run(PROMPT, tokens="padding")


# ---- skip layers ---------------------------------------------------------------------------------------------
def test_skipped_block_passes_its_input_through(count_calls):
    pipe = tiny_stable_diffusion()
    lens = dl.Lens(pipe)
    plain = lens.run(PROMPT, seeds=0, num_inference_steps=2)
    skipped = lens.run(PROMPT, seeds=0, num_inference_steps=2, skip_layers=[2])
    assert np.array_equal(skipped.embeddings[2], skipped.embeddings[1])
    assert np.array_equal(pixels(skipped.image(2)), pixels(skipped.image(1)))
    assert np.array_equal(skipped.embeddings[1], plain.embeddings[1])  # blocks before the knock-out untouched
    assert not np.allclose(skipped.embeddings[3], plain.embeddings[3])  # and the ones after see the difference
    unet_calls = count_calls(pipe.unet)
    for bad, message in (([0], "blocks are numbered 1..4"), ([5], "out of range"), (["x"], "not an integer")):
        with pytest.raises((ValueError, TypeError), match=message):
            lens.run(PROMPT, skip_layers=bad)
    assert len(unet_calls) == 0


# ---- cross-model lens ----------------------------------------------------------------------------------------
def test_cross_model_lens_feeds_one_encoders_lens_to_another_denoiser(count_calls):
    text_model, image_model = tiny_stable_diffusion(seed=0), tiny_stable_diffusion(seed=1)
    counter = count_calls(image_model.unet)
    res = dl.Lens(image_model).run(
        PROMPT, layers=[2], seeds=0, num_inference_steps=1, guidance_scale=1.0, text_from=text_model
    )
    source = dl.Lens(text_model).embed(PROMPT, [2])[0][2]
    assert np.allclose(res.embeddings[2], source)
    assert torch.allclose(unet_conditioning(counter)[0], torch.from_numpy(source), atol=1e-6)
    assert res.params["text_from"] is not None
    own = dl.Lens(image_model).run(PROMPT, layers=[2], seeds=0, num_inference_steps=1, guidance_scale=1.0)
    assert not np.array_equal(pixels(own.image(2)), pixels(res.image(2)))


def test_cross_model_with_mismatched_shapes_is_refused_before_any_run(count_calls):
    image_model = tiny_stable_diffusion()
    counter = count_calls(image_model.unet)
    with pytest.raises(ValueError, match=r"cross-model lens needs matching conditioning shapes.*\(16, 32\)"):
        dl.Lens(image_model).run(PROMPT, text_from=tiny_pixart())
    assert len(counter) == 0


def test_skip_layers_knock_out_the_prompt_only(count_calls):
    """Independent check: the prompt's states equal a pass over the prompt alone with the blocks bypassed, the
    negative's equal a plain pass; so layers below the knock-out give exactly the plain lens images."""
    from difflens_widgets.adapters import encoders

    pipe = tiny_stable_diffusion()
    lens = dl.Lens(pipe)
    spec = lens.adapter.spec
    knocked = encoders.run_encoder(pipe, spec, [PROMPT], skip=(3, 4))
    normal = encoders.run_encoder(pipe, spec, ["a blue square", ""])
    both = lens.adapter.encode([PROMPT, "a blue square"], skip=(3, 4), prompts=1)
    for layer in range(5):
        assert torch.allclose(both.hidden_states[layer][0], knocked.hidden[layer][0], atol=1e-6)
        assert torch.allclose(both.hidden_states[layer][1:], normal.hidden[layer], atol=1e-6)
    plain = lens.run(PROMPT, layers=[1, 2, 4], seeds=[0, 1], num_inference_steps=2, negative_prompt="a blue square")
    skipped = lens.run(
        PROMPT,
        layers=[1, 2, 4],
        seeds=[0, 1],
        num_inference_steps=2,
        negative_prompt="a blue square",
        skip_layers=[3, 4],
    )
    for seed in (0, 1):
        for layer in (1, 2):
            assert np.array_equal(pixels(skipped.image(layer, seed)), pixels(plain.image(layer, seed)))
        assert np.array_equal(pixels(skipped.image(4, seed)), pixels(skipped.image(2, seed)))
    unet = count_calls(pipe.unet)
    lens.run(PROMPT, layers=[2], seeds=0, num_inference_steps=1, skip_layers=[3], use_cache=False)
    negative_half = unet.calls[0][1]["encoder_hidden_states"][:1]
    own_negative = lens.adapter.unconditional(lens.adapter.encode([""]), 0, False)["prompt_embeds"]
    assert torch.allclose(negative_half, own_negative, atol=1e-6)


def test_skip_layers_in_a_t5_encoder_keeps_the_position_bias_flowing():
    lens = dl.Lens(tiny_pixart())
    plain, _ = lens.embed(PROMPT)
    pipe_run = lens.run(PROMPT, layers=[0, 1, 2, 3], seeds=0, num_inference_steps=1, skip_layers=1)
    assert np.array_equal(pipe_run.embeddings[1], pipe_run.embeddings[0])
    assert np.isfinite(pipe_run.embeddings[3]).all() and not np.allclose(pipe_run.embeddings[3], plain[3])


def test_similarity_and_dashboard_work_on_other_families():
    from difflens_widgets import similarity

    pixart = tiny_pixart()
    sims = similarity.token_similarity(pixart, "a red circle", "red", "a blue circle", "blue")
    assert sims.layers == [0, 1, 2, 3] and sims.values.shape == (4,)
    with pytest.raises(ValueError, match="whose tokens are: a red circle </s>"):
        similarity.token_similarity(pixart, "a red circle", "dog", "a dog", "dog")
    dash = dl.LensDashboard(tiny_sdxl())
    assert dash.final_norm is None and dash.model_info["family"] == "stable-diffusion-xl"
    assert dash.request().main.final_norm is False  # the family's own choice, decided by the engine
    dash.prompt, dash.num_inference_steps, dash.layers = PROMPT, 2, "3:6"
    dash.run()
    assert dash.wait(60) and dash.status == "done", dash.message
    assert [f["layer"] for f in dash.frames] == [3, 4, 5]


def test_chroma_keeps_the_first_padding_token_and_guides_in_a_call_of_its_own(count_calls):
    from difflens_widgets.adapters.chroma import with_first_padding

    pipe = tiny_chroma()
    lens = dl.Lens(pipe)
    transformer = count_calls(pipe.transformer)
    lens.run(PROMPT, layers=[3], guidance_scale=4.0, num_inference_steps=1, use_cache=False)
    assert len(transformer) == 2  # the conditional call, then the unconditional one
    real = int(lens.adapter.encode([PROMPT]).mask[0].sum())
    text_mask = transformer.calls[0][1]["attention_mask"][0, :512]  # then come the image tokens
    assert text_mask[: real + 1].all() and not text_mask[real + 1 :].any()
    opened = with_first_padding(torch.tensor([[1, 1, 0, 0], [1, 0, 1, 0], [1, 1, 1, 1]]))
    assert opened.tolist() == [[1, 1, 1, 0], [1, 1, 1, 0], [1, 1, 1, 1]]  # a per-token mask keeps its holes
    with pytest.raises(ValueError, match="tokens='padding' is meaningless for chroma"):
        lens.resolve(PROMPT, tokens="padding")


@pytest.mark.parametrize("family", list(TINY_FAMILIES))
def test_every_family_says_what_a_run_will_hold_before_running(family, count_calls):
    pipe = TINY_FAMILIES[family]()
    lens = dl.Lens(pipe)
    _, _, _, size = EXPECTED[family]
    denoiser = count_calls(lens.adapter.denoiser)
    plan = lens.run(PROMPT, dry_run=True, **{k: v for k, v in size.items() if k in ("height", "width")})
    assert len(denoiser) == 0 and plan["memory"]["text_pass_bytes"] > 0  # nothing denoised
    assert lens.adapter.text_width == lens.adapter.encode([PROMPT]).hidden_states[0].shape[-1]
