"""Sweeps: prompt files, the resumable dataset, a killed driver or Ray worker, scorers, the report, the SweepView."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

import difflens_widgets as dl
from difflens_widgets.sweeps import dataset as sweeps
from difflens_widgets.sweeps.report import curves, wilson, write_report
from difflens_widgets.testing import tiny_clip_scorer

OPTIONS = dict(layers="0,4,8", seeds="0,1", num_inference_steps=3)
FLAGS = ["--layers", "0,4,8", "--seeds", "0,1", "--num-inference-steps", "3"]


@pytest.fixture(scope="module")
def toy_lens():
    return dl.Lens(dl.load_pipeline("toy"))


def prompts_file(tmp_path, count: int, name: str = "prompts.jsonl"):
    colours, shapes = ["red", "green", "blue"], ["circle", "square", "triangle", "star"]
    rows = []
    for i in range(count):
        turn = i + i // 12  # past 12 rows the shapes shift, so no prompt repeats (a sweep refuses a repeated prompt)
        a, b = f"{colours[i % 3]} {shapes[turn % 4]}", f"{colours[(i + 1) % 3]} {shapes[(turn + 2) % 4]}"
        if i % 2:
            rows.append({"prompt": f"a {a} above a {b}", "family": "relation", "objects": [f"a {a}", f"a {b}"]})
        else:
            rows.append({"prompt": f"a {a}", "family": "colored", "objects": [f"a {a}"]})
    path = tmp_path / name
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def expected_images(lens, prompt, layers=(0, 4, 8), seeds=(0, 1), steps=3):
    return lens.run(prompt, layers=list(layers), seeds=list(seeds), num_inference_steps=steps).images


def check_dataset(out, prompts, lens, tolerance=0, layers=(0, 4, 8), seeds=(0, 1), steps=3, sample=None):
    """Every (prompt, layer, seed) exactly once, and its image equal to a single Lens.run's."""
    rows = sweeps.load_rows(out)
    keys = list(zip(rows.prompt_id, rows.layer, rows.seed))
    assert len(keys) == len(set(keys)), "a (prompt, layer, seed) was written twice"
    assert set(keys) == {(p, l, s) for p in range(len(prompts)) for l in layers for s in seeds}, "rows missing"
    for prompt_id in sample if sample is not None else range(len(prompts)):
        images = expected_images(lens, prompts[prompt_id]["prompt"], layers, seeds, steps)
        for row in rows[rows.prompt_id == prompt_id].itertuples():
            stored = np.asarray(Image.open(out / row.image), np.int16)
            assert np.abs(stored - np.asarray(images[(row.layer, row.seed)], np.int16)).max() <= tolerance
    return rows


def test_prompt_files(tmp_path):
    (tmp_path / "p.txt").write_text("a red circle\n\n  a blue square  \n")
    assert [p["prompt"] for p in sweeps.read_prompts(tmp_path / "p.txt")] == ["a red circle", "a blue square"]
    (tmp_path / "p.csv").write_text(
        'prompt,family,objects\n"a red circle and a blue star",and,a red circle;a blue star\n'
    )
    (row,) = sweeps.read_prompts(tmp_path / "p.csv")
    assert row["family"] == "and" and row["objects"] == ["a red circle", "a blue star"] and row["id"] == 0
    assert sweeps.read_prompts(prompts_file(tmp_path, 3))[1]["family"] == "relation"
    (tmp_path / "bad.jsonl").write_text('{"prompt": "a"}\n{"text": "b"}\n')
    with pytest.raises(ValueError, match="row 2 has no 'prompt'"):
        sweeps.read_prompts(tmp_path / "bad.jsonl")
    (tmp_path / "broken.jsonl").write_text('{"prompt": "a"\n')
    with pytest.raises(ValueError, match="line 1 is not JSON"):
        sweeps.read_prompts(tmp_path / "broken.jsonl")
    (tmp_path / "empty.txt").write_text("\n")
    with pytest.raises(ValueError, match="holds no prompt"):
        sweeps.read_prompts(tmp_path / "empty.txt")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        sweeps.read_prompts(tmp_path / "nope.txt")


