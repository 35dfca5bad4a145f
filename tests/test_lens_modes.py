"""Every lens mode is reachable from the dashboard and from ``%difflens``, and gives exactly what ``Lens.run`` gives
with the same options; the options themselves have one definition (lens_options) behind every surface."""

import argparse
import shlex

import numpy as np
import pytest

import difflens_widgets as dl
from difflens_widgets.cli import _parser
from difflens_widgets.core import options as lens_options
from difflens_widgets.magics import magic_parser
from difflens_widgets.testing import tiny_sdxl, tiny_stable_diffusion
from difflens_widgets.toy.annotate import judge
from difflens_widgets.widgets.dashboard import LensDashboard

PROMPT = "a red circle left of a blue square"
COMMON = dict(layers="2:5", seeds="0,1", num_inference_steps=2)
COMMON_FLAGS = "--layers 2:5 --seeds 0,1 --num-inference-steps 2"


def same(a: dl.LensResult, b: dl.LensResult) -> bool:
    assert sorted(a.images) == sorted(b.images)
    return all(
        np.abs(np.asarray(a.images[k], np.int16) - np.asarray(b.images[k], np.int16)).max() <= 1 for k in a.images
    )


def reference(lens: dl.Lens, **options) -> dict:
    """What a user gets from Lens.run directly: {panel key: LensResult}."""
    run = dict(layers="2:5", seeds=[0, 1], num_inference_steps=2, **options)
    compare = run.pop("compare", "none")
    results = lens.run(PROMPT, **run)
    if isinstance(results, list):
        return {f"token{r.params['token_position']}": r for r in results}
    out = {"lens": results}
    if compare == "final_norm":
        out["no_final_norm"] = lens.run(PROMPT, **dict(run, final_norm=False))
    elif compare == "lens_negative":
        out["lensed_negative"] = lens.run(PROMPT, **dict(run, lens_negative=True))
    return out


# (widget traits, %difflens flags, Lens.run options)
MODES = {
    "per_token": ({"per_token": True}, "--per-token", {"per_token": True}),
    "tokens=prompt": ({"tokens": "prompt"}, "--tokens prompt", {"tokens": "prompt"}),
    "tokens=padding": ({"tokens": "padding"}, "--tokens padding", {"tokens": "padding"}),
    "skip_layers": ({"skip_layers": "2,3"}, "--skip-layers 2,3", {"skip_layers": [2, 3]}),
    "no final norm": ({"final_norm": False}, "--no-final-norm", {"final_norm": False}),
    "lensed negative": (
        {"lens_negative": True, "negative_prompt": "a green star"},
        "--lens-negative --negative-prompt 'a green star'",
        {"lens_negative": True, "negative_prompt": "a green star"},
    ),
    "compare final norm": ({"compare": "final_norm"}, "--compare final_norm", {"compare": "final_norm"}),
    "compare lensed negative": (
        {"compare": "lens_negative", "negative_prompt": "a green star"},
        "--compare lens_negative --negative 'a green star'",
        {"compare": "lens_negative", "negative_prompt": "a green star"},
    ),
}


@pytest.fixture(scope="module")
def shell():
    from IPython.testing import globalipapp  # looked up now: it rebinds get_ipython once a shell has started

    ip = globalipapp.get_ipython()
    ip.run_line_magic("load_ext", "difflens")
    magics = ip.magics_manager.registry["DiffLensMagics"]
    magics._pipelines.update(
        {"tiny": tiny_stable_diffusion(seed=0), "tiny-other": tiny_stable_diffusion(seed=3), "tiny-sdxl": tiny_sdxl()}
    )  # as if loaded by --model NAME
    yield ip, magics._pipelines
    ip.run_line_magic("unload_ext", "difflens")


def check_dashboard(dash: LensDashboard, expected: dict) -> None:
    assert dash.wait(120) and dash.status == "done", dash.message
    assert [p["key"] for p in dash.panels] == list(expected)
    for panel in dash.panels_result:
        assert same(panel.result, expected[panel.key]), panel.key
    kinds = [f["kind"] for f in dash.frames]
    assert all(kinds.count(key) == 6 for key in expected)  # 3 layers × 2 seeds per panel


