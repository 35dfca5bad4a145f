"""The dashboard's Python side: trait changes → run → image buffers; cancel; queueing; errors; exports."""

import io
import threading

import pytest
from PIL import Image

import difflens_widgets as dl
from difflens_widgets.testing import tiny_stable_diffusion


@pytest.fixture
def dash(tiny_pipe):
    widget = dl.LensDashboard(tiny_pipe)
    widget.steps, widget.layer_range = 3, ""
    yield widget
    widget.cancel()
    widget.wait(30)


def test_run_streams_png_buffers(dash):
    seen_previews = []
    dash.observe(lambda change: seen_previews.append(len(change["new"])), "previews")
    dash.seeds = "0,1"
    dash.run()
    assert dash.wait(60)
    assert dash.status == "done" and dash.message == ""
    assert dash.run_layers == [0, 1, 2, 3, 4] and dash.run_seeds == [0, 1]
    assert len(dash.frames) == 10
    for frame in dash.frames:
        assert isinstance(frame["png"], bytes) and frame["png"][:8] == b"\x89PNG\r\n\x1a\n"
        assert Image.open(io.BytesIO(frame["png"])).size == (32, 32)
    assert max(seen_previews) == 10  # live previews of every (layer, seed) while denoising
    assert dash.previews == [] and dash.progress == 1.0
    assert set(dash.heatmaps) == {"tokens", "layers"}
    layers = dash.heatmaps["layers"]
    assert layers["x"] == layers["y"] == [0, 1, 2, 3, 4] and len(layers["z"]) == 5
    values = [v for row in layers["z"] for v in row]
    assert layers["zmin"] == min(values) and layers["zmax"] == max(values) < 1.0001  # fitted, not −1..1
    assert dash.selected_layer in dash.run_layers and dash.result.layers == dash.run_layers
    assert dash.timings["first_preview_s"] <= dash.timings["total_s"]


def test_invalid_fields_never_start_a_run(dash):
    for field, value, text in [("prompt", "  ", "prompt is empty"), ("layer_range", "40", "0..4"),
                               ("seeds", "a,b", "seeds"), ("prompt", "a red \x1b[31mcircle", "control characters")]:
        original = getattr(dash, field)
        setattr(dash, field, value)
        dash.run()
        assert dash.status == "invalid" and text in dash.message, (field, dash.message)
        assert dash._thread is None
        setattr(dash, field, original)


@pytest.mark.parametrize("field, value, text", [("steps", 0, "in 1..1000"), ("steps", -1, "in 1..1000"),
                                                ("guidance", float("inf"), "finite number"),
                                                ("selected_layer", 99, "0..4"), ("selected_layer", -1, "0..4")])
def test_numbers_are_refused_when_set_not_only_at_run(dash, field, value, text):
    before = getattr(dash, field)
    with pytest.raises((ValueError, TypeError), match=text):
        setattr(dash, field, value)
    assert getattr(dash, field) == before


def test_unknown_constructor_arguments_are_refused(tiny_pipe):
    with pytest.raises(TypeError, match="unknown argument\\(s\\) stepz; its inputs are prompt"):
        dl.LensDashboard(tiny_pipe, stepz=3)


def test_cancel_keeps_finished_layers(dash):
    dash.max_batch = 1
    dash.steps = 4

    def cancel_midway(change):
        if change["new"] >= 0.5:
            dash.cancel()

    dash.observe(cancel_midway, "progress")
    dash.run()
    assert dash.wait(60)
    shown = {f["layer"] for f in dash.frames}
    assert dash.status == "cancelled" and dash.message == f"cancelled: showing the {len(shown)} of 5 images that finished"
    assert 0 < len(shown) < 5 and shown == set(range(len(shown)))


def test_a_run_lays_out_its_cells_at_once_and_clears_the_previous_prompt(dash):
    dash.run()
    assert dash.wait(60) and dash.heatmaps and dash.selected_layer == 4  # the first run opens on the last layer
    seen = []
    dash.observe(lambda change: seen.append((dash.status, list(dash.run_layers), len(dash.frames),
                                             len(dash.heatmaps))), "progress")
    dash.prompt, dash.layer_range = "a blue square", "0,2"
    dash.run()
    assert dash.wait(60) and dash.status == "done"
    assert seen[0] == ("running", [0, 2], 0, 0)  # new cells from the first step, nothing of the old prompt
    assert dash.selected_layer == 2 and len(dash.frames) == 2


def test_previews_of_every_chunk_stay_and_carry_their_step(dash):
    dash.max_batch, dash.steps = 2, 5
    snapshots = []
    dash.observe(lambda change: snapshots.append(change["new"]), "previews")
    dash.run()
    assert dash.wait(60) and dash.status == "done"
    last = [p for p in snapshots if p][-1]
    assert {(p["layer"], p["seed"]) for p in last} == {(l, 0) for l in range(5)}  # all chunks' previews kept
    assert all(p["kind"] == "raw" and p["steps"] == 5 and 1 <= p["step"] <= 5 for p in last)
    steps_seen = {p["step"] for snap in snapshots for p in snap if p["layer"] == 0}
    assert len(steps_seen) >= 2  # the cell develops through several previews