def test_local_sweep_equals_lens_run_resumes_and_refuses_other_options(tmp_path, toy_lens, monkeypatch):
    path, out = prompts_file(tmp_path, 3), tmp_path / "sweep"
    report = dl.sweep(path, out, log=lambda *_: None, **OPTIONS)
    assert report.processed == 3 and report.images == 18 and report.images_per_second > 0
    rows = check_dataset(out, sweeps.read_prompts(path), toy_lens)
    assert {"objects", "colors", "both", "relation"} <= set(rows.columns)  # the toy model's default scorer
    assert json.loads(rows.options[0])["num_inference_steps"] == 3
    manifest = sweeps.load_manifest(out)
    assert manifest["spec"]["seeds"] == [0, 1] and "torch" in manifest["versions"]
    monkeypatch.setattr(dl.Lens, "execute", lambda *a, **k: pytest.fail("a done prompt was run again"))
    again = dl.sweep(path, out, log=lambda *_: None, **OPTIONS)
    assert again.processed == 0 and again.done_before == 3
    with pytest.raises(ValueError, match="other spec.*num_inference_steps"):
        dl.sweep(path, out, log=lambda *_: None, **dict(OPTIONS, num_inference_steps=4))
    with pytest.raises(TypeError, match="not a sweep option"):
        dl.sweep(path, tmp_path / "x", log=lambda *_: None, snapshot_every=2, **OPTIONS)


@pytest.mark.slow
def test_killed_driver_loses_nothing_and_duplicates_nothing(tmp_path, toy_lens):
    path, out = prompts_file(tmp_path, 8), tmp_path / "sweep"
    command = [sys.executable, "-m", "difflens_widgets.cli", "sweep", str(path), "--out", str(out), *FLAGS]
    child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while len(list((out / "rows").glob("*.parquet"))) < 3 and time.time() < deadline and child.poll() is None:
        time.sleep(0.05)
    child.send_signal(signal.SIGKILL)
    child.wait()
    done = len(list((out / "rows").glob("*.parquet")))
    assert 3 <= done < 8, f"the kill came too late to test anything ({done} of 8 prompts done)"
    report = dl.sweep(path, out, log=lambda *_: None, **OPTIONS)
    assert report.done_before == done and report.processed == 8 - done
    check_dataset(out, sweeps.read_prompts(path), toy_lens)


@pytest.mark.slow
def test_ray_sweep_survives_a_killed_worker(tmp_path, toy_lens):
    pytest.importorskip("ray")
    path, out = prompts_file(tmp_path, 4), tmp_path / "sweep"  # the kill comes after 1: 3 prompts (≈ 3 s) are left
    command = [
        sys.executable,
        "-m",
        "difflens_widgets.cli",
        "sweep",
        str(path),
        "--out",
        str(out),
        "--seeds",
        "0,1",
        "--num-inference-steps",
        "2",
        "--ray",
        "--workers",
        "1",  # one actor: killing it leaves none, so the sweep can only finish if Ray restarts it
    ]
    log = open(tmp_path / "ray.log", "w")
    child = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline, killed = time.time() + 240, None
    while child.poll() is None and time.time() < deadline:
        if killed is None and list((out / "rows").glob("*.parquet")):
            workers = subprocess.run(
                ["pgrep", "-f", r"MapBatches\(PromptWorker\)"], capture_output=True, text=True
            ).stdout.split()
            if workers:
                killed = int(workers[0])
                os.kill(killed, signal.SIGKILL)  # a worker dies mid-sweep
        time.sleep(0.1)
    if child.poll() is None:
        os.killpg(child.pid, signal.SIGKILL)
    child.wait()
    log.close()
    output = (tmp_path / "ray.log").read_text()
    assert killed, "no Ray worker was seen: " + output[-2000:]
    # Ray restarts the actor and retries its prompt: the sweep finishes by itself, and a rerun has nothing to do
    assert child.returncode == 0, output[-3000:]
    assert dl.sweep(path, out, seeds="0,1", num_inference_steps=2, log=lambda *_: None).processed == 0
    prompts = sweeps.read_prompts(path)
    check_dataset(out, prompts, toy_lens, tolerance=1, layers=range(9), steps=2, sample=[0, 3])


