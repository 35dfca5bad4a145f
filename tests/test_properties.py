"""Property-based tests (hypothesis): generated options for ``Lens.run``, command lines, magic lines and dashboard
inputs. Each input is either accepted and gives a valid result, or refused with one line naming what was wrong,
before any model work; afterwards the pipeline still gives exactly the images a fresh one gives.

Each test prints how many cases it ran (``pytest -s`` shows them)."""

import math
import string

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import difflens_widgets as dl
from difflens_widgets.cli import main as cli_main
from difflens_widgets.testing import tiny_stable_diffusion

PROMPT = "a red circle left of a blue square"
BASELINE = dict(layers=[0, 4], seeds=[0], num_inference_steps=1)
SETTINGS = dict(deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
TEXT = st.text(alphabet=st.characters(codec="utf-8"), max_size=12)
ANYTHING = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**20), 10**20),
    st.floats(allow_nan=True),
    TEXT,
    st.lists(st.integers(-3, 9), max_size=4),
)

# parameter → values to try: valid cheap ones and every kind of wrong one
OPTIONS = {
    "layers": st.one_of(ANYTHING, st.sampled_from(["0:5:2", "::-1", "1,x", "0:0", "2:1", "-1", ":::"])),
    "seeds": st.one_of(ANYTHING, st.lists(st.integers(-2, 2**33), max_size=3), st.just(range(5000))),
    "num_inference_steps": st.one_of(ANYTHING, st.integers(-2, 2), st.just(10**6)),
    "guidance_scale": st.one_of(ANYTHING, st.floats(-2, 12), st.just(math.inf)),
    "negative_prompt": st.one_of(st.none(), TEXT, st.integers()),
    "height": st.one_of(ANYTHING, st.sampled_from([16, 32, 36, 10**6, 0, -32])),
    "width": st.one_of(ANYTHING, st.sampled_from([16, 32, 20, 10**6])),
    "final_norm": st.one_of(ANYTHING, st.sampled_from(["no", "yes", 0, 1])),
    "lens_negative": st.one_of(st.booleans(), ANYTHING),
    "tokens": st.one_of(st.sampled_from(["all", "prompt", "padding", "words", ""]), ANYTHING),
    "skip_layers": st.one_of(ANYTHING, st.lists(st.integers(-1, 6), max_size=3)),
    "other_encoders": st.one_of(st.sampled_from(["empty", "normal", "none"]), ANYTHING),
    "snapshot_every": ANYTHING,
    "max_batch": ANYTHING,
    "progress": st.one_of(st.none(), st.integers(), TEXT),
    "prompt": st.one_of(
        TEXT, st.sampled_from(["\x00", "\u200b", "a\x1b[0m", "  ", "赤い円"]), st.lists(TEXT, max_size=2), st.integers()
    ),
}
# words a refusal of each parameter must contain
NAMES = {"layers": "layer", "seeds": "seed", "prompt": "prompt"}


@pytest.fixture(scope="module")
def pipe():
    return tiny_stable_diffusion()


@pytest.fixture(scope="module")
def reference(pipe):
    return dl.Lens(pipe).run(PROMPT, use_cache=False, **BASELINE)


class UNetCalls:
    def __init__(self, pipe):
        self.count = 0
        pipe.unet.register_forward_pre_hook(lambda *_: setattr(self, "count", self.count + 1))


def same_images(a, b) -> bool:
    return all(np.array_equal(np.asarray(a.images[k]), np.asarray(b.images[k])) for k in b.images)


