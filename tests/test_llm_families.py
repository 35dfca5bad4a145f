"""The families whose text encoder is a language model (FLUX.2 [klein], Z-Image, Qwen-Image, ...), on tiny random
pipelines built from configs: what "layer l" means for a multi-tap family, one encoder pass for every layer, and a
template that never shows through (word chips, per-token lens, attention maps name the user's words only)."""

import numpy as np
import pytest
import torch
from PIL import Image

import difflens_widgets as dl
from difflens_widgets import testing
from difflens_widgets.analyses.panels import Panel
from difflens_widgets.core.attention_stats import prompt_words
from difflens_widgets.core.results import Tokens
from difflens_widgets.widgets.display import attention_payload

PROMPT = "a red cat left of a blue dog"
WORDS = ["a", "red", "cat", "left", "of", "a", "blue", "dog"]
RUN = dict(num_inference_steps=2, seeds=[0])
IMAGES = [Image.new("RGB", (32, 32), c) for c in ("red", "blue", "green")]


@pytest.fixture(scope="module")
def klein():
    return testing.tiny_flux2_klein()


def shown_words(tokens) -> list[str]:
    return [tokens[p].replace("Ġ", "") for p in tokens.shown]


def test_the_lens_at_layer_l_is_the_pipelines_taps_scaled_to_depth_l(klein):
    adapter = dl.Lens(klein).adapter
    assert adapter.own_layer == 27 and adapter.own_final_norm is False
    assert adapter.tap_layers(27) == [9, 18, 27] and adapter.tap_layers(36) == [12, 24, 36]
    assert adapter.tap_layers(0) == [0, 0, 0] and adapter.tap_layers(3) == [1, 2, 3]
    encoded = adapter.encode([PROMPT])
    mine = adapter.lens_layer(encoded.hidden_states, 27, slice(0, 1), final_norm=False)
    theirs = klein._get_qwen3_prompt_embeds(klein.text_encoder, klein.tokenizer, [PROMPT], max_sequence_length=512)
    torch.testing.assert_close(mine, theirs, rtol=0, atol=0)  # the pipeline's own conditioning, exactly
    layer_9 = adapter.lens_layer(encoded.hidden_states, 9, slice(0, 1), final_norm=False)
    width = encoded.hidden_states[0].shape[-1]
    assert layer_9.shape == mine.shape == (1, 512, 3 * width)
    torch.testing.assert_close(layer_9[..., 2 * width :], mine[..., :width])  # its deepest tap is layer 9


@pytest.mark.parametrize("distilled", [False, True])
def test_the_normal_column_is_the_pipelines_image_and_other_layers_differ(distilled, count_calls):
    pipe = testing.tiny_flux2_klein(distilled=distilled)
    lens = dl.Lens(pipe)
    assert lens.adapter.uses_negative_embeddings is not distilled
    encoder = count_calls(pipe.text_encoder)
    res = lens.run(PROMPT, layers=[0, 9, 27, 36], guidance_scale=4.0, **RUN)
    assert len(encoder) == 1  # one pass over prompt, negative and empty prompt, whatever the number of layers
    assert lens.resolve(PROMPT, guidance_scale=4.0, **RUN).normal_layer == 27
    own = pipe(prompt=PROMPT, guidance_scale=4.0, num_inference_steps=2, generator=torch.Generator().manual_seed(0))
    image = np.asarray(own.images[0], dtype=int)
    assert np.abs(np.asarray(res.image(27), dtype=int) - image).max() <= 2
    assert all(not np.array_equal(np.asarray(res.image(l)), np.asarray(res.image(27))) for l in (0, 9, 36))


def test_the_chat_template_never_shows_through(klein):
    lens = dl.Lens(klein)
    vectors, tokens = lens.embed(PROMPT, layers=[27])
    assert tokens.first > 0 and shown_words(tokens) == WORDS  # "<|im_start|> user ⏎" come before
    assert tokens[0] == "<|im_start|>" and "<think>" in tokens[tokens.real :]
    per_token = lens.run(PROMPT, layers=[27], per_token=True, num_inference_steps=1)
    assert [r.params["token"].replace("Ġ", "") for r in per_token] == WORDS
    assert [r.params["token_position"] for r in per_token] == list(tokens.shown)
    mapped = lens.run(PROMPT, layers=[27], attention=True, **RUN)
    assert prompt_words(mapped) == ["a", "red", "cat", "left", "of", "blue", "dog"]
    payload = attention_payload([Panel("lens", "lens", mapped)])
    assert [w["label"] for w in payload["words"]] == WORDS
    assert payload["words"][1]["positions"] == [tokens.first + 1]
    assert mapped.attention(27, "dog").shape == (32, 32)
    with pytest.raises(KeyError, match="not a word of this prompt, whose tokens are: a red cat left of a blue dog"):
        mapped.attention(27, "assistant")


