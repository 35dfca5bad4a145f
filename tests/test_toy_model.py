"""The shipped toy model: it loads offline, generates, the lens runs over it, and the report works."""

import json

import numpy as np
import pytest
import torch

import difflens_widgets as dl
from difflens_widgets.core.models import EMBEDDED_MODELS, embedded_name, is_toy
from difflens_widgets.studies.report import FAMILIES, TIER_FAMILIES, evaluation_prompts, run_report, summary
from difflens_widgets.studies.report import balance as report_balance
from difflens_widgets.sweeps.report import wilson
from difflens_widgets.toy.annotate import judge


@pytest.fixture(scope="module")
def toy():
    return dl.load_pipeline("toy", device="cpu")


@pytest.fixture(scope="module")
def toy_t5():
    return dl.load_pipeline("toy-t5", device="cpu")


@pytest.mark.parametrize("name, denoiser", [("toy", "unet"), ("toy-t5", "transformer")])
def test_embedded_models_are_small_safetensors_pipelines(name, denoiser):
    folder = EMBEDDED_MODELS[name]
    weights = list(folder.rglob("*.safetensors"))
    assert {w.parent.name for w in weights} == {denoiser, "vae", "text_encoder"}
    assert not list(folder.rglob("*.bin"))
    assert sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) < 30e6


def test_toy_t5_is_a_pixart_pipeline_with_a_bidirectional_t5(toy_t5):
    assert type(toy_t5).__name__ == "PixArtAlphaPipeline" and toy_t5.transformer.dtype == torch.float32
    assert type(toy_t5.text_encoder).__name__ == "T5EncoderModel" and toy_t5.text_encoder.config.num_layers == 8
    assert is_toy(toy_t5) and embedded_name(toy_t5) == "toy-t5"


def test_lens_over_toy_t5_ends_at_the_pipelines_own_image(toy_t5):
    prompt = "a red circle left of a blue square"
    res = dl.Lens(toy_t5).run(prompt, seeds=[0], num_inference_steps=8, guidance_scale=4.5)
    assert res.layers == list(range(9))
    own = toy_t5(prompt, num_inference_steps=8, guidance_scale=4.5, height=64, width=64,
                 use_resolution_binning=False, generator=torch.Generator().manual_seed(0)).images[0]  # fmt: skip
    assert np.abs(np.asarray(own, dtype=int) - np.asarray(res.image(8), dtype=int)).max() <= 2


def test_the_t5_toy_binds_objects_layers_after_the_clip_toy(toy, toy_t5):
    """What the second model is for: in the CLIP toy both objects of a pair are drawn from layer 1 on, in the T5 toy
    layer 1 is still a bag of concepts (one shape twice, one colour) and the pair is bound a few layers later."""
    prompt = "a green triangle above a yellow star"
    drawn = {}
    for name, pipe in (("toy", toy), ("toy-t5", toy_t5)):
        res = dl.Lens(pipe).run(prompt, layers=[1, 8], seeds=[0, 1, 2, 3], num_inference_steps=20, guidance_scale=7.5)
        drawn[name] = {l: sum(judge(res.image(l, s), prompt)["both"] for s in res.seeds) for l in (1, 8)}
    assert drawn["toy"][1] >= 3 and drawn["toy"][8] >= 3, drawn
    assert drawn["toy-t5"][1] == 0 and drawn["toy-t5"][8] >= 3, drawn


def test_toy_loads_and_generates(toy):
    assert type(toy).__name__ == "StableDiffusionPipeline" and toy.unet.dtype == torch.float32
    assert toy.text_encoder.config.num_hidden_layers == 8
    image = toy("a red circle", num_inference_steps=5, generator=torch.Generator().manual_seed(0)).images[0]
    assert image.size == (64, 64)


def test_lens_over_toy(toy):
    res = dl.Lens(toy).run("a red circle left of a blue square", seeds=[0], num_inference_steps=8)
    assert res.layers == list(range(9))
    own = toy(
        "a red circle left of a blue square", num_inference_steps=8, generator=torch.Generator().manual_seed(0)
    ).images[0]
    assert np.abs(np.asarray(own, dtype=int) - np.asarray(res.image(8), dtype=int)).max() <= 2
    assert np.abs(np.asarray(res.image(0), dtype=int) - np.asarray(res.image(8), dtype=int)).mean() > 5