def test_lens_run_accepts_or_refuses_each_option_up_front(pipe, reference):
    calls, cases = UNetCalls(pipe), []

    @settings(max_examples=400, **SETTINGS)
    @given(st.sampled_from(sorted(OPTIONS)).flatmap(lambda name: st.tuples(st.just(name), OPTIONS[name])))
    def check(option):
        name, value = option
        kwargs = dict(BASELINE)
        prompt = value if name == "prompt" else PROMPT
        if name != "prompt":
            kwargs[name] = value
        before = calls.count
        try:
            result = dl.Lens(pipe).run(prompt, use_cache=False, **kwargs)
        except (ValueError, TypeError) as err:
            message = str(err)
            assert "\n" not in message and calls.count == before, (name, value, message)
            assert NAMES.get(name, name) in message.lower() or name in message, (name, value, message)
            cases.append("refused")
            return
        for res in result if isinstance(result, list) else [result]:
            assert res.complete and len(res.images) == len(res.layers) * len(res.seeds) > 0
            side = kwargs.get("height") or 32
            assert {im.size[1] for im in res.images.values()} == {side}
        cases.append("accepted")

    check()
    print(f"\nLens.run: {len(cases)} cases, {cases.count('accepted')} accepted, {cases.count('refused')} refused")
    assert len(cases) >= 300 and cases.count("accepted") >= 20 and cases.count("refused") >= 150
    assert same_images(dl.Lens(pipe).run(PROMPT, use_cache=False, **BASELINE), reference)


# per flag: a few valid values and several wrong ones
CLI_VALUES = {
    "--layers": ["0", "0,4", "0:5:2", "-1", "9", "x", "", "0:0"],
    "--seeds": ["0", "0,1", "7", "0,0", "-1", "a", "4294967296"],
    "--steps": ["1", "2", "0", "x", "1e3"],
    "--guidance": ["7.5", "1", "0", "-1", "inf", "nan"],
    "--negative": ["", "a blue square", "\x00"],
    "--height": ["32", "16", "36", "0", "99999"],
    "--width": ["32", "20"],
    "--device": ["cpu", "cuda", "0", "tpu"],
    "--dtype": ["float32", "bfloat16", "int8"],
    "--offload": ["model", "disk"],
    "--max-batch": ["1", "4", "0", "-2"],
    "--out": ["g.png", "g.webp", "g.txt", "g"],
    "--bogus": ["1"],
}
CLI_PAIRS = st.sampled_from(sorted(CLI_VALUES)).flatmap(
    lambda flag: st.tuples(st.just(flag), st.one_of(st.sampled_from(CLI_VALUES[flag]), TEXT))
)


def test_command_line_exits_0_or_2_with_one_line(pipe, tmp_path_factory, capfd):
    folder = tmp_path_factory.mktemp("cli") / "pipe"
    pipe.save_pretrained(folder)
    out_dir = tmp_path_factory.mktemp("out")
    cases = []

    @settings(max_examples=120, **SETTINGS)
    @given(st.lists(CLI_PAIRS, max_size=2), st.sampled_from([True, True, True, False]))
    def check(pairs, with_prompt):
        argv = ["run"] + ([PROMPT] if with_prompt else [])
        argv += ["--model", str(folder), "--steps", "1", "--layers", "0", "--out", str(out_dir / "g.png")]
        for flag, value in pairs:
            argv += [flag, value] if flag != "--out" else [flag, str(out_dir / value)]
        try:
            code = cli_main(argv)
        except SystemExit as exit_:  # argparse's own usage errors
            code = exit_.code
        err = capfd.readouterr().err
        assert code in (0, 2), (argv, code, err)
        assert "Traceback" not in err, (argv, err)
        if code == 2:
            assert len([line for line in err.splitlines() if "error" in line]) == 1, (argv, err)
        cases.append(code)

    check()
    print(f"\ncommand line: {len(cases)} cases, {cases.count(0)} ran, {cases.count(2)} refused")
    assert len(cases) >= 100 and cases.count(0) >= 15 and cases.count(2) >= 40


