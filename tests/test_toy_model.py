"""The shipped toy model: it loads offline, generates, the lens runs over it, and the report works."""

import json

import numpy as np
import pytest
import torch

import difflens_widgets as dl
from difflens_widgets.models import TOY_MODEL_DIR
from difflens_widgets.toy import train
from difflens_widgets.toy.annotate import judge
from difflens_widgets.toy.report import FAMILIES, evaluation_prompts, run_report
from difflens_widgets.toy.world import World


@pytest.fixture(scope="module")
def toy():
    return dl.load_pipeline("toy", device="cpu")


def test_toy_is_a_small_safetensors_pipeline():
    weights = list(TOY_MODEL_DIR.rglob("*.safetensors"))
    assert {w.parent.name for w in weights} == {"unet", "vae", "text_encoder"}
    assert not list(TOY_MODEL_DIR.rglob("*.bin"))
    assert sum(f.stat().st_size for f in TOY_MODEL_DIR.rglob("*") if f.is_file()) < 30e6


def test_toy_loads_and_generates(toy):
    assert type(toy).__name__ == "StableDiffusionPipeline" and toy.unet.dtype == torch.float32
    assert toy.text_encoder.config.num_hidden_layers == 8
    image = toy("a red circle", num_inference_steps=5, generator=torch.Generator().manual_seed(0)).images[0]
    assert image.size == (64, 64)


def test_lens_over_toy(toy):
    res = dl.Lens(toy).run("a red circle left of a blue square", seeds=[0], num_inference_steps=8)
    assert res.layers == list(range(9))
    own = toy("a red circle left of a blue square", num_inference_steps=8,
              generator=torch.Generator().manual_seed(0)).images[0]
    assert np.abs(np.asarray(own, dtype=int) - np.asarray(res.image(8), dtype=int)).max() <= 2
    assert np.abs(np.asarray(res.image(0), dtype=int) - np.asarray(res.image(8), dtype=int)).mean() > 5


def test_toy_draws_single_coloured_objects(toy):
    res = dl.Lens(toy).run(["a red circle", "a blue square"], layers=[8], seeds=[0, 1, 2, 3],
                           num_inference_steps=20)
    for result in res:
        hits = [judge(result.image(8, s), result.prompt)["both"] for s in result.seeds]
        assert sum(hits) >= 3, (result.prompt, hits)


def test_report_on_a_tiny_subset(tmp_path):
    table = run_report("toy", seeds=1, steps=2, per_family=1, out=tmp_path, final_layer=False)
    saved = json.loads((tmp_path / "emergence.json").read_text())
    assert (tmp_path / "emergence.png").stat().st_size > 10_000
    for variant in ("final_norm", "no_final_norm"):
        assert set(saved[variant]) == set(FAMILIES)
        relation = saved[variant]["relation"]
        assert set(relation) == {"objects", "colors", "both", "relation"}
        assert [int(k) for k in relation["both"]] == list(range(9))
        assert all(0.0 <= v <= 1.0 for aspect in relation.values() for v in aspect.values())
    assert table["final_norm"]["object"]["objects"][8] in (0.0, 1.0)  # one prompt, one seed


def test_final_layer_accuracy_scores_only_the_last_layer(toy, count_calls):
    from difflens_widgets.toy.report import final_layer_accuracy

    lens = dl.Lens(toy)
    unet = count_calls(toy.unet)
    scores = final_layer_accuracy(lens, {"relation": ["a red circle above a blue square"]}, [0, 1], 2, 7.5)
    assert set(scores["relation"]) == {"objects", "colors", "both", "relation"}
    assert all(v in (0.0, 0.5, 1.0) for v in scores["relation"].values())
    assert unet.calls[0][0][0].shape[0] == 4  # one layer × two seeds, doubled by guidance


def test_evaluation_prompts_use_held_out_pairs():
    prompts = evaluation_prompts()
    assert len(prompts["colored"]) == 36 and len(prompts["and"]) == 63 and len(prompts["relation"]) == 63
    assert prompts["rare color"][0].startswith("a pink")


def test_loader_workers_render_the_same_batches_in_order():
    """Rendering in worker processes (the GPU path) must not change which batch a step sees."""
    plain = list(train.step_batches(seed=3, start=5, stop=9, batch_size=2, workers=0))
    parallel = list(train.step_batches(seed=3, start=5, stop=9, batch_size=2, workers=2))
    assert [b[0] for b in plain] == [b[0] for b in parallel] == [5, 6, 7, 8]
    for (_, images_a, captions_a), (_, images_b, captions_b) in zip(plain, parallel):
        assert captions_a == captions_b and torch.equal(images_a, images_b)
    reference = train.batch_for_step(World(3), 3, 7, 2)
    assert plain[2][2] == reference[1] and torch.equal(plain[2][1], reference[0])


def test_time_budget_stops_with_a_checkpoint_and_an_export(tmp_path):
    common = ["--out", str(tmp_path), "--vae-steps", "2", "--vae-batch", "2", "--batch", "2",
              "--checkpoint-every", "100", "--export-every", "100", "--unet-channels", "32,64"]
    train.main(common + ["--steps", "50", "--max-minutes", "0"])
    log = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["stopped_at"] for r in log if "stopped_at" in r] == [1]
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=True)["step"] == 1
    pipe = dl.load_pipeline(tmp_path / "pipeline", device="cpu")
    assert tuple(pipe.unet.config.block_out_channels) == (32, 64)


def test_training_is_seeded_and_resumable(tmp_path):
    world = World(0)
    a = train.batch_for_step(world, 0, 7, 4)
    b = train.batch_for_step(World(0), 0, 7, 4)
    assert a[1] == b[1] and torch.equal(a[0], b[0])
    common = ["--out", str(tmp_path), "--vae-steps", "2", "--vae-batch", "2", "--batch", "2",
              "--checkpoint-every", "1", "--export-every", "100"]
    train.main(common + ["--steps", "1"])
    train.main(common + ["--steps", "2"])
    log = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    unet_steps = [r["step"] for r in log if r.get("stage") == "unet" and "loss" in r]
    assert unet_steps == [1, 2]  # the second call resumed at step 1 instead of starting over
    pipe = dl.load_pipeline(tmp_path / "pipeline", device="cpu")
    assert pipe.text_encoder.config.num_hidden_layers == 8


def test_report_plot_says_what_to_install_without_matplotlib(tmp_path, monkeypatch):
    import builtins

    from difflens_widgets.toy import report

    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name.startswith("matplotlib"):
            raise ImportError("No module named 'matplotlib'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    with pytest.raises(ImportError, match=r"pip install 'difflens-widgets\[report\]'"):
        report.plot({"final_norm": {}}, tmp_path / "emergence.png")
