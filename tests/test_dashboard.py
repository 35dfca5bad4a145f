"""The dashboard's Python side: trait changes → run → image buffers; cancel; queueing; errors; exports."""

import base64
import io
import json
import threading

import numpy as np
import pytest
from PIL import Image

import difflens_widgets as dl
from difflens_widgets.testing import TINY_FAMILIES, tiny_stable_diffusion


@pytest.fixture
def dash(tiny_pipe):
    widget = dl.LensDashboard(tiny_pipe)
    widget.num_inference_steps, widget.layers = 3, ""
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
    for field, value, text in [
        ("prompt", "  ", "prompt is empty"),
        ("layers", "40", "0..4"),
        ("seeds", "a,b", "seeds"),
        ("prompt", "a red \x1b[31mcircle", "control characters"),
    ]:
        original = getattr(dash, field)
        setattr(dash, field, value)
        dash.run()
        assert dash.status == "invalid" and text in dash.message, (field, dash.message)
        assert dash._thread is None
        setattr(dash, field, original)


@pytest.mark.parametrize(
    "field, value, text",
    [
        ("num_inference_steps", 0, "in 1..1000"),
        ("num_inference_steps", -1, "in 1..1000"),
        ("guidance_scale", float("inf"), r"in 0\.\.100"),
        ("selected_layer", 99, "0..4"),
        ("selected_layer", -1, "0..4"),
    ],
)
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
    dash.num_inference_steps = 4

    def cancel_midway(change):
        if change["new"] >= 0.5:
            dash.cancel()

    dash.observe(cancel_midway, "progress")
    dash.run()
    assert dash.wait(60)
    shown = {f["layer"] for f in dash.frames}
    assert (
        dash.status == "cancelled" and dash.message == f"cancelled: showing the {len(shown)} of 5 images that finished"
    )
    assert 0 < len(shown) < 5 and shown == set(range(len(shown)))


def test_a_run_lays_out_its_cells_at_once_and_clears_the_previous_prompt(dash):
    dash.run()
    assert dash.wait(60) and dash.heatmaps and dash.selected_layer == 4  # the first run opens on the last layer
    seen = []
    dash.observe(
        lambda change: seen.append((dash.status, list(dash.run_layers), len(dash.frames), len(dash.heatmaps))),
        "progress",
    )
    dash.prompt, dash.layers = "a blue square", "0,2"
    dash.run()
    assert dash.wait(60) and dash.status == "done"
    assert seen[0] == ("running", [0, 2], 0, 0)  # new cells from the first step, nothing of the old prompt
    assert dash.selected_layer == 2 and len(dash.frames) == 2


def test_previews_of_every_chunk_stay_and_carry_their_step(dash):
    dash.max_batch, dash.num_inference_steps = 2, 5
    snapshots = []
    dash.observe(lambda change: snapshots.append(change["new"]), "previews")
    dash.run()
    assert dash.wait(60) and dash.status == "done"
    last = [p for p in snapshots if p][-1]
    assert {(p["layer"], p["seed"]) for p in last} == {(l, 0) for l in range(5)}  # all chunks' previews kept
    assert all(p["kind"] == "lens" and p["steps"] == 5 and 1 <= p["step"] <= 5 for p in last)
    steps_seen = {p["step"] for snap in snapshots for p in snap if p["layer"] == 0}
    assert len(steps_seen) >= 2  # the cell develops through several previews


def test_cancel_brings_back_the_previous_complete_result(dash):
    dash.run()
    assert dash.wait(60) and dash.status == "done"
    previous = [f["png"] for f in dash.frames]
    dash.max_batch, dash.num_inference_steps, dash.prompt = 1, 4, "a green circle"
    dash.observe(lambda change: dash.cancel() if change["new"] >= 0.3 else None, "progress")
    dash.run()
    assert dash.wait(60) and dash.status == "cancelled"
    assert dash.message == "cancelled: still showing the previous result ('a red circle left of a blue square')"
    assert [f["png"] for f in dash.frames] == previous and dash.result.prompt == "a red circle left of a blue square"
    assert dash.heatmaps


def test_cancel_before_any_image_keeps_the_previews_labelled(tiny_pipe):
    fresh = dl.LensDashboard(tiny_pipe)
    fresh.num_inference_steps, fresh.layers, fresh.max_batch = 5, "", 8
    fresh.observe(
        lambda change: fresh.cancel() if change["new"] and change["new"][0]["step"] >= 2 else None, "previews"
    )
    fresh.run()
    assert fresh.wait(60) and fresh.status == "cancelled"
    assert fresh.frames and all(f["preview"] and f["step"] >= 1 for f in fresh.frames)
    assert fresh.message.startswith("cancelled: showing previews (denoising step ")


def test_second_run_cancels_the_first_and_runs_after(dash):
    dash.max_batch = 1
    dash.num_inference_steps = 5
    started = threading.Event()
    dash.observe(lambda change: started.set(), "progress")
    dash.run()
    started.wait(30)
    dash.prompt = "a blue square"
    dash.run()
    assert dash.wait(60)
    assert dash.status == "done" and dash.result.prompt == "a blue square" and len(dash.frames) == 5


def test_run_error_is_shown_and_widget_stays_usable(dash, monkeypatch):
    def broken(*args, **kwargs):  # the inputs are fine (resolved); running them fails
        raise RuntimeError("out of memory (simulated)")

    monkeypatch.setattr(dash._lens, "execute", broken)
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
    ((content, buffers),) = sent
    assert content["action"] == "download" and content["name"].endswith(".gif")
    gif = Image.open(io.BytesIO(buffers[0]))
    assert gif.n_frames == 5


def kind(dash, key):
    return [f for f in dash.frames if f["kind"] == key]