def test_a_word_the_vocabulary_lacks_is_one_word_of_several_pieces(klein):
    _, tokens = dl.Lens(klein).embed("a red xyz")
    pieces = [tokens[p] for p in tokens.shown]
    assert pieces[:2] == ["a", "Ġred"] and len(pieces) > 3  # xyz: Ġ x y z, or whatever BPE made of it
    from difflens_widgets.core.results import word_spans

    assert [w for w, _ in word_spans(tokens, tokens.shown)] == ["a", "red", "xyz"]


def test_guidance_in_calls_of_its_own_captures_the_conditional_call(klein):
    """The base [klein] runs its unconditional branch as a second transformer call: at the first step (same
    latents either way) the maps with guidance are those without it."""
    lens = dl.Lens(klein)
    options = dict(RUN, layers=[27], attention=True, attention_steps="0", use_cache=False)
    guided = lens.run(PROMPT, guidance_scale=4.0, **options).attention_maps[(27, 0)]
    plain = lens.run(PROMPT, guidance_scale=1.0, **options).attention_maps[(27, 0)]
    np.testing.assert_array_equal(guided, plain)


def test_a_text_encoder_too_shallow_for_the_pipelines_taps_is_refused():
    pipe = testing.tiny_flux2_klein()
    pipe.text_encoder.model.layers = pipe.text_encoder.model.layers[:20]
    with pytest.raises(ValueError, match=r"has 20 layers, but the pipeline reads layers \[9, 18, 27\]"):
        dl.Lens(pipe)


def test_a_saved_klein_folder_loads_in_its_own_precision_and_runs(tmp_path):
    testing.tiny_flux2_klein(distilled=True).save_pretrained(tmp_path)
    pipe = dl.load_pipeline(str(tmp_path))
    res = dl.Lens(pipe).run(PROMPT, layers=[9, 27], **RUN)
    assert res.params["family"] == "flux2-klein" and sorted(res.images) == [(9, 0), (27, 0)]


def test_dashboard_and_similarity_speak_the_users_words(klein):
    from difflens_widgets import similarity

    dash = dl.LensDashboard(klein)
    assert dash.model_info["family"] == "flux2-klein"
    dash.prompt, dash.num_inference_steps, dash.layers, dash.attention = PROMPT, 1, "9,27", True
    dash.run()
    assert dash.wait(60) and dash.status == "done", dash.message
    assert [f["layer"] for f in dash.frames] == [9, 27]
    assert [w["label"] for w in dash.attention_maps["words"]] == WORDS
    heat = similarity.layer_similarity(klein, PROMPT, layers=[9, 27, 36])
    assert heat.values.shape == (3, 3) and np.allclose(np.diag(heat.values), 1, atol=1e-5)
    shift = similarity.token_shift(klein, klein, PROMPT, layers=[27])
    assert [label.split(":")[1] for label in shift.labels] == WORDS and np.allclose(shift.values, 1, atol=1e-5)
    assert similarity.token_similarity(klein, "a red cat", "cat", "a blue cat", "cat").values.shape == (37,)


# ---- Z-Image: one raw penultimate layer, padding removed, guidance above 0 -------------------------------------
ZRUN = dict(num_inference_steps=2, seeds=[0], height=32, width=32)


@pytest.fixture(scope="module")
def z_image():
    return testing.tiny_z_image()


@pytest.mark.parametrize("guidance", [0.0, 4.0])
def test_z_image_normal_column_is_the_pipelines_image(z_image, guidance, count_calls):
    lens = dl.Lens(z_image)
    assert lens.adapter.family == "z-image" and lens.num_layers == 4
    assert lens.adapter.own_layer == 3 and lens.adapter.own_final_norm is False  # hidden_states[-2], raw
    encoder = count_calls(z_image.text_encoder)
    res = lens.run(PROMPT, guidance_scale=guidance, use_cache=False, **ZRUN)
    assert len(encoder) == 1 and res.layers == [0, 1, 2, 3, 4]
    assert lens.resolve(PROMPT, guidance_scale=guidance, **ZRUN).normal_layer == 3
    own = z_image(
        prompt=PROMPT,
        guidance_scale=guidance,
        num_inference_steps=2,
        height=32,
        width=32,
        generator=torch.Generator().manual_seed(0),
    ).images[0]
    assert np.abs(np.asarray(res.image(3), dtype=int) - np.asarray(own, dtype=int)).max() <= 2
    assert not np.array_equal(np.asarray(res.image(0)), np.asarray(res.image(3)))


def test_z_image_hands_the_transformer_the_real_positions_only(z_image, count_calls):
    lens = dl.Lens(z_image)
    transformer = count_calls(z_image.transformer)
    lens.run(PROMPT, layers=[3], guidance_scale=4.0, num_inference_steps=1, height=32, width=32, use_cache=False)
    args, kwargs = transformer.calls[0]
    captions = args[2] if len(args) > 2 else kwargs["cap_feats"]
    encoded = lens.adapter.encode([PROMPT])
    real = int(encoded.mask[0].sum())  # template and prompt, no padding
    assert [c.shape[0] for c in captions] == [real, int(encoded.mask[1].sum())]  # conditional first, then ""
    per_token = lens.run(PROMPT, layers=[3], per_token=True, num_inference_steps=1, height=32, width=32)
    assert [r.params["token"].replace("Ġ", "") for r in per_token] == WORDS
    with pytest.raises(ValueError, match="tokens='padding' is meaningless for z-image"):
        lens.resolve(PROMPT, tokens="padding")