def test_cancel_brings_back_the_previous_complete_result(dash):
    dash.run()
    assert dash.wait(60) and dash.status == "done"
    previous = [f["png"] for f in dash.frames]
    dash.max_batch, dash.steps, dash.prompt = 1, 4, "a green circle"
    dash.observe(lambda change: dash.cancel() if change["new"] >= 0.3 else None, "progress")
    dash.run()
    assert dash.wait(60) and dash.status == "cancelled"
    assert dash.message == "cancelled: still showing the previous result ('a red circle left of a blue square')"
    assert [f["png"] for f in dash.frames] == previous and dash.result.prompt == "a red circle left of a blue square"
    assert dash.heatmaps


def test_cancel_before_any_image_keeps_the_previews_labelled(tiny_pipe):
    fresh = dl.LensDashboard(tiny_pipe)
    fresh.steps, fresh.layer_range, fresh.max_batch = 5, "", 8
    fresh.observe(lambda change: fresh.cancel() if change["new"] and change["new"][0]["step"] >= 2 else None,
                  "previews")
    fresh.run()
    assert fresh.wait(60) and fresh.status == "cancelled"
    assert fresh.frames and all(f["preview"] and f["step"] >= 1 for f in fresh.frames)
    assert fresh.message.startswith("cancelled: showing previews (denoising step ")


def test_second_run_cancels_the_first_and_runs_after(dash):
    dash.max_batch = 1
    dash.steps = 5
    started = threading.Event()
    dash.observe(lambda change: started.set(), "progress")
    dash.run()
    started.wait(30)
    dash.prompt = "a blue square"
    dash.run()
    assert dash.wait(60)
    assert dash.status == "done" and dash.result.prompt == "a blue square" and len(dash.frames) == 5


def test_run_error_is_shown_and_widget_stays_usable(dash, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("out of memory (simulated)")

    monkeypatch.setattr(dash._lens, "run", broken)
    dash.run()
    assert dash.wait(30)
    assert dash.status == "error" and "out of memory (simulated)" in dash.message
    monkeypatch.undo()
    dash.run()
    assert dash.wait(60) and dash.status == "done" and dash.message == ""


def test_messages_from_the_browser(dash, monkeypatch):
    sent = []
    monkeypatch.setattr(dash, "send", lambda content, buffers=None: sent.append((content, buffers)))
    dash._on_message(dash, {"action": "export", "kind": "grid"}, [])
    assert "run the lens first" in dash.message and not sent
    dash._on_message(dash, {"action": "run"}, [])
    assert dash.wait(60) and dash.status == "done"
    dash._on_message(dash, {"action": "export", "kind": "gif"}, [])
    (content, buffers), = sent
    assert content["action"] == "download" and content["name"].endswith(".gif")
    gif = Image.open(io.BytesIO(buffers[0]))
    assert gif.n_frames == 5


def test_exports(dash):
    dash.run()
    assert dash.wait(60)
    name, png = dash.export("grid")
    assert name.endswith(".png") and Image.open(io.BytesIO(png)).size == dash.result.grid().size
    name, page = dash.export("html")
    text = page.decode()
    assert name.endswith(".html") and dash.prompt in text and text.count("data:image/png;base64,") == 1
    assert "<script" not in text and "http" not in text.split("<body>")[1].split("Made with")[0]
    with pytest.raises(ValueError, match="grid, gif or html"):
        dash.export("pdf")


def test_raw_vs_tuned(tiny_pipe):
    tuned = tiny_stable_diffusion(seed=1)  # same architecture, other weights
    dash = dl.LensDashboard(tiny_pipe, tuned=tuned)
    dash.steps = 2
    dash.run()
    assert dash.wait(60) and dash.status == "done", dash.message
    assert dash.model_info["tuned"] and len(dash.tuned_frames) == len(dash.frames) == 5
    assert set(dash.heatmaps) == {"tokens", "layers", "tuned"}
    shift = dash.heatmaps["tuned"]
    assert shift["scale"] == "1 − cos(raw, tuned)" and shift["zmin"] >= 0 and shift["zmax"] > shift["zmin"]
    assert any(a["png"] != b["png"] for a, b in zip(dash.frames, dash.tuned_frames))
    name, png = dash.export("grid")
    assert Image.open(io.BytesIO(png)).width > dash.result.grid().width  # raw and tuned side by side


def test_tuned_with_other_architecture_is_refused(tiny_pipe):
    with pytest.raises(ValueError, match="text-encoder layers: base 4, tuned 3"):
        dl.LensDashboard(tiny_pipe, tuned=tiny_stable_diffusion(num_layers=3))