@pytest.mark.parametrize("mode", list(MODES))
def test_each_mode_from_the_dashboard_and_the_magic_equals_lens_run(mode, shell):
    ip, pipelines = shell
    traits, flags, options = MODES[mode]
    expected = reference(dl.Lens(pipelines["tiny"]), **options)
    dash = LensDashboard(pipelines["tiny"], prompt=PROMPT, **COMMON, **traits)
    dash.run()
    check_dashboard(dash, expected)
    ip.run_line_magic("difflens", f'"{PROMPT}" --model tiny {COMMON_FLAGS} {flags}')
    check_dashboard(ip.user_ns["_difflens"], expected)


def test_encoder_picker_other_encoders_and_pooled_lens(shell):
    ip, pipelines = shell
    pipe = pipelines["tiny-sdxl"]
    options = dict(other_encoders="normal", lens_pooled=True)
    second = dl.Lens(pipe, encoder="text_encoder_2")
    expected = {"lens": second.run(PROMPT, layers="2:5", seeds=[0, 1], num_inference_steps=2, **options)}
    dash = LensDashboard(pipe, prompt=PROMPT, **COMMON, **options)
    assert dash.model_info["encoders"] == ["text_encoder", "text_encoder_2"] and dash.model_info["several_encoders"]
    dash.encoder = "text_encoder_2"
    assert dash.model_info["encoder"] == "text_encoder_2" and dash.model_info["num_layers"] == second.num_layers
    dash.run()
    check_dashboard(dash, expected)
    assert dash.run_info["encoder"] == "text_encoder_2"
    ip.run_line_magic(
        "difflens",
        f'"{PROMPT}" --model tiny-sdxl {COMMON_FLAGS} --encoder text_encoder_2 --other-encoders normal --lens-pooled',
    )
    check_dashboard(ip.user_ns["_difflens"], expected)
    with pytest.raises(ValueError, match="not a text encoder of this stable-diffusion-xl pipeline"):
        dash.encoder = "text_encoder_9"


def test_cross_model_lens(shell):
    ip, pipelines = shell
    expected = {
        "lens": dl.Lens(pipelines["tiny"]).run(
            PROMPT, layers="2:5", seeds=[0, 1], num_inference_steps=2, text_from=pipelines["tiny-other"]
        )
    }
    assert not same(expected["lens"], reference(dl.Lens(pipelines["tiny"]))["lens"])  # the text model matters
    dash = LensDashboard(pipelines["tiny"], prompt=PROMPT, text_from=pipelines["tiny-other"], **COMMON)
    dash.run()
    check_dashboard(dash, expected)
    assert dash.run_info["text_from"]
    ip.run_line_magic("difflens", f'"{PROMPT}" --model tiny {COMMON_FLAGS} --text-from tiny-other')
    check_dashboard(ip.user_ns["_difflens"], expected)


def test_refusals_name_the_option(shell, capsys):
    ip, pipelines = shell
    dash = LensDashboard(pipelines["tiny"], prompt=PROMPT, **COMMON)
    for name, value, text in [
        ("skip_layers", "7", "blocks are numbered 1..4"),
        ("tokens", "some", "tokens must be"),
        ("compare", "both", "compare must be one of"),
        ("layers", "9", "0..4"),
    ]:
        setattr(dash, name, value)
        assert text in dash.input_error, (name, dash.input_error)
        dash.run()
        assert dash.status == "invalid" and text in dash.message and dash._thread is None
        setattr(dash, name, lens_options.BY_NAME[name].default)
        assert dash.input_error == ""
    dash.per_token, dash.compare = True, "final_norm"
    assert "per_token already shows one row per token" in dash.input_error
    ip.run_line_magic("difflens", f'"{PROMPT}" --model tiny --skip-layers 0')
    assert "0 is the embedding layer and cannot be skipped" in capsys.readouterr().out