def test_z_image_maps_read_the_caption_after_the_padded_image(z_image):
    lens = dl.Lens(z_image)
    options = dict(ZRUN, layers=[3], attention=True, attention_steps="0", use_cache=False)
    guided = lens.run(PROMPT, guidance_scale=4.0, **options)  # the negative's shorter caption in the same batch
    plain = lens.run(PROMPT, guidance_scale=0.0, **options)
    np.testing.assert_allclose(guided.attention_maps[(3, 0)], plain.attention_maps[(3, 0)], rtol=1e-5, atol=1e-7)
    assert prompt_words(guided) == ["a", "red", "cat", "left", "of", "blue", "dog"]
    real = int(lens.adapter.encode([PROMPT]).mask[0].sum())  # template and words; 16 image tokens padded to 32
    rows = np.flatnonzero(guided.attention_maps[(3, 0)].any(axis=(1, 2)))
    assert rows.tolist() == list(range(real)) and guided.attention(3, "dog").shape == (32, 32)
    per_token = lens.run(PROMPT, per_token=True, **options)
    empty = int(lens.adapter.encode([""]).mask[0].sum())
    dog = per_token[-1]
    rows = np.flatnonzero(dog.attention_maps[(3, 0)].any(axis=(1, 2)))
    assert rows.tolist() == sorted({*range(empty), dog.params["token_position"]})


def test_z_image_denoiser_taps_read_the_main_layers_image_tokens(z_image):
    from difflens_widgets.denoiser import taps

    assert taps.block_names(z_image) == ["block0", "block1"]  # the main layers, over [image; caption]
    transformer = z_image.transformer
    calls = []
    hook = transformer.register_forward_pre_hook(lambda _m, args: calls.append(args), with_kwargs=False)
    try:
        given = taps.image_features(z_image, IMAGES, timesteps=[100, 900], keep_spatial=True)
    finally:
        hook.remove()
    latents, timestep, captions = calls[1][:3]  # calls[0]: the pipeline call the taps copy their arguments from
    assert [x.shape for x in latents] == [(4, 1, 8, 8)] * 3 and len(captions) == 3  # a list, one per image
    assert torch.allclose(timestep, torch.full((3,), 0.9))  # Z-Image's time runs 1 − σ
    spatial = given.spatial[("block1", 100)]
    assert spatial.shape == (3, 32, 4, 4)  # 16 image tokens of a 32² image, its padding and caption left out
    assert np.allclose(spatial.mean(axis=(2, 3)), given.pooled[("block1", 100)], atol=1e-5)
    assert not np.allclose(given.pooled[("block1", 100)], given.pooled[("block1", 900)])  # t matters
    assert not np.allclose(spatial[0], spatial[1])  # a red and a blue image
    generated = taps.generation_features(z_image, [PROMPT, "a blue dog"], num_inference_steps=2, guidance_scale=4.0)
    assert all(v.shape == (2, 32) for v in generated.pooled.values())  # the conditional half, one row a prompt
    assert not transformer._forward_hooks and not any(m._forward_hooks for m in transformer.modules())


# ---- Qwen-Image: the last layer final-normed, the instruction's prefix dropped, true CFG in calls of its own ------
@pytest.fixture(scope="module")
def qwen_image():
    return testing.tiny_qwen_image()


def test_qwen_image_drops_the_instructions_prefix_as_the_pipeline_does(qwen_image):
    adapter = dl.Lens(qwen_image).adapter
    assert adapter.family == "qwen-image" and adapter.own_layer == 4 and adapter.own_final_norm is True
    encoded = adapter.encode([PROMPT])
    mine = adapter.lens_layer(encoded.hidden_states, 4, slice(0, 1), final_norm=True)
    theirs, mask = qwen_image._get_qwen_prompt_embeds([PROMPT])
    real = int(mask.sum())
    torch.testing.assert_close(mine[:, :real], theirs)  # the pipeline's own conditioning (it pads to the longest)
    assert encoded.mask[0].sum() == real and not encoded.mask[0, real:].any()
    _, tokens = dl.Lens(qwen_image).embed(PROMPT, layers=[4])
    assert tokens.first == 0 and shown_words(tokens) == WORDS  # the prefix is gone; words come first
    assert tokens[tokens.real : tokens.real + 3] == ["<|im_end|>", "Ċ", "<|im_start|>"]  # the closing ones are kept
    assert "system" not in "".join(tokens)


