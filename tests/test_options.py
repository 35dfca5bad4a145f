import pytest

from difflens_widgets.core import validate as options


@pytest.mark.parametrize(
    "spec, expected",
    [
        (None, [0, 1, 2, 3, 4, 5, 6]),
        (3, [3]),
        (-1, [6]),
        ([5, 1, 1], [1, 5]),
        (range(0, 7, 3), [0, 3, 6]),
        ("0:12:2", [0, 2, 4, 6]),
        ("::3", [0, 3, 6]),
        ("-2:", [5, 6]),
        ("1,4", [1, 4]),
        ("2", [2]),
    ],
)
def test_parse_layers(spec, expected):
    assert options.parse_layers(spec, 6) == expected


@pytest.mark.parametrize(
    "spec, error, text",
    [
        (7, ValueError, "0..6"),
        ([0, 99], ValueError, "layer 99 is out of range"),
        (-8, ValueError, "0..6"),
        ("10:20", ValueError, "selects no layer"),
        ("a:b", ValueError, "integers"),
        ("0:6:0", ValueError, "step 0"),
        ([], ValueError, "no layers"),
        ([1.5], TypeError, "not an integer"),
        (2.0, TypeError, "layers must be"),
    ],
)
def test_parse_layers_rejects(spec, error, text):
    with pytest.raises(error, match=text):
        options.parse_layers(spec, 6)


def test_parse_seeds():
    assert options.parse_seeds(3) == [3]
    assert options.parse_seeds("0, 1,2") == [0, 1, 2]
    assert options.parse_seeds((4, 5)) == [4, 5]
    for bad, error in [
        ("x", TypeError),
        ([1.5], TypeError),
        ([True], TypeError),
        ([-1], ValueError),
        ([], ValueError),
        ([1, 1], ValueError),
        (None, TypeError),
    ]:
        with pytest.raises(error):
            options.parse_seeds(bad)


def test_scalar_checks():
    assert options.check_steps(5) == 5
    with pytest.raises(ValueError, match="in 1..1000"):
        options.check_steps(0)
    with pytest.raises(TypeError):
        options.check_steps(2.5)
    assert options.check_guidance(0) == 0.0
    assert options.check_guidance(100) == 100.0
    for bad in (-1, 100.5, 1e20):
        with pytest.raises(ValueError, match=r"in 0\.\.100"):
            options.check_guidance(bad)
    with pytest.raises(ValueError, match="multiple of 8"):
        options.check_size("height", 30, 8)
    with pytest.raises(ValueError, match="empty"):
        options.parse_prompts([])
    with pytest.raises(ValueError, match="empty"):
        options.parse_prompts("   ")
    with pytest.raises(TypeError):
        options.parse_prompts(5)


@pytest.mark.parametrize(
    "prompt, text",
    [
        ("a red \x00circle", "control characters \\(U\\+0000\\)"),
        ("\x1b[31ma red circle", "U\\+001B"),
        ("\u200b\u200b", "only spaces / invisible characters"),
        ("\u202e \u2060", "only spaces / invisible characters"),
    ],
)
def test_prompts_with_control_or_only_invisible_characters_are_refused(prompt, text):
    with pytest.raises(ValueError, match=text):
        options.parse_prompts(prompt)
    assert options.parse_prompts("a red\tcircle\nleft of a square") == ["a red\tcircle\nleft of a square"]
    assert options.parse_prompts("赤い円") == ["赤い円"]


def test_long_prompts_warn_in_one_short_line(tiny_pipe):
    import warnings

    import difflens_widgets as dl

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dl.Lens(tiny_pipe).embed("red " * 1000, layers=[4])
    messages = [str(w.message) for w in caught if "longer than" in str(w.message)]
    assert len(messages) == 1 and len(messages[0]) < 300 and "(986 tokens in all)" in messages[0]
