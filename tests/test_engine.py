"""The lens's invariants, checked on outputs of a tiny random Stable Diffusion pipeline."""

import json
import threading
import time

import numpy as np
import pytest
import torch

import difflens_widgets as dl
from difflens_widgets.testing import tiny_stable_diffusion

PROMPT = "a red circle left of a blue square"
TOL = 2  # out of 255


def pixels(image):
    return np.asarray(image, dtype=np.int16)


def max_diff(a, b):
    return int(np.abs(pixels(a) - pixels(b)).max())


def pipeline_image(pipe, seed, steps=4, guidance=7.5, **kwargs):
    gen = torch.Generator("cpu").manual_seed(seed)
    return pipe(PROMPT, num_inference_steps=steps, guidance_scale=guidance, generator=gen, **kwargs).images[0]


@pytest.fixture
def lens(tiny_pipe):
    return dl.Lens(tiny_pipe)


@pytest.mark.parametrize("guidance", [7.5, 1.0])
def test_final_layer_reproduces_pipeline(tiny_pipe, lens, guidance):
    res = lens.run(PROMPT, seeds=[0, 3], num_inference_steps=4, guidance_scale=guidance)
    assert res.layers == [0, 1, 2, 3, 4] and res.seeds == [0, 3]
    for seed in (0, 3):
        assert max_diff(res.image(4, seed), pipeline_image(tiny_pipe, seed, guidance=guidance)) <= TOL


def test_final_layer_reproduces_pipeline_with_stochastic_scheduler():
    pipe = tiny_stable_diffusion(scheduler="euler_ancestral")
    res = dl.Lens(pipe).run(PROMPT, layers=[2, 4], seeds=[1, 2], num_inference_steps=4)
    for seed in (1, 2):
        assert max_diff(res.image(4, seed), pipeline_image(pipe, seed)) <= TOL


def test_batched_equals_sequential(lens):
    kwargs = dict(seeds=[0, 1], num_inference_steps=3, use_cache=False)
    batched = lens.run(PROMPT, max_batch=3, **kwargs)
    sequential = lens.run(PROMPT, sequential=True, **kwargs)
    assert batched.images.keys() == sequential.images.keys()
    for key in batched.images:
        assert max_diff(batched.images[key], sequential.images[key]) <= TOL


def test_layers_differ(lens):
    res = lens.run(PROMPT, num_inference_steps=3)
    images = [pixels(res.image(layer)) for layer in res.layers]
    for i in range(len(images)):
        for j in range(i + 1, len(images)):
            assert np.abs(images[i] - images[j]).mean() > 1.0, (res.layers[i], res.layers[j])


def test_one_text_encoder_pass(tiny_pipe, lens, count_calls):
    counter = count_calls(tiny_pipe.text_encoder)
    lens.run(PROMPT, seeds=[0, 1], num_inference_steps=2, negative_prompt="blue", use_cache=False)
    assert len(counter) == 1


