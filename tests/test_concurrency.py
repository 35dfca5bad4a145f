"""A background run (a dashboard's worker thread) and foreground calls on the same pipeline, or on a base and a
tuned pipeline sharing one text encoder: every answer equals its single-threaded reference, nothing crashes."""

import threading

import numpy as np
import pytest

import difflens_widgets as dl
from difflens_widgets import similarity
from difflens_widgets.testing import tiny_stable_diffusion

PROMPTS = ["a red circle left of a blue square", "a green square", "a blue circle above a red square"]


def background_runs(lens, skip_layers, stop: threading.Event, errors: list, count: list):
    while not stop.is_set():
        try:
            lens.run(PROMPTS[0], layers=[1, 2, 4], num_inference_steps=1, use_cache=False, skip_layers=skip_layers)
            count.append(1)
        except Exception as err:  # noqa: BLE001 - reported by the test
            errors.append(err)
            return


@pytest.mark.parametrize("skip_layers", [None, [2, 3]])
@pytest.mark.parametrize("shared_encoder", [False, True], ids=["one pipeline", "base + tuned share an encoder"])
def test_foreground_embeds_beside_a_background_run_are_exact(skip_layers, shared_encoder):
    base = tiny_stable_diffusion()
    foreground_pipe = base
    if shared_encoder:  # a tuned pipeline whose UNet changed but whose text encoder is the base's object
        foreground_pipe = tiny_stable_diffusion(seed=1)
        foreground_pipe.text_encoder = base.text_encoder
    background, foreground = dl.Lens(base), dl.Lens(foreground_pipe)
    reference = {p: foreground.embed(p, layers=[0, 2, 4])[0] for p in PROMPTS}
    reference_sim = similarity.layer_similarity(foreground, PROMPTS[1], layers=[0, 4]).values

    stop, errors, runs = threading.Event(), [], []
    worker = threading.Thread(target=background_runs, args=(background, skip_layers, stop, errors, runs))
    worker.start()
    try:
        for i in range(400):  # each pass overlaps the background run's encoder pass at a different point
            prompt = PROMPTS[i % len(PROMPTS)]
            vectors, _ = foreground.embed(prompt, layers=[0, 2, 4])
            for layer, expected in reference[prompt].items():
                assert np.array_equal(vectors[layer], expected), (i, prompt, layer)
            if i % 100 == 0:
                assert np.array_equal(
                    similarity.layer_similarity(foreground, PROMPTS[1], layers=[0, 4]).values, reference_sim
                )
    finally:
        stop.set()
        worker.join(60)
    assert not errors, errors
    assert runs, "the background run never finished a pass"
