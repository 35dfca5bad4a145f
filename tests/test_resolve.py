"""Resolve once: every surface turns its inputs into one LensRun through Lens.resolve, and passes it down."""

import json

import pytest

import difflens_widgets as dl
from difflens_widgets.cli import main
from difflens_widgets.testing import tiny_sd3, tiny_stable_diffusion

PROMPT = "a red circle"
QUIET = lambda *args: None  # noqa: E731 (a sweep's log, silenced)


@pytest.fixture
def resolutions(monkeypatch):
    """Counts Lens.resolve calls (every surface's one path to a run)."""
    calls = []
    real = dl.Lens.resolve

    def counted(self, *args, **kwargs):
        calls.append(args[0] if args else kwargs.get("prompt"))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(dl.Lens, "resolve", counted)
    return calls


def test_sd3_dashboard_follows_the_lensed_encoder_norm():
    """The bug this step fixed: after switching SD3's dashboard to a CLIP, the final norm followed the old encoder
    (True) and layer L−1 was still labelled the model's normal image."""
    pipe = tiny_sd3()
    dash = dl.LensDashboard(pipe, layers="0,1", num_inference_steps=1)
    assert dash.request().main.final_norm is True  # T5: the family lenses with its final norm
    dash.encoder = "text_encoder_2"
    expected = dl.Lens(pipe, encoder="text_encoder_2").run(PROMPT, dry_run=True)["final_norm"]
    assert expected is False and dash.final_norm is None and dash.request().main.final_norm is expected
    dash.run()
    assert dash.wait(120) and dash.status == "done", dash.message
    assert dash.result.params["final_norm"] is False and dash.result.params["encoder"] == "text_encoder_2"
    assert dash.run_info["normal_layer"] is None  # the other encoders give the empty prompt: no column is normal
    dash.other_encoders = "normal"
    assert dash.request().main.normal_layer == dash.model_info["num_layers"] - 1  # CLIPs: the raw penultimate


def test_one_resolution_per_input_change_and_none_at_run(resolutions):
    dash = dl.LensDashboard(tiny_stable_diffusion(), prompt=PROMPT, layers="0,4", num_inference_steps=1)
    assert len(resolutions) == 1  # the constructor resolved the inputs: the error line, and the plan Run runs
    dash.run()
    assert dash.wait(60) and dash.status == "done"
    assert len(resolutions) == 1  # Run and the worker ran that plan: no second check
    dash.seeds = "0,1"
    dash.run()
    assert dash.wait(60) and dash.result.seeds == [0, 1]
    assert len(resolutions) == 2
    dash.compare = "final_norm"  # the ablation is derived from the resolved run, not resolved again
    dash.run()
    assert dash.wait(60) and [p.key for p in dash.panels_result] == ["lens", "no_final_norm"]
    assert len(resolutions) == 3


def test_one_resolution_per_cli_call_and_per_api_call(resolutions, tmp_path):
    pipe = tiny_stable_diffusion()
    folder = tmp_path / "pipe"
    pipe.save_pretrained(folder)
    args = ["run", PROMPT, "--model", str(folder), "--layers", "0,4", "--steps", "1", "--device", "cpu"]
    assert main(args + ["--out", str(tmp_path / "a.png")]) == 0
    assert len(resolutions) == 1
    assert main(args + ["--compare", "final_norm", "--out", str(tmp_path / "b.png")]) == 0
    assert len(resolutions) == 2
    lens = dl.Lens(pipe)
    lens.run(PROMPT, layers=[4], num_inference_steps=1)
    assert len(resolutions) == 3
    dl.compare(lens, dl.Lens(tiny_stable_diffusion()), PROMPT, layers=[4], num_inference_steps=1)
    assert len(resolutions) == 4  # raw and tuned run one resolved run


def test_a_resolved_run_runs_only_where_it_was_resolved_and_varies_only_what_needs_no_resolution():
    run = dl.Lens(tiny_stable_diffusion()).resolve(PROMPT, layers="2:", num_inference_steps=1)
    assert run.layers == (2, 3, 4) and run.final_norm is True and run.normal_layer == 4
    assert run.replace(final_norm=False).normal_layer is None and run.replace(snapshot_every=1).normal_layer == 4
    with pytest.raises(TypeError, match="resolve again to change layers"):
        run.replace(layers=(0,))
    with pytest.raises(ValueError, match="lensing text_encoder"):
        dl.Lens(tiny_sd3()).execute(run)
    with pytest.raises(TypeError, match="execute takes a LensRun"):
        dl.Lens(tiny_stable_diffusion()).execute({"layers": [1]})
    params = dl.Lens(tiny_stable_diffusion()).run(PROMPT, dry_run=True)
    assert set(params) == {  # the keys saved results and lens.json have always had, and "attention" (new)
        "layers",
        "seeds",
        "num_inference_steps",
        "guidance_scale",
        "negative_prompt",
        "height",
        "width",
        "final_norm",
        "lens_negative",
        "tokens",
        "per_token",
        "skip_layers",
        "other_encoders",
        "lens_pooled",
        "encoder",
        "text_from",
        "snapshot_every",
        "attention",
        "scheduler",
        "scheduler_config",
        "pipeline",
        "model",
        "family",
        "num_layers",
        "sequential",
        "memory",
    }
    memory = params["memory"]  # what the run will hold, known before it runs
    pipe = tiny_stable_diffusion()
    unet_bytes = sum(p.numel() * p.element_size() for p in pipe.unet.parameters())
    assert memory["weights_bytes"]["unet"] == unet_bytes and set(memory["weights_bytes"]) == {
        "unet",
        "vae",
        "text_encoder",
    }
    # 5 hidden states (layers 0..4) × 3 texts (prompt, negative, empty) × 16 tokens × width 32, fp32
    assert memory["text_pass_bytes"] == 5 * 3 * 16 * 32 * 4 and memory["per_image_bytes"] > 0


def test_normal_column_only_where_the_image_is_the_pipelines_own():
    lens = dl.Lens(tiny_stable_diffusion())
    assert lens.resolve(PROMPT).normal_layer == 4
    for options in (
        {"final_norm": False},
        {"tokens": "prompt"},
        {"per_token": True},
        {"skip_layers": [2]},
        {"lens_negative": True},
        {"text_from": tiny_stable_diffusion()},
    ):
        assert lens.resolve(PROMPT, **options).normal_layer is None, options


def test_a_sweep_resolves_once_and_resumes_on_the_resolved_run(resolutions, tmp_path):
    pytest.importorskip("pyarrow")
    prompts = [PROMPT, "a blue square"]
    out = tmp_path / "sweep"
    dl.sweep(prompts, out, model="toy", layers="0:9:8", seeds=[0], num_inference_steps=1, scorers=[], log=QUIET)
    assert len(resolutions) == 1
    spec = json.loads((out / "manifest.json").read_text())["spec"]
    assert spec["run"]["layers"] == [0, 8] and spec["run"]["final_norm"] is True
    report = dl.sweep(
        prompts, out, model="toy", layers=[0, 8], seeds=0, num_inference_steps=1, scorers=[], log=QUIET
    )  # "0:9:8" and [0, 8] are one run: this resumes
    assert report.done_before == 2 and report.processed == 0
    with pytest.raises(ValueError, match="other spec"):
        dl.sweep(prompts, out, model="toy", layers=[0], seeds=0, num_inference_steps=1, scorers=[], log=QUIET)