def test_clip_scorer_and_missing_weights(tmp_path):
    scorer = tiny_clip_scorer()
    image = Image.new("RGB", (64, 64), (200, 30, 30))
    row = {"prompt": "a red circle", "objects": ["a red circle", "a blue square"]}
    scores = scorer(image, row)
    sims = scorer.similarities(image, ["a red circle", "a blue square"])
    assert scores["clip_prompt"] == pytest.approx(sims[0], abs=1e-5)
    assert scores["clip_objects"] == pytest.approx(min(sims), abs=1e-5) and all(-1 <= s <= 1 for s in sims)
    assert scorer(image, row) == scores  # deterministic
    assert set(scorer(image, {"prompt": "a red circle"})) == {"clip_prompt"}
    lines = []
    path, out = prompts_file(tmp_path, 2), tmp_path / "sweep"
    dl.sweep(
        path,
        out,
        scorers=["clip:/no/such/clip", scorer, lambda image, row: {"width": image.width}],
        log=lines.append,
        layers="8",
        seeds="0",
        num_inference_steps=2,
    )
    assert any("CLIP scorer '/no/such/clip' unavailable" in line and "goes on" in line for line in lines), lines
    rows = sweeps.load_rows(out)
    assert len(rows) == 2 and rows["width"].tolist() == [64, 64] and rows["clip_prompt"].between(-1, 1).all()
    with pytest.raises(ValueError, match="unknown scorer 'blip'"):
        dl.sweep(path, tmp_path / "other", scorers=["blip"], log=lambda *_: None, layers="8", seeds="0")


def test_report_curves_from_the_dataset_alone(tmp_path):
    path, out = prompts_file(tmp_path, 4), tmp_path / "sweep"
    dl.sweep(path, out, log=lambda *_: None, **OPTIONS)
    text = write_report(out)
    rows = sweeps.load_rows(out)
    data = json.loads((out / "report" / "curves.json").read_text())["curves"]
    for family in ("colored", "relation"):
        curve = data["both"]["families"][family]
        assert curve["layers"] == [0, 4, 8] and curve["prompts"] == 2 and curve["n"] == [4, 4, 4]
        for layer, mean, low, high in zip(curve["layers"], curve["mean"], curve["low"], curve["high"]):
            cell = rows[(rows.family == family) & (rows.layer == layer)]["both"].astype(float)
            assert mean == pytest.approx(cell.mean()) and low <= mean <= high
            assert (low, high) == pytest.approx(wilson(int(cell.sum()), len(cell)))
    assert "relation" not in data["relation"]["families"]["relation"] or True
    assert set(data["relation"]["families"]) == {"relation"}  # only relation captions have a relation score
    page = (out / "report" / "report.html").read_text()
    assert "<script" in page and 'src="http' not in page and "Toker et al." in page  # plotly inlined, offline
    assert "| both | colored | 2 |" in text
    assert curves(rows)["objects"]["kind"] == "share"


def test_sweep_view_browses_the_stored_images(tmp_path):
    path, out = prompts_file(tmp_path, 3), tmp_path / "sweep"
    dl.sweep(path, out, log=lambda *_: None, **OPTIONS)
    view = dl.SweepView(out)
    assert [e["prompt"] for e in view.sweep_entries] == [p["prompt"] for p in sweeps.read_prompts(path)]
    assert view.sweep_selected == 0 and view.model_info["browse"] and view.status == "done"
    view.sweep_selected = 1
    rows = sweeps.load_rows(out)
    mine = rows[rows.prompt_id == 1]
    assert view.prompt == mine.prompt.iloc[0] and view.run_layers == [0, 4, 8] and view.run_seeds == [0, 1]
    assert sorted(f["png"] for f in view.frames) == sorted((out / p).read_bytes() for p in mine.image)
    assert len(view.verdicts) == 6 and all("relation" in v["checks"] for v in view.verdicts)
    assert view.emergence["layers"] == [0, 4, 8] and "relation" in view.emergence["curves"]
    with pytest.raises(ValueError, match="has no rows"):
        view.sweep_selected = 99