@pytest.mark.parametrize("guidance", [1.0, 4.0])
def test_qwen_image_normal_column_is_the_pipelines_image(qwen_image, guidance, count_calls):
    lens = dl.Lens(qwen_image)
    encoder = count_calls(qwen_image.text_encoder)
    transformer = count_calls(qwen_image.transformer)
    res = lens.run(PROMPT, guidance_scale=guidance, use_cache=False, **RUN)
    assert len(encoder) == 1 and res.layers == [0, 1, 2, 3, 4]
    assert len(transformer) == 2 * (1 + int(guidance > 1))  # two steps; the negative branch is a call of its own
    own = qwen_image(
        prompt=PROMPT,
        negative_prompt="",
        true_cfg_scale=guidance,
        num_inference_steps=2,
        generator=torch.Generator().manual_seed(0),
    ).images[0]
    assert np.abs(np.asarray(res.image(4), dtype=int) - np.asarray(own, dtype=int)).max() <= 2
    assert not np.array_equal(np.asarray(res.image(0)), np.asarray(res.image(4)))
    _, kwargs = transformer.calls[0]
    assert kwargs["encoder_hidden_states"].shape[1] == int(lens.adapter.encode([PROMPT]).mask[0].sum())  # no padding


def test_qwen_image_per_token_and_attention_maps_name_the_users_words(qwen_image):
    lens = dl.Lens(qwen_image)
    per_token = lens.run(PROMPT, layers=[4], per_token=True, num_inference_steps=1)
    assert [r.params["token"].replace("Ġ", "") for r in per_token] == WORDS
    options = dict(RUN, layers=[4], attention=True, attention_steps="0", use_cache=False)
    guided = lens.run(PROMPT, guidance_scale=4.0, **options)
    plain = lens.run(PROMPT, guidance_scale=1.0, **options)
    np.testing.assert_array_equal(guided.attention_maps[(4, 0)], plain.attention_maps[(4, 0)])  # conditional call
    assert prompt_words(guided) == ["a", "red", "cat", "left", "of", "blue", "dog"]
    maps = guided.attention_maps[(4, 0)]
    real = int(lens.adapter.encode([PROMPT]).mask[0].sum())  # the words and the template's closing tokens
    assert maps.shape[0] == len(guided.tokens) and maps[:real].all() and not maps[real:].any()  # padding: none
    assert guided.attention(4, "dog").shape == (32, 32)


# ---- Lumina 2: Gemma 2's raw penultimate layer behind a system prompt, the negative bare, real tokens packed first --
@pytest.fixture(scope="module")
def lumina2():
    return testing.tiny_lumina2()


@pytest.mark.parametrize("guidance", [1.0, 4.0])
def test_lumina2_normal_column_is_the_pipelines_image(lumina2, guidance, count_calls):
    lens = dl.Lens(lumina2)
    assert lens.adapter.family == "lumina2" and lens.adapter.own_layer == 3 and lens.adapter.own_final_norm is False
    encoder = count_calls(lumina2.text_encoder)
    res = lens.run(PROMPT, guidance_scale=guidance, use_cache=False, **RUN)
    assert len(encoder) == 1 and res.layers == [0, 1, 2, 3, 4]
    own = lumina2(
        prompt=PROMPT, guidance_scale=guidance, num_inference_steps=2, generator=torch.Generator().manual_seed(0)
    )
    assert np.abs(np.asarray(res.image(3), dtype=int) - np.asarray(own.images[0], dtype=int)).max() <= 2
    assert not np.array_equal(np.asarray(res.image(0)), np.asarray(res.image(3)))


def test_lumina2_taps_find_the_image_after_each_items_own_caption(lumina2):
    from difflens_widgets.denoiser import taps

    adapter = dl.Lens(lumina2).adapter
    assert taps.block_names(lumina2) == ["block0", "block1"]  # the joint layers
    patch = lumina2.transformer.config.patch_size
    adapter._tapped_layout = ([2, 5], (2 * patch, 2 * patch))  # captions of 2 and 5 tokens, a 2×2 patch grid
    joint = torch.arange(2 * 10 * 3, dtype=torch.float32).reshape(2, 10, 3)  # (items, tokens, channels)
    grid = adapter.block_feature(joint)
    assert grid.shape == (2, 3, 2, 2)
    torch.testing.assert_close(grid[0].flatten(1).T, joint[0, 2:6])  # row by row, after the caption
    torch.testing.assert_close(grid[1].flatten(1).T, joint[1, 5:9])
    generated = taps.generation_features(lumina2, [PROMPT, "a dog"], num_inference_steps=2, guidance_scale=4.0)
    assert all(v.shape[0] == 2 for v in generated.pooled.values())  # captions of different lengths, one row each