def test_exports(dash):
    dash.run()
    assert dash.wait(60)
    name, png = dash.export("grid")
    assert name.endswith(".png") and Image.open(io.BytesIO(png)).size == dash.result.grid().size
    name, page = dash.export("html")
    text = page.decode()
    assert name.endswith(".html") and dash.prompt in text
    assert "http://" not in text and "https://" not in text  # one file, nothing fetched
    state = json.loads(text.split('id="dl-state">')[1].split("</script>")[0].replace("<\\/", "</"))
    assert state["model_info"]["frozen"] and state["status"] == "done"
    assert [f["layer"] for f in state["frames"]] == [f["layer"] for f in dash.frames]
    assert base64.b64decode(state["frames"][0]["png"]["$bytes"]) == dash.frames[0]["png"]
    with pytest.raises(ValueError, match="grid, gif or html"):
        dash.export("pdf")


def test_raw_vs_tuned(tiny_pipe):
    tuned = tiny_stable_diffusion(seed=1)  # same architecture, other weights
    dash = dl.LensDashboard(tiny_pipe, tuned=tuned)
    dash.num_inference_steps, dash.seeds = 2, "0,1"
    dash.run()
    assert dash.wait(60) and dash.status == "done", dash.message
    assert [p["key"] for p in dash.panels] == ["raw", "tuned", "difference"]
    assert dash.model_info["tuned"] and len(kind(dash, "raw")) == len(kind(dash, "tuned")) == 10
    assert set(dash.heatmaps) == {"tokens", "layers", "tuned"}
    shift = dash.heatmaps["tuned"]
    assert shift["scale"] == "1 − cos(raw, tuned)" and shift["zmin"] >= 0 and shift["zmax"] > shift["zmin"]
    assert any(a["png"] != b["png"] for a, b in zip(kind(dash, "raw"), kind(dash, "tuned")))
    # the difference: |raw − tuned| on one viridis scale whose top is the run's largest difference
    scale = dash.panels[2]["scale"]
    raw, tuned_result = dash.result, dash.tuned_result
    largest = max(
        np.abs(np.asarray(raw.images[k], np.float32) - np.asarray(tuned_result.images[k], np.float32)).mean(-1).max()
        for k in raw.images
    )
    assert scale["min"] == 0 and scale["max"] == pytest.approx(largest, abs=0.05)
    # every export carries all three, rows interleaved by seed
    grid = Image.open(io.BytesIO(dash.export("grid")[1]))
    assert grid.height == 26 + 22 + 6 * 128 and grid.width == 130 + 5 * 128  # title, layer labels, 6 rows
    gif = Image.open(io.BytesIO(dash.export("gif")[1]))
    assert gif.n_frames == 5 and gif.height == 16 + 3 * 192 and gif.width == 100 + 2 * 192


def test_tuned_with_other_architecture_is_refused(tiny_pipe):
    with pytest.raises(ValueError, match="text-encoder layers: base 4, tuned 3"):
        dl.LensDashboard(tiny_pipe, tuned=tiny_stable_diffusion(num_layers=3))


def test_the_dashboard_is_there_before_its_model(tmp_path):
    """background_load: the widget exists at once, says it is loading, and a Run pressed meanwhile starts when the
    model is there (what %difflens shows for a model it has not loaded yet)."""
    from difflens_widgets.testing import tiny_stable_diffusion

    folder = tmp_path / "pipe"
    tiny_stable_diffusion().save_pretrained(folder)
    loaded = []
    dash = dl.LensDashboard(folder, background_load=True, on_loaded=loaded.append, prompt="a red circle",
                            layers="0,4", num_inference_steps=1)  # fmt: skip
    assert dash.status == "loading" and "loading the model" in dash.message
    dash.run()  # queued until the model is there
    assert dash.wait(60) and dash.status == "done" and dash.result.layers == [0, 4]
    assert len(loaded) == 1 and dash.loaded
    broken = dl.LensDashboard(tmp_path / "nothing-here", background_load=True)
    assert broken.wait(30) and broken.status == "error" and "could not be loaded" in broken.message


def test_attention_maps_reach_the_front_end(dash):
    dash.attention = True
    dash.layers = "0,4"
    dash.run()
    assert dash.wait(60) and dash.status == "done"
    data = dash.attention_maps
    real = dash.result.params["real_tokens"]
    assert [w["label"] for w in data["words"]][1:4] == ["a", "red", "circle"]
    assert len(data["frames"]) == 2 and data["frames"][0]["kind"] == "lens"
    h, w = data["grid"]
    assert len(data["frames"][0]["maps"]) == real * h * w and len(data["frames"][0]["mass"]) == dash.num_inference_steps
    dash.attention = False
    dash.run()
    assert dash.wait(60) and dash.attention_maps == {}


@pytest.mark.parametrize("family", sorted(TINY_FAMILIES))
def test_the_dashboard_runs_every_family_in_one_step_with_maps(family):
    """The dashboard's own defaults (previews on) at one step, with attention maps: every family draws, and its
    word chips name the prompt's words."""
    pipe = TINY_FAMILIES[family]()
    dash = dl.LensDashboard(pipe)
    dash.prompt, dash.num_inference_steps, dash.layers, dash.attention = "a red circle", 1, "1", True
    if family in ("flux", "flux2", "flux2-klein", "stable-diffusion-3"):
        dash.height = dash.width = 32  # the pipelines' own default sizes are large
    dash.run()
    assert dash.wait(120) and dash.status == "done", dash.message
    assert [f["layer"] for f in dash.frames] == [1]
    words = [w["label"] for w in dash.attention_maps["words"]]
    assert {"red", "circle"} <= set(words), words