def test_a_missing_extra_is_one_line_before_any_work(tmp_path, monkeypatch, capsys):
    import importlib
    import importlib.util

    from difflens_widgets.cli import main

    real_import, real_find = importlib.import_module, importlib.util.find_spec

    def without_pyarrow(name, *args):
        if name == "pyarrow":
            raise ImportError("No module named 'pyarrow'")
        return real_import(name, *args)

    monkeypatch.setattr(importlib, "import_module", without_pyarrow)
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "sklearn" else real_find(name, *a)
    )
    for module in (dl, dl.models):  # the facade (the CLI's probe) and where the engine loads from (sweeps)
        monkeypatch.setattr(module, "load_pipeline", lambda *a, **k: pytest.fail("a model was loaded"))
    path = prompts_file(tmp_path, 1)
    assert main(["sweep", str(path), "--out", str(tmp_path / "s")]) == 2
    assert main(["probe", "--images", "12", "--out", str(tmp_path / "p")]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == [
        "difflens: error: sweeps need pyarrow: pip install 'difflens-widgets[scale]' (Ray, pyarrow, pandas)",
        "difflens: error: probes need scikit-learn: pip install 'difflens-widgets[probe]'",
    ]
    assert not (tmp_path / "s").exists()


def test_attention_sweep_stores_each_words_map_numbers(tmp_path, toy_lens):
    from difflens_widgets.core.attention_stats import word_stats
    from difflens_widgets.toy.annotate import word_regions

    path, out = prompts_file(tmp_path, 2), tmp_path / "sweep"
    dl.sweep(path, out, log=lambda *_: None, attention=True, **OPTIONS)
    rows = sweeps.load_rows(out)
    stats = [json.loads(text) for text in rows.attention]
    assert len(stats) == 12 and set(stats[0]) == {"a", "red", "circle"}
    assert set(stats[6]) == {"a", "green", "square", "above", "blue", "star"}  # a relation caption, words once
    for words in stats:
        assert all(0 <= w["centroid"][0] <= 1 and 0 <= w["share"] <= 1 for w in words.values())
    last = rows[(rows.prompt_id == 1) & (rows.layer == 8) & (rows.seed == 0)].iloc[0]
    result = toy_lens.run(last.prompt, layers=[8], seeds=[0], num_inference_steps=3, attention=True)
    image = Image.open(out / last.image)
    assert json.loads(last.attention) == json.loads(
        json.dumps(word_stats(result, 8, 0, word_regions(image, last.prompt)))
    )
    for row, words in zip(rows.itertuples(), stats):  # inside: exactly the words the annotator found a blob for
        found = word_regions(Image.open(out / row.image), row.prompt)
        assert {w for w, v in words.items() if "inside" in v} == set(found)
    assert any("inside" in v for words in stats for v in words.values())


def test_a_local_sweep_says_the_time_left_after_each_prompt(tmp_path):
    lines: list[str] = []
    dl.sweep(prompts_file(tmp_path, 3), tmp_path / "sweep", log=lines.append, layers="8", seeds="0",
             num_inference_steps=2)  # fmt: skip
    progress = [line for line in lines if line.lstrip().startswith("[")]
    assert len(progress) == 3
    assert all("left" in line for line in progress[:2]) and "left" not in progress[2], progress


def test_time_left_reads_the_measured_pace():
    from difflens_widgets.sweeps.dataset import time_left

    assert time_left(10.0, 1, 5) == "40 s"
    assert time_left(60.0, 1, 13) == "12 min"
    assert time_left(600.0, 1, 8) == "1 h 10 min"
    assert time_left(5.0, 3, 3) == "" and time_left(0.0, 0, 3) == ""
