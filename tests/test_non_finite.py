"""No NaN image passes as a result: a denoiser or VAE that overflows (forced here on tiny pipelines) gives results
that name each (layer, seed) left out, with the likely cause, in the library, the CLI, the dashboard and sweeps —
and the finite images of the same run are exactly those of a clean run."""

import numpy as np
import pytest
import torch

import difflens_widgets as dl
from difflens_widgets import testing
from difflens_widgets.cli import main
from difflens_widgets.core import finite
from difflens_widgets.sweeps import store

PROMPT = "a red circle left of a blue square"
FAMILIES = list(testing.TINY_FAMILIES.values())


def sample_of(out) -> torch.Tensor:
    """A module's output tensor, however it returns it (a tensor, a tuple, an output object)."""
    return out if isinstance(out, torch.Tensor) else out[0] if isinstance(out, tuple) else out.sample


def poison_rows(module, item: int, items: int, monkeypatch, calls: list | None = None):
    """Make ``module``'s output NaN for image ``item`` of a chunk of ``items`` (both halves of a classifier-free
    guidance batch), or, with ``calls``, for every row of the pipeline calls whose number is in ``calls``."""
    original = module.forward
    seen = []

    def forward(*args, **kwargs):
        out = original(*args, **kwargs)
        tensor = sample_of(out)
        seen.append(1)
        if calls is None:
            tensor[item::items] = float("nan")
        elif len(seen) - 1 in calls:
            tensor[:] = float("nan")
        return out

    monkeypatch.setattr(module, "forward", forward)


def guidance_of(lens) -> float:
    return 3.0 if lens.adapter.family == "flux" else 5.0


@pytest.mark.parametrize("build", FAMILIES, ids=lambda f: f.__name__.removeprefix("tiny_"))
def test_nan_latents_of_one_image_leave_it_out_by_name_and_the_others_unchanged(build, monkeypatch):
    pipe = build()
    lens = dl.Lens(pipe)
    run = dict(layers=[0, 1, 2], seeds=[0], num_inference_steps=2, guidance_scale=guidance_of(lens), use_cache=False)
    clean = lens.run(PROMPT, **run)
    assert clean.non_finite == {} and clean.problem == ""
    poison_rows(lens.adapter.denoiser, item=1, items=3, monkeypatch=monkeypatch)
    with np.errstate(invalid="raise"):  # no NaN is cast to uint8 anywhere (numpy's only sign of a garbage image)
        res = lens.run(PROMPT, **run)
    assert res.complete and sorted(res.images) == [(0, 0), (2, 0)] and res.non_finite == {(1, 0): "latents"}
    for key, image in res.images.items():
        assert np.array_equal(np.asarray(image), np.asarray(clean.images[key])), key
    assert res.problem.startswith("1 of 3 images came out non-finite (NaN/inf) and were left out (L1 seed 0)")
    assert "the denoiser produced NaN/inf" in res.problem and "\n" not in res.problem
    assert "1 non-finite" in repr(res)
    grid = res.grid()  # the left-out image is not drawn as a tile: its column is not there
    assert grid.width < clean.grid().width


def test_nan_pixels_from_the_vae_are_told_apart_from_nan_latents(tiny_pipe, monkeypatch):
    lens = dl.Lens(tiny_pipe)
    run = dict(layers=[0, 4], seeds=[0, 1], num_inference_steps=2, use_cache=False)
    poison_rows(tiny_pipe.vae.decoder, item=3, items=4, monkeypatch=monkeypatch)
    res = lens.run(PROMPT, **run)
    assert res.non_finite == {(4, 1): "pixels"} and len(res.images) == 3
    assert "the decoder produced NaN/inf" in res.problem


def test_previews_of_non_finite_latents_are_not_shown(tiny_pipe, monkeypatch):
    lens = dl.Lens(tiny_pipe)
    poison_rows(lens.adapter.denoiser, item=0, items=2, monkeypatch=monkeypatch)
    seen = []
    res = lens.run(PROMPT, layers=[0, 4], seeds=[0], num_inference_steps=2, snapshot_every=1, use_cache=False,
                   progress=lambda d, t, p: seen.append(p))  # fmt: skip
    assert all(items == [(4, 0)] for items in (p.items for p in seen if p is not None))
    assert list(res.snapshots) == [(4, 0)] and res.non_finite == {(0, 0): "latents"}