def test_lumina2_wraps_the_prompt_but_not_the_negative(lumina2):
    adapter = dl.Lens(lumina2).adapter
    encoded = adapter.encode([PROMPT, "a blue cat"], prompts=1)  # the prompt, then the negative
    embeds, mask, negative, negative_mask = lumina2.encode_prompt(PROMPT, negative_prompt="a blue cat")
    mine = adapter.normal_part(encoded, "text_encoder", 0)
    torch.testing.assert_close(mine.seq, embeds)
    unconditional = adapter.unconditional(encoded, 1, negative_given=True)
    torch.testing.assert_close(unconditional["prompt_embeds"], negative)  # encoded bare, as the pipeline does
    assert unconditional["prompt_attention_mask"].tolist() == negative_mask.tolist()
    assert encoded.tokens[1][:2] == ["<bos>", "a"] and encoded.tokens[0][1] != "a"  # the system prompt comes first
    _, tokens = dl.Lens(lumina2).embed(PROMPT, layers=[3])
    assert tokens.first > 2 and shown_words(tokens) == WORDS


def test_lumina2_maps_land_on_the_encoders_positions_also_per_token(lumina2):
    lens = dl.Lens(lumina2)
    options = dict(RUN, layers=[3], attention=True, attention_steps="0", use_cache=False)
    guided = lens.run(PROMPT, guidance_scale=4.0, **options)
    plain = lens.run(PROMPT, guidance_scale=1.0, **options)
    np.testing.assert_array_equal(guided.attention_maps[(3, 0)], plain.attention_maps[(3, 0)])  # conditional call
    assert prompt_words(guided) == ["a", "red", "cat", "left", "of", "blue", "dog"]
    real = int(lens.adapter.encode([PROMPT]).mask[0].sum())
    maps = guided.attention_maps[(3, 0)]
    assert maps.shape[0] == len(guided.tokens) and maps[:real].all() and not maps[real:].any()
    # per token: the empty prompt's tokens and the one word, packed first for the transformer, put back here
    per_token = lens.run(PROMPT, per_token=True, **options)
    empty = int(lens.adapter.encode([""]).mask[0].sum())
    dog = per_token[-1]
    position = dog.params["token_position"]
    assert dog.params["token"] == "Ġdog" and position > empty
    rows = np.flatnonzero(dog.attention_maps[(3, 0)].any(axis=(1, 2)))
    assert rows.tolist() == [*range(empty), position]


# ---- Sana: Gemma 2's last layer behind a long instruction, of which only the first and last positions are kept ----
@pytest.fixture(scope="module")
def sana():
    return testing.tiny_sana()


def test_sana_keeps_the_positions_the_pipeline_keeps(sana, count_calls):
    lens = dl.Lens(sana)
    adapter = lens.adapter
    assert adapter.family == "sana" and adapter.own_layer == 4 and adapter.instruction.startswith("Given a user")
    encoded = adapter.encode([PROMPT, "a blue cat"], prompts=1)
    instruction = adapter.instruction.split("\n")  # what __call__ hands encode_prompt by default
    embeds, mask, negative, negative_mask = sana.encode_prompt(
        PROMPT, negative_prompt="a blue cat", complex_human_instruction=instruction
    )
    torch.testing.assert_close(adapter.normal_part(encoded, "text_encoder", 0).seq, embeds)
    assert encoded.mask[0].tolist() == mask[0].tolist() and embeds.shape[1] == 300
    unconditional = adapter.unconditional(encoded, 1, negative_given=True)  # encoded bare, as the pipeline does
    torch.testing.assert_close(unconditional["prompt_embeds"], negative)
    assert unconditional["prompt_attention_mask"].tolist() == negative_mask.tolist()
    tokens = encoded.tokens[0]
    assert tokens[0] == "<bos>" and shown_words(Tokens.shown_in(encoded, 0)) == WORDS
    # the instruction ends "User Prompt: ", whose space the first word's token absorbs: counted alone the instruction
    # has one token more than inside the prompt, so the pipeline keeps the start token, then the words
    assert Tokens.shown_in(encoded, 0).first == 1
    encoder = count_calls(sana.text_encoder)
    per_token = lens.run(PROMPT, layers=[4], per_token=True, num_inference_steps=1, height=32, width=32)
    assert len(encoder) == 1 and [r.params["token"].replace("Ġ", "") for r in per_token] == WORDS
    mapped = lens.run(PROMPT, layers=[4], attention=True, num_inference_steps=2, height=32, width=32)
    assert prompt_words(mapped) == ["a", "red", "cat", "left", "of", "blue", "dog"]


# ---- CogView 4: GLM-4's raw penultimate layer, each text left-padded to a multiple of 16, no mask anywhere ---------
@pytest.fixture(scope="module")
def cogview4():
    return testing.tiny_cogview4()