def test_same_noise_for_every_layer_and_normal_negative(tiny_pipe, lens, count_calls):
    unet = count_calls(tiny_pipe.unet)
    res = lens.run(PROMPT, layers=[0, 2, 4], seeds=[0, 1], num_inference_steps=2, use_cache=False)
    args, kwargs = unet.calls[0]
    latents = args[0]  # (uncond batch ; cond batch), items ordered (layer, seed)
    n = len(res.layers) * len(res.seeds)
    cond_latents = latents[n:]
    for layer_index in range(1, 3):
        for seed_index in range(2):
            torch.testing.assert_close(cond_latents[layer_index * 2 + seed_index], cond_latents[seed_index])
    assert not torch.equal(cond_latents[0], cond_latents[1])  # different seeds, different noise
    context = kwargs["encoder_hidden_states"]
    uncond, cond = context[:n], context[n:]
    for row in uncond[1:]:  # every unconditional row is the normal final-layer embedding of ""
        torch.testing.assert_close(row, uncond[0])
    final_empty = tiny_pipe.text_encoder(
        tiny_pipe.tokenizer([""], padding="max_length", return_tensors="pt").input_ids
    )[0][0]
    torch.testing.assert_close(uncond[0], final_empty, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(cond[0], torch.from_numpy(res.embeddings[0]))


def test_lens_negative_lenses_the_unconditional_branch(tiny_pipe, lens, count_calls):
    unet = count_calls(tiny_pipe.unet)
    lens.run(PROMPT, layers=[0, 4], num_inference_steps=1, lens_negative=True, use_cache=False)
    context = unet.calls[0][1]["encoder_hidden_states"]
    assert not torch.allclose(context[0], context[1])  # uncond rows now differ by layer


def test_embeddings_are_final_norm_of_hidden_states(tiny_pipe, lens):
    res = lens.run(PROMPT, layers=[1, 4], num_inference_steps=3)
    raw = lens.run(PROMPT, layers=[1, 4], num_inference_steps=3, final_norm=False)
    ids = tiny_pipe.tokenizer([PROMPT], padding="max_length", return_tensors="pt").input_ids
    with torch.no_grad():
        out = tiny_pipe.text_encoder(ids, output_hidden_states=True)
    np.testing.assert_allclose(raw.embeddings[1], out.hidden_states[1][0].numpy(), atol=1e-5)
    np.testing.assert_allclose(res.embeddings[4], out.last_hidden_state[0].numpy(), atol=1e-5)
    assert not np.allclose(res.embeddings[1], raw.embeddings[1])
    assert max_diff(res.image(1), raw.image(1)) > 0
    assert res.tokens[:3] == ["<|startoftext|>", "a</w>", "red</w>"]


def test_snapshots_and_progress(lens):
    calls = []
    res = lens.run(
        PROMPT,
        layers=[0, 4],
        seeds=[0],
        num_inference_steps=5,
        snapshot_every=2,
        max_batch=1,
        progress=lambda done, total, preview: calls.append((done, total, preview)),
        use_cache=False,
    )
    assert [c[0] for c in calls] == list(range(0, 11)) and {c[1] for c in calls} == {10}  # 0: at once
    previews = [c[2] for c in calls if c[2] is not None]
    assert [p.step for p in previews] == [2, 4, 5, 2, 4, 5]
    assert [step for step, _ in res.snapshots[(0, 0)]] == [2, 4, 5]
    # the last snapshot is the predicted clean image of the last step: close to the final image
    last = res.snapshots[(4, 0)][-1][1]
    assert last.size == res.image(4).size
    assert np.abs(pixels(last) - pixels(res.image(4))).mean() < 8


def test_cancel_keeps_finished_layers(lens):
    def stop_in_second_chunk(done, total, preview):
        return done == 4  # chunk 1 = steps 1..3, chunk 2 starts at step 4

    res = lens.run(
        PROMPT, layers=[0, 1, 2], num_inference_steps=3, max_batch=1, progress=stop_in_second_chunk, use_cache=False
    )
    assert not res.complete
    assert sorted(res.images) == [(0, 0)]
    again = lens.run(PROMPT, layers=[0, 1, 2], num_inference_steps=3, max_batch=1)  # cancelled runs aren't cached
    assert again.complete and len(again.images) == 3


def test_cancel_method(lens):
    res = lens.run(
        PROMPT,
        layers=[0, 1],
        num_inference_steps=3,
        max_batch=1,
        use_cache=False,
        progress=lambda done, total, preview: lens.cancel() if done == 1 else None,
    )
    assert not res.complete and res.images == {}


def test_cache_serves_repeat_without_unet(tiny_pipe, lens, count_calls):
    first = lens.run(PROMPT, layers=[0, 4], num_inference_steps=2)
    unet = count_calls(tiny_pipe.unet)
    second = lens.run(PROMPT, layers=[0, 4], num_inference_steps=2)
    assert len(unet) == 0 and second is not first
    assert all(np.array_equal(np.asarray(first.images[k]), np.asarray(second.images[k])) for k in first.images)
    second.images.clear(), second.params.clear(), second.embeddings[0].fill(0)  # a user's edits to one answer
    third = lens.run(PROMPT, layers=[0, 4], num_inference_steps=2)
    assert len(unet) == 0 and third.images.keys() == first.images.keys() and third.params == first.params
    assert np.array_equal(third.embeddings[0], first.embeddings[0])
    lens.run(PROMPT, layers=[0, 4], num_inference_steps=3)
    assert len(unet) > 0


@pytest.mark.parametrize("size", [-1, 1.5, True, "4"])
def test_cache_size_is_checked(tiny_pipe, size):
    with pytest.raises(ValueError, match="cache_size must be an integer ≥ 0"):
        dl.Lens(tiny_pipe, cache_size=size)


def test_cache_size_zero_caches_nothing(tiny_pipe, count_calls):
    lens = dl.Lens(tiny_pipe, cache_size=0)
    lens.run(PROMPT, layers=[4], num_inference_steps=1)
    unet = count_calls(tiny_pipe.unet)
    lens.run(PROMPT, layers=[4], num_inference_steps=1)
    assert len(unet) > 0 and len(lens._cache) == 0


def test_a_cancel_before_a_run_does_not_touch_it_and_one_during_it_is_never_lost(tiny_pipe):
    lens = dl.Lens(tiny_pipe)
    lens.cancel()  # nothing running: no effect on the next run
    assert lens.run(PROMPT, layers=[0, 1], num_inference_steps=2, use_cache=False).complete
    started, release = threading.Event(), threading.Event()
    results = {}

    def slow(done, total, preview):
        started.set()
        release.wait(10)

    first = threading.Thread(
        target=lambda: results.setdefault(
            "first", lens.run(PROMPT, layers=[0, 1], num_inference_steps=2, max_batch=1, use_cache=False, progress=slow)
        )
    )
    first.start()
    assert started.wait(10)
    second = threading.Thread(
        target=lambda: results.setdefault(
            "second", lens.run(PROMPT, layers=[2], num_inference_steps=2, use_cache=False)
        )
    )
    second.start()  # waits for the pipeline; starting it must not clear the cancel below
    time.sleep(0.2)
    lens.cancel()
    release.set()
    first.join(20), second.join(20)
    assert not results["first"].complete and not results["second"].complete  # both started before the cancel
    assert lens.run(PROMPT, layers=[2], num_inference_steps=2, use_cache=False).complete


@pytest.mark.parametrize("stop_at, complete, layers_kept", [(4, True, [0, 1]), (2, False, [0])])
def test_a_stop_at_a_chunks_last_step_keeps_that_chunk(tiny_pipe, stop_at, complete, layers_kept):
    res = dl.Lens(tiny_pipe).run(
        PROMPT,
        layers=[0, 1],
        num_inference_steps=2,
        max_batch=1,
        use_cache=False,
        progress=lambda done, total, preview: done == stop_at,
    )
    assert res.complete is complete and sorted(l for l, _ in res.images) == layers_kept


def test_cache_is_bounded(tiny_pipe):
    lens = dl.Lens(tiny_pipe, cache_size=2)
    for steps in (1, 2, 3):
        lens.run(PROMPT, layers=[4], num_inference_steps=steps)
    assert len(lens._cache) == 2


def test_prompt_list_shares_one_encoder_pass(tiny_pipe, lens, count_calls):
    counter = count_calls(tiny_pipe.text_encoder)
    results = lens.run([PROMPT, "a green circle"], layers=[4], num_inference_steps=2, use_cache=False)
    assert len(counter) == 1 and [r.prompt for r in results] == [PROMPT, "a green circle"]
    assert max_diff(results[0].image(4), results[1].image(4)) > 0


def test_grid_and_save(tmp_path, lens):
    res = lens.run(PROMPT, layers=[0, 2, 4], seeds=[0, 1], num_inference_steps=2)
    grid = res.grid()
    side = res.image(0).width * 4  # 32 px images are enlarged 4× for legible labels
    assert grid.size == (80 + 3 * side, 26 + 22 + 2 * side)  # row labels, the prompt, the layer labels
    folder = res.save(tmp_path / "out")
    meta = json.loads((folder / "lens.json").read_text())
    assert meta["prompt"] == PROMPT and meta["layers"] == [0, 2, 4] and meta["seeds"] == [0, 1]
    assert meta["params"]["num_inference_steps"] == 2 and meta["params"]["scheduler"] == "DDIMScheduler"
    assert len(list(folder.glob("layer*_seed*.png"))) == 6
    reloaded = pixels(__import__("PIL.Image").Image.open(folder / "layer02_seed1.png"))
    assert np.array_equal(reloaded, pixels(res.image(2, 1)))
    with pytest.raises(KeyError, match="seed 9"):
        res.image(0, 9)


@pytest.mark.parametrize(
    "kwargs, error, text",
    [
        (dict(layers=9), ValueError, "0..4"),
        (dict(layers="x"), ValueError, "integers"),
        (dict(seeds=["a"]), TypeError, "seeds"),
        (dict(seeds=[0.5]), TypeError, "not an integer"),
        (dict(num_inference_steps=0), ValueError, "in 1..1000"),
        (dict(num_inference_steps=10**6), ValueError, "in 1..1000"),
        (dict(guidance_scale=float("inf")), ValueError, r"in 0\.\.100"),
        (dict(guidance_scale=1e20), ValueError, r"in 0\.\.100 .*got 1e\+20"),
        (dict(height=10**6), ValueError, "at most 4096"),
        (dict(seeds=[0, 2**32]), ValueError, "0..4294967295"),
        (dict(seeds=range(2000)), ValueError, "limited to 4096"),
        (dict(final_norm="no"), TypeError, "final_norm must be True, False or None"),
        (dict(lens_negative=1), TypeError, "lens_negative must be True or False"),
        (dict(progress=5), TypeError, "progress must be a function"),
        (dict(guidance_scale=-2), ValueError, "guidance_scale"),
        (dict(height=36), ValueError, "multiple of 8"),
        (dict(width=20), ValueError, "multiple of 8"),
        (dict(max_batch=0), ValueError, "max_batch"),
        (dict(snapshot_every=-1), ValueError, "snapshot_every"),
        (dict(negative_prompt=3), TypeError, "negative_prompt"),
    ],
)
def test_bad_input_raises_before_any_model_call(tiny_pipe, lens, count_calls, kwargs, error, text):
    unet, encoder = count_calls(tiny_pipe.unet), count_calls(tiny_pipe.text_encoder)
    with pytest.raises(error, match=text):
        lens.run(PROMPT, **kwargs)
    assert len(unet) == 0 and len(encoder) == 0


def test_empty_prompt_list(lens):
    with pytest.raises(ValueError, match="empty"):
        lens.run([])


def test_unsupported_family_lists_supported():
    class NotSD:
        components = {"transformer": None}

    with pytest.raises(ValueError, match="Supported: stable-diffusion"):
        dl.Lens(NotSD())
    with pytest.raises(TypeError, match="diffusers pipeline"):
        dl.Lens(object())


def test_long_prompt_warns_naming_cut_words(lens):
    long = "a red circle and a blue square and a green circle and a red square left of a cat"
    with pytest.warns(UserWarning, match="cut: .*cat"):
        lens.run(long, layers=[4], num_inference_steps=1)


def test_snapshots_leave_the_schedulers_tuple_as_the_pipeline_reads_it():
    """PixArt's pipeline reads the scheduler's ``[1]`` (the predicted clean sample) when it runs one step: with
    snapshots on (the dashboard's default), the recorded step must still return the scheduler's own tuple."""
    from difflens_widgets.testing import tiny_pixart

    lens = dl.Lens(tiny_pixart())
    plain = lens.run(PROMPT, layers=[1, 3], num_inference_steps=1, use_cache=False)
    snapped = lens.run(PROMPT, layers=[1, 3], num_inference_steps=1, snapshot_every=1, use_cache=False)
    assert max_diff(snapped.image(3), plain.image(3)) == 0 and [s for s, _ in snapped.snapshots[(3, 0)]] == [1]