@pytest.mark.parametrize(
    "where, guidance, denoiser, vae, says",
    [
        ({finite.LATENTS}, 80.0, torch.float32, torch.float32, "guidance_scale 80 overflowed the guided step"),
        ({finite.LATENTS}, 7.5, torch.float16, torch.float16, "the denoiser overflowed in float16"),
        ({finite.PIXELS}, 7.5, torch.float16, torch.float16, "the VAE overflowed in float16: decode in float32"),
        ({finite.PIXELS}, 7.5, torch.float16, torch.float32, "the decoder produced NaN/inf"),
    ],
)
def test_the_likely_cause_follows_where_it_went_wrong_and_the_precision(where, guidance, denoiser, vae, says):
    assert finite.likely_cause(where, guidance, denoiser, vae).startswith(says)


def test_the_summary_names_at_most_a_few_images():
    items = {(layer, 0): finite.LATENTS for layer in range(12)}
    line = finite.summary(items, 13, "x")
    assert line.startswith("12 of 13 images") and "L7 seed 0 and 4 more" in line and "L8" not in line


def test_cli_says_it_in_one_line_and_writes_no_garbage(tmp_path, capfd, monkeypatch):
    from diffusers import UNet2DConditionModel

    original = UNet2DConditionModel.forward

    def nan_forward(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        sample_of(out)[:] = float("nan")
        return out

    monkeypatch.setattr(UNet2DConditionModel, "forward", nan_forward)
    out = tmp_path / "g.png"
    argv = ["run", PROMPT, "--model", "toy", "--layers", "0,8", "--seeds", "0", "--steps", "2", "--out", str(out)]
    assert main(argv) == 1
    err = capfd.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("difflens:")]
    assert lines[0].startswith("difflens: 2 of 2 images came out non-finite") and "likely cause" in lines[0]
    assert lines[1] == f"difflens: no image to write: {out} not written"
    assert not out.exists() and "Traceback" not in err and "invalid value" not in err


def test_dashboard_shows_the_line_and_only_finite_images(tiny_pipe, monkeypatch):
    dash = dl.LensDashboard(tiny_pipe)
    dash.num_inference_steps, dash.layers, dash.seeds = 2, "0,4", "0"
    poison_rows(dash._lens.adapter.denoiser, item=1, items=2, monkeypatch=monkeypatch)
    dash.run()
    assert dash.wait(60)
    assert dash.status == "done" and dash.message.startswith("1 of 2 images came out non-finite")
    assert [(f["layer"], f["seed"]) for f in dash.frames] == [(0, 0)]


def test_a_sweep_records_non_finite_images_as_problems_not_rows(tmp_path, monkeypatch, capsys):
    from diffusers import UNet2DConditionModel

    original, calls = UNet2DConditionModel.forward, []

    def nan_for_the_second_prompt(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        calls.append(1)
        if 2 < len(calls) <= 4:  # 2 steps a prompt, one call a step: the second prompt's calls
            sample_of(out)[1::2] = float("nan")  # its second (layer, seed): layer 8 (rows [uncond; cond] × 2 images)
        return out

    monkeypatch.setattr(UNet2DConditionModel, "forward", nan_for_the_second_prompt)
    out = tmp_path / "s"
    run = dict(model="toy", layers=[0, 8], seeds=[0], num_inference_steps=2, scorers=["annotator"])
    lines = []
    dl.sweep(["a red circle", "a blue square", "a green star"], out, log=lines.append, **run)
    assert any("[2/3] 1 of 2 images came out non-finite" in line for line in lines)
    rows, problems = store.load(out)
    assert len(rows) == 5 and (1, 8) not in set(zip(rows["prompt_id"], rows["layer"]))
    assert [p.prompt_id for p in problems] == [1] and "L8 seed 0" in problems[0].what
    assert main(["report", str(out)]) == 0
    assert "prompt 1 (rows/00001.parquet): 1 of 2 images came out non-finite" in capsys.readouterr().out
    monkeypatch.undo()
    again = dl.sweep(["a red circle", "a blue square", "a green star"], out, log=lines.append, **run)
    assert again.processed == 0  # whole, not redone: the same run would come out the same