def test_cogview4_encodes_each_text_as_the_pipeline_encodes_it_alone(cogview4, count_calls):
    lens = dl.Lens(cogview4)
    adapter = lens.adapter
    assert adapter.family == "cogview4" and adapter.own_layer == 3 and adapter.own_final_norm is False
    long_negative = "a blue cat left of a red dog above a green bird below a yellow fish"
    encoder = count_calls(cogview4.text_encoder)
    encoded = adapter.encode([PROMPT, long_negative], prompts=1)
    assert len(encoder) == 1  # three texts of different lengths, one pass
    for index, text in enumerate([PROMPT, long_negative, ""]):
        theirs = cogview4._get_glm_embeds(text)  # left-padded to a multiple of 16, alone
        length = int(encoded.mask[index].sum())
        assert length == theirs.shape[1] and length % 16 == 0
        mine = adapter.normal_part(encoded, "text_encoder", index).seq[:, :length]
        torch.testing.assert_close(mine, theirs)
    tokens = Tokens.shown_in(encoded, 0)  # the left pads, then the text's own tokens (its start token shown)
    assert shown_words(tokens) == ["<bos>", *WORDS] and set(tokens[: tokens.first]) == {"<|endoftext|>"}


def test_cogview4_maps_and_per_token_name_the_words_and_read_the_image_stream(cogview4):
    lens = dl.Lens(cogview4)
    options = dict(RUN, layers=[3], attention=True, attention_steps="0", use_cache=False)
    guided = lens.run(PROMPT, guidance_scale=4.0, **options)
    plain = lens.run(PROMPT, guidance_scale=1.0, **options)
    np.testing.assert_array_equal(guided.attention_maps[(3, 0)], plain.attention_maps[(3, 0)])  # conditional call
    assert prompt_words(guided) == ["a", "red", "cat", "left", "of", "blue", "dog"]
    per_token = lens.run(PROMPT, per_token=True, **options)
    assert [r.params["token"].replace("Ġ", "") for r in per_token] == ["<bos>", *WORDS]
    empty = int(lens.adapter.encode([""]).mask[0].sum())  # 16: 15 pads and the start token
    for result in (per_token[0], per_token[-1]):  # the word at its position in the empty prompt's handed-on ones
        rows = np.flatnonzero(result.attention_maps[(3, 0)].any(axis=(1, 2)))
        assert rows.tolist() == sorted({*range(empty), result.params["token_position"]})
    image, text = torch.randn(1, 16, 8), torch.randn(1, 16, 8)  # its blocks return (image, text)
    torch.testing.assert_close(lens.adapter.block_feature((image, text)), image.transpose(1, 2).reshape(1, 8, 4, 4))


# ---- FLUX.2 [dev]: Mistral 3's raw layers 10, 20, 30 stacked, after a system message; guidance distilled ----------
def test_flux2_dev_stacks_its_taps_after_the_system_message(count_calls):
    from transformers import ProcessorMixin

    class TextProcessor(ProcessorMixin):  # the real model loads Mistral's PixtralProcessor as its tokenizer
        attributes = ["tokenizer"]
        tokenizer_class = "PreTrainedTokenizerFast"

        def __init__(self, tokenizer, chat_template=None):
            super().__init__(tokenizer, chat_template=chat_template)

    pipe = testing.tiny_flux2()
    lens = dl.Lens(pipe)
    adapter = lens.adapter
    assert adapter.family == "flux2" and adapter.own_layer == 30 and adapter.tap_layers(40) == [13, 27, 40]
    assert adapter.uses_negative_embeddings is False and not adapter.guides(4.0)
    theirs = pipe._get_mistral_3_small_prompt_embeds(pipe.text_encoder, pipe.tokenizer, [PROMPT])
    mine = adapter.lens_layer(adapter.encode([PROMPT]).hidden_states, 30, slice(0, 1), final_norm=False)
    torch.testing.assert_close(mine, theirs, rtol=0, atol=0)
    pipe.tokenizer = TextProcessor(pipe.tokenizer, chat_template=testing.MISTRAL_CHAT_TEMPLATE)
    transformer = count_calls(pipe.transformer)
    res = dl.Lens(pipe).run(PROMPT, layers=[10, 30], guidance_scale=4.0, **RUN)
    assert len(transformer) == 2  # two steps, no negative branch
    own = pipe(prompt=PROMPT, guidance_scale=4.0, num_inference_steps=2, generator=torch.Generator().manual_seed(0))
    assert np.abs(np.asarray(res.image(30), dtype=int) - np.asarray(own.images[0], dtype=int)).max() <= 2
    assert shown_words(res.tokens) == WORDS and res.tokens[0] == "<bos>"  # one start token, from the template
    assert res.tokens[1 : res.tokens.first] != [] and "<bos>" not in res.tokens[1:]


def test_a_flux2_dev_encoder_too_shallow_for_its_taps_is_refused():
    pipe = testing.tiny_flux2()
    pipe.text_encoder.model.language_model.layers = pipe.text_encoder.model.language_model.layers[:25]
    with pytest.raises(ValueError, match=r"FLUX.2 \[dev\] text encoder has 25 layers, but .* \[10, 20, 30\]"):
        dl.Lens(pipe)


# ---- HiDream: every Llama layer to its own block; the lens stops the encoder at layer l ------------------------------
@pytest.fixture(scope="module")
def hidream():
    return testing.tiny_hidream()