def test_toy_draws_single_coloured_objects(toy):
    res = dl.Lens(toy).run(["a red circle", "a blue square"], layers=[8], seeds=[0, 1, 2, 3], num_inference_steps=20)
    for result in res:
        hits = [judge(result.image(8, s), result.prompt)["both"] for s in result.seeds]
        assert sum(hits) >= 3, (result.prompt, hits)


# plumbing, not pictures: 2 steps, 2 prompts per family for the curves, 3 for the last layer (536 images were 300)
QUICK = dict(seeds=1, steps=2, per_family=2, ablation_per_family=1, last_layer_per_family=3)


@pytest.mark.slow
def test_report_on_a_tiny_subset(tmp_path):
    logs = []
    table = run_report("toy", **QUICK, out=tmp_path, log=logs.append)
    saved = json.loads((tmp_path / "emergence.json").read_text())
    assert (tmp_path / "emergence.png").stat().st_size > 10_000
    for variant, prompts in (("final_norm", 2), ("no_final_norm", 1)):
        relation = {q: saved["variants"][variant][q]["relation"] for q in ("objects", "colors", "both", "relation")}
        assert set(saved["variants"][variant]["both"]) == set(FAMILIES)
        for curve in relation.values():
            assert curve["layers"] == list(range(9)) and curve["prompts"] == prompts
            assert all(lo <= m <= hi for lo, m, hi in zip(curve["low"], curve["mean"], curve["high"]))
    last = saved["last_layer"]
    assert {f: e["prompts"] for f, e in last.items()} == {f: 3 for f in evaluation_prompts(None)}
    assert last["relation"]["relation"]["n"] == 3  # three relation prompts, one seed, the last layer only
    assert "--last-layer-per-family 3" in saved["command"]
    assert saved["balance"]["relation"]["colors"] == {"blue": 1, "green": 1, "red": 1, "yellow": 1}
    assert [f["finding"] for f in saved["findings"]][-2:] == [
        "frequent colours before rare ones",
        "split colour names after one-piece names of the same frequency",
    ]
    assert set(saved["findings"][-2]["tiers"]) == set(TIER_FAMILIES)
    # each tier's first two prompts name one colour of each kind ("a red circle", "a green square"): both groups
    assert set(saved["pieces"]) == {f"{tier}, {kind}" for tier in TIER_FAMILIES for kind in ("one piece", "split")}
    assert all(curve["n"] == [1] * 9 for curve in saved["pieces"].values())  # one prompt × one seed per layer
    for curve in saved["pieces"].values():  # shares with Wilson intervals, never outside [0, 1]
        assert all(0 <= lo <= m <= hi <= 1 for lo, m, hi in zip(curve["low"], curve["mean"], curve["high"]))
        assert list(zip(curve["low"], curve["high"])) == [wilson(round(m), 1) for m in curve["mean"]]
    text = summary(table)
    assert "| relation | relation | 2 |" in text and "### findings" in text
    assert "| common colour, split | 1 |" in text and "- split colour names after one-piece names" in text
    again = run_report("toy", **QUICK, out=tmp_path, log=logs.append)
    assert any("0 to run" in line for line in logs[-3:])  # the datasets were complete: nothing regenerated
    assert again["variants"] == table["variants"]


def test_evaluation_prompts_are_balanced():
    prompts = evaluation_prompts()
    assert {f: len(p) for f, p in prompts.items()} == {
        "object": 6,
        "colored": 30,
        "and": 44,
        "and (held out)": 44,
        "relation": 44,
        "relation (held out)": 44,
        "common colour": 18,
        "uncommon colour": 12,
        "rare colour": 12,
        "very rare colour": 12,
    }
    from difflens_widgets.toy.annotate import parse_caption
    from difflens_widgets.toy.world import held_out_pairs, pair_key

    held = held_out_pairs()
    for family in ("and", "relation", "and (held out)", "relation (held out)"):
        pairs = [pair_key(*parse_caption(p).objects) for p in prompts[family]]
        assert all((pair in held) == family.endswith("(held out)") for pair in pairs), family
        counts = report_balance(prompts[family][:10])
        assert max(counts["colors"].values()) - min(counts["colors"].values()) <= 2, (family, counts)
    assert len(set(prompts["common colour"])) == 18 and prompts["very rare colour"][0] == "a pink circle"
    assert set(report_balance(prompts["rare colour"][:6])["shapes"]) == {
        "circle",
        "square",
        "triangle",
        "star",
        "cross",
        "diamond",
    }


