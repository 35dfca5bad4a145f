"""The toy DreamBooth: instance rendering, the stripe measure, and a short end-to-end run with the tracker."""

import json

import numpy as np
import pytest

import difflens_widgets as dl
from difflens_widgets import similarity
from difflens_widgets.studies import dreambooth
from difflens_widgets.toy.world import World, render

pytestmark = pytest.mark.slow  # the quick loop (pytest -m "not slow") leaves these out


def test_instance_is_one_striped_triangle_the_world_never_draws():
    images = dreambooth.instance_images(6, seed=3)
    assert images[0].size == (64, 64)
    assert all(0.25 < dreambooth.stripe_share(im) < 0.6 for im in images)
    world = World(0)
    assert max(dreambooth.stripe_share(render(world.sample())) for _ in range(40)) == 0.0
    again = dreambooth.instance_images(6, seed=3)
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(images, again))


def test_short_dreambooth_run_writes_tuned_model_tracker_and_report(tmp_path):
    toy = dl.load_pipeline("toy", device="cpu")
    lines = []
    run = dict(steps=2, every=1, eval_seeds=1, class_count=2, eval_steps=3)  # plumbing, not pictures
    report = dreambooth.run(tmp_path, **run, base=toy, log=lines.append)
    assert (
        set(report["before"])
        == set(report["after"])
        == {"cos_xon_triangle_per_layer", "xon_stripe_share", "class_prompt_draws_triangle"}
    )
    assert list(report["before"]["cos_xon_triangle_per_layer"]) == list(range(9))
    assert report["before"] != report["after"]  # two steps of lr 5e-5 already move the text encoder
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["after"]["cos_xon_triangle_per_layer"]["8"] == report["after"]["cos_xon_triangle_per_layer"][8]
    tracked = json.loads((tmp_path / "tracker" / "tracker.json").read_text())
    assert [r["step"] for r in tracked["records"]] == [0, 1, 2]
    assert (tmp_path / "tracker" / "evolution.png").exists()
    assert "layer | before | after" in lines[-1]
    tuned = dl.load_tuned(toy, tmp_path / "tuned")  # text_encoder/ + unet/ folders
    assert tuned.vae is toy.vae and tuned.unet is not toy.unet
    first = report["after"]["cos_xon_triangle_per_layer"]
    again = similarity.token_similarity(tuned, "a xon triangle", "xon", "a triangle", "triangle")
    assert np.allclose(again.values, [first[l] for l in again.layers], atol=2e-3)  # saved fp32 weights reload


def test_cli_rejects_non_positive_counts(capsys):
    with pytest.raises(SystemExit):
        dreambooth.main(["--out", "x", "--steps", "0"])
    assert "--steps must be ≥ 1" in capsys.readouterr().err