def test_hidream_taps_read_the_image_tokens_of_both_kinds_of_block(hidream):
    from difflens_widgets.denoiser import taps

    assert taps.block_names(hidream) == ["block0", "single0", "single1"]  # dual-stream, then single-stream
    calls = []
    hook = hidream.transformer.register_forward_pre_hook(
        lambda _m, args, kwargs: calls.append(kwargs), with_kwargs=True
    )
    try:
        given = taps.image_features(hidream, IMAGES, timesteps=[100, 900], keep_spatial=True)
    finally:
        hook.remove()
    llama = calls[1]["encoder_hidden_states_llama3"]  # calls[0]: the pipeline call the taps copy from
    assert llama.shape[:2] == (hidream.text_encoder_4.config.num_hidden_layers, 3)  # layers first, then the batch
    width = hidream.transformer.config.num_attention_heads * hidream.transformer.config.attention_head_dim
    for block in ("block0", "single1"):
        assert given.spatial[(block, 100)].shape == (3, width, 4, 4)  # 32² / (4× VAE · 2×2 patches): text left out
    assert not np.allclose(given.spatial[("single1", 100)][0], given.spatial[("single1", 100)][1])  # red vs blue


def test_hidream_stops_the_encoder_at_layer_l(hidream, count_calls):
    lens = dl.Lens(hidream)
    adapter = lens.adapter
    assert adapter.family == "hidream" and adapter.encoder_name == "text_encoder_4" and adapter.own_layer == 4
    encoded = adapter.encode([PROMPT])
    hidden = encoded.hidden_states
    theirs = hidream._get_llama3_prompt_embeds([PROMPT])  # hidden_states[1:], the last normed
    own = adapter.lens_layer(hidden, 4, slice(0, 1), final_norm=False)
    torch.testing.assert_close(own, theirs, rtol=0, atol=0)
    at_2 = adapter.lens_layer(hidden, 2, slice(0, 1), final_norm=False)
    assert at_2.shape == theirs.shape  # one entry per layer, as the transformer picks them
    for entry, layer in enumerate([1, 2, 2, 2]):  # taps deeper than 2 read layer 2
        torch.testing.assert_close(at_2[entry], hidden[layer][:1], rtol=0, atol=0)
    vectors, _ = lens.embed(PROMPT, layers=[2])
    np.testing.assert_array_equal(vectors[2], hidden[2][0].numpy())  # a result keeps layer l itself
    encoders = [count_calls(getattr(hidream, f"text_encoder{s}")) for s in ("", "_2", "_3", "_4")]
    res = lens.run(PROMPT, layers=[1, 4], guidance_scale=4.0, other_encoders="normal", **RUN)
    assert [len(e) for e in encoders] == [1, 1, 1, 1]
    own_image = hidream(
        prompt=PROMPT, guidance_scale=4.0, num_inference_steps=2, generator=torch.Generator().manual_seed(0)
    )
    assert np.abs(np.asarray(res.image(4), dtype=int) - np.asarray(own_image.images[0], dtype=int)).max() <= 2
    assert res.embeddings[4].shape == hidden[4][0].shape and shown_words(res.tokens)[1:] == WORDS


def test_hidream_maps_a_llama_word_on_both_of_its_copies(hidream):
    options = dict(RUN, layers=[2], attention=True, attention_steps="0", use_cache=False)
    llama = dl.Lens(hidream)
    guided = llama.run(PROMPT, guidance_scale=4.0, **options)  # [negative; prompt] in one batch
    plain = llama.run(PROMPT, guidance_scale=1.0, **options)
    np.testing.assert_allclose(guided.attention_maps[(2, 0)], plain.attention_maps[(2, 0)], rtol=1e-5, atol=1e-8)
    assert prompt_words(guided) == ["a", "red", "cat", "left", "of", "blue", "dog"]
    sites = [name for name, _, _ in llama.adapter.attention_sites()]
    assert sites == ["double_stream_blocks.0.block.attn1", *[f"single_stream_blocks.{i}.block.attn1" for i in (0, 1)]]
    assert llama.adapter.attention_text() == [slice(128, 256), slice(256, 384)]  # after T5's 128 positions
    t5 = dl.Lens(hidream, encoder="text_encoder_3")
    assert t5.adapter.attention_text() == slice(0, 128)
    t5_maps = t5.run(PROMPT, **options).attention_maps[(2, 0)]
    assert t5_maps.shape == guided.attention_maps[(2, 0)].shape and not np.allclose(
        t5_maps, plain.attention_maps[(2, 0)]
    )


def test_hidream_per_token_t5_and_the_sizes_it_draws(hidream):
    lens = dl.Lens(hidream)
    per_token = lens.run(PROMPT, layers=[2], per_token=True, num_inference_steps=1)
    assert [r.params["token"].replace("Ġ", "") for r in per_token] == ["<bos>", *WORDS]
    t5 = dl.Lens(hidream, encoder="text_encoder_3")
    assert t5.num_layers == 3 and t5.adapter.own_final_norm is True
    assert sorted(t5.run(PROMPT, layers=[0, 3], **RUN).images) == [(0, 0), (3, 0)]
    with pytest.raises(ValueError, match=r"HiDream draws every image at its own area \(32² pixels\), so 64×64"):
        lens.resolve(PROMPT, height=64, width=64)