def test_report_without_matplotlib_writes_numbers_and_says_what_to_install(tmp_path, monkeypatch, capsys):
    import builtins

    from difflens_widgets.studies import report

    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name.startswith("matplotlib"):
            raise ImportError("No module named 'matplotlib'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    assert report.plot({"variants": {"final_norm": {}}}, tmp_path / "emergence.png") is None
    assert "pip install 'difflens-widgets[report]'" in capsys.readouterr().out
    assert not (tmp_path / "emergence.png").exists()


def _curve(mean, n=40, emergence=None, interval=(None, None)):
    bounds = [wilson(round(m * n), n) for m in mean]
    return {
        "layers": list(range(len(mean))),
        "mean": mean,
        "low": [b[0] for b in bounds],
        "high": [b[1] for b in bounds],
        "n": [n] * len(mean),
        "prompts": 10,
        "emergence_layer": emergence,
        "emergence_interval": list(interval),
    }


def test_findings_say_when_a_concept_is_not_learned():
    from difflens_widgets.studies.report import RELATION_CHANCE, findings, findings_text

    rising = _curve([0.0, 0.2, 0.5, 0.9, 0.9], emergence=3, interval=(2, 3))
    early = _curve([0.0, 0.9, 0.9, 0.9, 0.9], emergence=1, interval=(1, 1))
    flat = _curve([0.3, 0.3, 0.3, 0.3, 0.3], emergence=0, interval=(0, 0))
    curves = {
        "colors": {"and": early, "relation": early},
        "both": {"and": rising, "relation": early, "common colour": early, "very rare colour": flat},
        "relation": {"relation": rising},
        "relation_given_both": {"relation": _curve([0.2, 0.25, 0.3, 0.26, RELATION_CHANCE])},
    }
    result = {f["finding"]: f for f in findings(curves, {})}
    assert result["colours before binding (and)"]["holds"] is True  # L1 before L3
    assert result["colours before binding (and)"]["clearly"] is True  # intervals (1, 1) and (2, 3) apart
    relation = result["binding before relations (relation)"]
    assert relation["holds"] is None and relation["relations_learned"] is False  # at chance: nothing to emerge
    assert result["frequent colours before rare ones"]["holds"] is True  # the very rare tier never rises
    curves["relation_given_both"]["relation"] = _curve([0.2, 0.3, 0.5, 0.8, 0.9])
    relation = {f["finding"]: f for f in findings(curves, {})}["binding before relations (relation)"]
    assert relation["relations_learned"] and relation["holds"] is True  # binding at L1, the arrangement at L3
    text = findings_text({"findings": findings(curves, {})})
    assert "- binding before relations (relation): holds clearly — both L1 [1–1], relation L3 [2–3]" in text
    assert "- colours before relations (relation): holds clearly — colors L1 [1–1], relation L3 [2–3]" in text


def test_frequency_against_splitting_groups_tier_prompts_by_their_colour_words_pieces():
    from difflens_widgets.studies.report import findings_text, pieces_finding, pieces_group

    assert pieces_group("a red circle", "common colour") == "common colour, one piece"
    assert pieces_group("a green circle", "common colour") == "common colour, split"  # g|re|en
    assert pieces_group("a brown star", "very rare colour") == "very rare colour, split"  # br|own
    early = _curve([0.0, 0.9, 0.9, 0.9, 0.9], emergence=1, interval=(1, 1))
    late = _curve([0.0, 0.1, 0.2, 0.9, 0.9], emergence=3, interval=(2, 3))
    flat = _curve([0.3, 0.3, 0.3, 0.3, 0.3], emergence=0, interval=(0, 0))
    groups = {
        "common colour, one piece": early,
        "common colour, split": late,
        "rare colour, one piece": early,
        "rare colour, split": early,
        "very rare colour, one piece": flat,  # never rises: not tested
        "very rare colour, split": late,
    }
    finding = pieces_finding(groups)
    assert finding["holds"] is False and finding["split_later_in"] == "1 of 2 tiers"
    assert finding["per_tier"]["common colour"]["split later"] is True
    assert finding["per_tier"]["common colour"]["clearly"] is True  # [1–1] before [2–3]
    assert finding["per_tier"]["very rare colour"]["split later"] is None
    text = findings_text({"findings": [finding]})
    assert "does NOT hold — split later in 1 of 2 tiers: common colour: one piece L1 [1–1], split L3 [2–3]" in text
    groups["rare colour, split"] = late
    assert pieces_finding(groups)["holds"] is True and pieces_finding(groups)["clearly"] is True


def test_each_embedded_model_ships_its_report():
    from difflens_widgets.studies.report import shipped

    assert shipped()["model"] == "toy" and shipped("toy-t5")["model"] == "toy-t5"
    assert "--model toy-t5" in shipped("toy-t5")["command"]
    with pytest.raises(ValueError, match="no report ships for 'sd15'; the embedded models are toy, toy-t5"):
        shipped("sd15")


def test_two_models_reports_side_by_side(tmp_path, capsys):
    """The paper's comparison as one table: per family and question, each model's emergence [interval], last-layer
    share and best no-norm share; a relation at chance says so, and rows with nothing to measure are left out."""
    from difflens_widgets.studies.report import load_report, main, side_by_side

    early = _curve([0.0, 0.9, 0.9, 0.9, 0.9], emergence=1, interval=(1, 1))
    late = _curve([0.0, 0.1, 0.2, 0.9, 0.9], emergence=3, interval=(2, 3))
    chance = _curve([0.0, 0.3, 0.3, 0.3, 0.3], emergence=1, interval=(1, 1))
    always = _curve([1.0] * 5, emergence=0, interval=(0, 0))
    washed = _curve([0.0, 0.4, 0.1, 0.0, 0.0])

    def report(relation, given_both_low):
        return {
            "variants": {
                "final_norm": {"colors": {"relation": early, "object": always}, "relation": {"relation": relation}},
                "no_final_norm": {"colors": {"relation": washed}},
            },
            "last_layer": {"relation": {"relation_given_both": {"mean": 0.3, "low": given_both_low, "high": 0.4}}},
        }

    table = side_by_side({"clip": report(chance, 0.2), "t5": report(late, 0.8)})
    rows = table.splitlines()
    assert rows[0] == "| family | question | clip | t5 |" and len(rows) == 4  # header, rule, two rows
    assert rows[2] == (
        "| relation | colors | L1 [1–1]; 0.90 at L4; no norm ≤ 0.40 | L1 [1–1]; 0.90 at L4; no norm ≤ 0.40 |"
    )
    clip, t5 = rows[3].split(" | ")[2:4]
    assert clip.startswith("L1 [1–1]; 0.30 at L4; **at chance** (given both 0.30 [0.20–0.40])")
    assert t5 == "L3 [2–3]; 0.90 at L4 |"
    with pytest.raises(ValueError, match="at least one report"):
        side_by_side({})

    (tmp_path / "emergence.json").write_text(json.dumps(report(late, 0.8)))
    assert load_report(str(tmp_path)) == load_report(str(tmp_path / "emergence.json")) == report(late, 0.8)
    with pytest.raises(ValueError, match="'sd15' is neither an embedded model .* nor a report folder"):
        load_report("sd15")
    main(["--compare", "toy", "toy-t5"])  # the shipped reports: the CLIP toy's relation is at chance, toy-t5's not
    printed = capsys.readouterr().out
    relation = next(line for line in printed.splitlines() if line.startswith("| relation | relation |"))
    assert relation.split(" | ")[2].endswith(")") and "**at chance**" in relation.split(" | ")[2]
    assert "at chance" not in relation.split(" | ")[3]


def test_a_missing_embedded_model_says_how_to_train_it(tmp_path, monkeypatch):
    from difflens_widgets.core import models

    monkeypatch.setitem(models.EMBEDDED_MODELS, "toy-t5", tmp_path / "model_t5")
    with pytest.raises(FileNotFoundError, match="'toy-t5' is missing.*--kind t5-dit"):
        dl.load_pipeline("toy-t5", device="cpu")