def test_one_definition_feeds_every_surface():
    """The CLI, the magic and the dashboard offer the options of lens_options under the same names, with the same
    help, and every name that reaches Lens.run is a keyword of Lens.resolve (where every option is decided)."""
    import inspect

    run_keywords = set(inspect.signature(dl.Lens.resolve).parameters)
    for option in lens_options.OPTIONS:
        assert not option.run_keyword or option.name in run_keywords, option.name
    cli = next(a for a in _parser()._subparsers._group_actions[0].choices["run"]._actions if a.dest == "layers")
    assert cli.help == lens_options.BY_NAME["layers"].help
    for surface, parser in (("cli", _parser()._subparsers._group_actions[0].choices["run"]), ("magic", magic_parser())):
        dests = {a.dest: a for a in parser._actions}
        for option in lens_options.OPTIONS:
            if surface in option.surfaces:
                assert dests[option.name].help == option.help and option.flag in dests[option.name].option_strings
    traits = LensDashboard.class_traits(input=True)
    widget = [o for o in lens_options.OPTIONS if "widget" in o.surfaces]
    assert all(o.name in traits for o in widget)
    magic = {o.name for o in lens_options.OPTIONS if "magic" in o.surfaces}
    # every option the magic reads is handed to the dashboard (text_from: its own constructor argument)
    assert magic - {"text_from"} <= set(LensDashboard.inputs())
    assert [s["name"] for s in LensDashboard.default_state()["option_specs"]] == [o.name for o in widget]
    assert all(s["help"] == lens_options.BY_NAME[s["name"]].help for s in LensDashboard.default_state()["option_specs"])
    args = magic_parser().parse_args(shlex.split("a --steps 3 --guidance 2 --negative x"))
    assert (args.num_inference_steps, args.guidance_scale, args.negative_prompt) == (3, 2.0, "x")
    assert isinstance(args, argparse.Namespace)


def test_toy_verdicts_are_the_annotators_and_the_curve_counts_them():
    dash = LensDashboard(
        "toy", prompt="a red circle above a blue square", layers="0,4,8", seeds="0,1", num_inference_steps=8
    )
    assert dash.model_info["annotator"]
    dash.run()
    assert dash.wait(120) and dash.status == "done", dash.message
    assert len(dash.verdicts) == 6
    for verdict in dash.verdicts:
        image = dash.result.image(verdict["layer"], verdict["seed"])
        assert verdict["checks"] == judge(image, dash.prompt)
        assert set(verdict["checks"]) == {"objects", "colors", "both", "relation"}
    curves = dash.emergence["curves"]
    assert dash.emergence["layers"] == [0, 4, 8]
    for question, curve in curves.items():
        for layer, share in zip([0, 4, 8], curve):
            marks = [v["checks"][question] for v in dash.verdicts if v["layer"] == layer]
            assert share == sum(marks) / 2
    dash.prompt = "a castle"  # not a shapes-world caption: nothing to judge, nothing wrong
    dash.run()
    assert dash.wait(120) and dash.status == "done" and dash.verdicts == [] and dash.emergence == {}


def test_raw_vs_tuned_from_the_magic(shell, tmp_path):
    ip, pipelines = shell
    tuned = tiny_stable_diffusion(seed=5)
    tuned.save_pretrained(tmp_path / "tuned")
    expected = {"raw": reference(dl.Lens(pipelines["tiny"]))["lens"], "tuned": reference(dl.Lens(tuned))["lens"]}
    ip.run_line_magic("difflens", f'"{PROMPT}" --model tiny {COMMON_FLAGS} --tuned {tmp_path / "tuned"}')
    dash = ip.user_ns["_difflens"]
    assert dash.wait(120) and dash.status == "done", dash.message
    assert [p["key"] for p in dash.panels] == ["raw", "tuned", "difference"]
    for panel in dash.panels_result[:2]:
        assert same(panel.result, expected[panel.key]), panel.key