def test_the_dashboard_offers_hidreams_encoders_and_lenses_the_one_picked(hidream):
    dash = dl.LensDashboard(hidream)
    info = dash.model_info
    assert info["family"] == "hidream" and info["encoder"] == "text_encoder_4" and info["several_encoders"]
    assert info["encoders"] == ["text_encoder", "text_encoder_2", "text_encoder_3", "text_encoder_4"]
    dash.encoder = "text_encoder_3"
    dash.prompt, dash.num_inference_steps, dash.layers = PROMPT, 1, "1,3"
    dash.run()
    assert dash.wait(60) and dash.status == "done", dash.message
    assert [f["layer"] for f in dash.frames] == [1, 3] and dash.model_info["encoder"] == "text_encoder_3"


def test_the_command_line_runs_a_saved_language_model_family_and_maps_its_words(tmp_path, capsys):
    from PIL import Image

    from difflens_widgets.cli import main

    testing.tiny_qwen_image().save_pretrained(tmp_path / "qwen")
    out = tmp_path / "grid.png"
    argv = ["run", PROMPT, "--model", str(tmp_path / "qwen"), "--layers", "2,4", "--steps", "1", "--device", "cpu"]
    assert main(argv + ["--attention", "dog", "--out", str(out)]) == 0
    written = capsys.readouterr().out
    assert "layers [2, 4]" in written and "grid_attention_dog.png" in written
    assert Image.open(out).size[0] > 2 * 32 and (tmp_path / "grid_attention_dog.png").exists()


def test_a_sweep_over_a_language_model_family_stores_what_lens_run_draws(tmp_path):
    import json

    from PIL import Image

    from difflens_widgets import sweeps

    testing.tiny_lumina2().save_pretrained(tmp_path / "lumina2")
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in (PROMPT, "a blue cat")))
    options = dict(layers="1,3", seeds="0", num_inference_steps=1)
    out = tmp_path / "sweep"
    report = dl.sweep(prompts, out, model=str(tmp_path / "lumina2"), scorers=[], attention=True, log=lambda *_: None,
                      **options)  # fmt: skip
    assert report.processed == 2 and report.images == 4
    rows = sweeps.load_rows(out)
    lens = dl.Lens(dl.load_pipeline(str(tmp_path / "lumina2")))
    for row in rows.itertuples():
        expected = lens.run(row.prompt, layers=[row.layer], seeds=[0], num_inference_steps=1).image(row.layer)
        stored = np.asarray(Image.open(out / row.image), dtype=int)
        assert np.abs(stored - np.asarray(expected, dtype=int)).max() <= 1
        words = set(json.loads(row.attention))  # the prompt's words, never the system prompt's
        assert "cat" in words and words <= {"a", "red", "cat", "left", "of", "blue", "dog"}


@pytest.mark.parametrize("build", [testing.tiny_chroma, testing.tiny_flux2], ids=["chroma", "flux2"])
def test_per_token_and_maps_name_the_prompts_tokens(build):
    lens = dl.Lens(build())
    layer = lens.adapter.own_layer
    options = dict(layers=[layer], num_inference_steps=1, height=32, width=32)
    per_token = lens.run(PROMPT, per_token=True, **options)
    shown = Tokens.shown_in(lens.adapter.encode([PROMPT]), 0)
    assert [r.params["token"] for r in per_token] == [shown[p] for p in shown.shown]
    assert {w.replace("Ġ", "").replace("▁", "") for w in WORDS} <= {
        r.params["token"].replace("Ġ", "").replace("▁", "") for r in per_token
    }
    mapped = lens.run(PROMPT, attention=True, **options)
    assert prompt_words(mapped) == ["a", "red", "cat", "left", "of", "blue", "dog"]


def test_a_run_keeps_only_the_hidden_states_its_layers_read(klein):
    adapter = dl.Lens(klein).adapter
    full = adapter.encode([PROMPT])
    some = adapter.encode([PROMPT], layers=[3])  # taps 1, 2, 3; the pipeline's own 9, 18, 27 (negative, empty)
    kept = [l for l, h in enumerate(some.hidden_states) if h is not None]
    assert kept == [1, 2, 3, 9, 18, 27] and len(some.hidden_states) == 37
    for layer in kept:
        torch.testing.assert_close(some.hidden_states[layer], full.hidden_states[layer], rtol=0, atol=0)
    lens = dl.Lens(klein)
    few = lens.run(PROMPT, layers=[3], dry_run=True)["memory"]["text_pass_bytes"]
    every = lens.run(PROMPT, dry_run=True)["memory"]["text_pass_bytes"]
    assert few * 37 == every * 6  # six hidden states kept instead of 37