@pytest.mark.slow
def test_magic_lines_never_raise(pipe, tmp_path_factory, capsys):
    from IPython.testing.globalipapp import get_ipython

    folder = tmp_path_factory.mktemp("magic") / "pipe"
    pipe.save_pretrained(folder)
    ip = get_ipython()
    ip.run_line_magic("load_ext", "difflens")
    cases = []
    pieces = st.sampled_from(
        [
            '"a red circle"',
            "it's",
            '"',
            "'",
            "--layers",
            "40",
            "0",
            "--steps",
            "x",
            "1",
            "--seeds",
            "0,0",
            "--guidance",
            "nan",
            "--bogus",
            "--no-final-norm",
            "\\",
            "--",
        ]
    )

    @settings(max_examples=80, **SETTINGS)  # each case that runs loads the pipeline from its folder
    @given(st.lists(st.one_of(pieces, TEXT.filter(lambda s: "\n" not in s)), max_size=5))
    def check(words):
        line = " ".join(words) + f" --model {folder} --steps 1 --layers 0"
        ip.user_ns.pop("_difflens", None)
        ip.run_line_magic("difflens", line)  # must not raise
        dash = ip.user_ns.get("_difflens")
        out = capsys.readouterr().out
        if dash is None:
            assert out.startswith("difflens:") or "usage" in out, (line, out)
            cases.append("refused")
        else:
            assert dash.wait(60) and dash.status in ("done", "invalid", "error"), (line, dash.status)
            cases.append(dash.status)

    check()
    ip.run_line_magic("unload_ext", "difflens")
    print(f"\nmagic: {len(cases)} cases, {cases.count('done')} ran, {len(cases) - cases.count('done')} refused")
    assert len(cases) >= 70 and cases.count("refused") >= 13 and "error" not in cases


DASHBOARD_INPUTS = {
    "prompt": st.one_of(TEXT, st.sampled_from(["", "  ", "\x07", PROMPT])),
    "negative_prompt": TEXT,
    "seeds": st.one_of(TEXT, st.sampled_from(["0", "0,1", "0,0", "-1", "4294967296"])),
    "layers": st.one_of(TEXT, st.sampled_from(["", "0:5:2", "9", "x"])),
    "num_inference_steps": st.integers(-5, 3),
    "guidance_scale": st.floats(allow_nan=True),
    "skip_layers": st.one_of(TEXT, st.sampled_from(["", "2", "1,4", "0", "9", "x"])),
    "tokens": st.one_of(TEXT, st.sampled_from(["all", "prompt", "padding"])),
    "compare": st.one_of(TEXT, st.sampled_from(["none", "final_norm", "lens_negative"])),
    "lens_negative": st.booleans(),
    "selected_layer": st.integers(-3, 8),
}


def test_dashboard_inputs_are_refused_when_set_or_at_run(pipe, reference):
    dash = dl.LensDashboard(pipe)
    dash.num_inference_steps = 1
    cases = []

    @settings(max_examples=150, **SETTINGS)
    @given(
        st.sampled_from(sorted(DASHBOARD_INPUTS)).flatmap(lambda name: st.tuples(st.just(name), DASHBOARD_INPUTS[name]))
    )
    def check(change):
        name, value = change
        before = getattr(dash, name)
        try:
            setattr(dash, name, value)
        except (ValueError, TypeError) as err:
            assert getattr(dash, name) == before and "\n" not in str(err)
            cases.append("refused when set")
            return
        if name == "num_inference_steps":
            dash.num_inference_steps = 1  # accepted but kept cheap
        dash.run()
        assert dash.wait(60)
        assert dash.status in ("done", "invalid"), (name, value, dash.status, dash.message)
        cases.append(dash.status)
        dash.prompt, dash.negative_prompt, dash.seeds, dash.layers = PROMPT, "", "0", ""
        dash.skip_layers, dash.tokens, dash.compare, dash.lens_negative = "", "all", "none", False

    check()
    print(f"\ndashboard: {len(cases)} cases: " + ", ".join(f"{cases.count(c)} {c}" for c in sorted(set(cases))))
    assert len(cases) >= 120 and cases.count("done") >= 10 and cases.count("invalid") >= 10
    dash.layers, dash.seeds, dash.guidance_scale = "0,4", "0", 7.5
    dash.run()
    assert dash.wait(60) and same_images(dash.result, reference)


def test_printable_ascii_prompts_always_run(pipe):
    @settings(max_examples=25, **SETTINGS)
    @given(st.text(alphabet=string.printable.strip("\x0b\x0c"), min_size=1, max_size=40).filter(str.strip))
    def check(prompt):
        res = dl.Lens(pipe).run(prompt, layers=[4], num_inference_steps=1, use_cache=False)
        assert res.image(4).size == (32, 32)

    check()
