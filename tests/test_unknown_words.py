"""A prompt outside the toy's world ("a dog on a bench") gets a plain note naming the words the toy model does not
know, before any denoising, in the CLI and the dashboard; the images still come (a lens of unknown words is itself
instructive). Prompts of the world's own words, and models that are not a toy, get no note."""

import threading

import pytest

import difflens_widgets as dl
from difflens_widgets.cli import main
from difflens_widgets.toy.world import COLORS, SHAPES, unknown_words, unknown_words_note, vocabulary


@pytest.mark.parametrize(
    ("prompt", "unknown"),
    [
        ("a dog on a bench", ["dog", "bench"]),  # 'on' is the world's own word ("on top of")
        ("A Red Circle to the LEFT of a blue square", []),  # case does not matter; every word is the world's
        ("a red circle, left of a blue square!", []),  # nor punctuation
        ("two red circles", ["two", "circles"]),  # no numbers, no plurals in this world
        ("a crimson circle and a circle", ["crimson"]),  # repeated words named once
        ("3 dogs 3 dogs", ["3", "dogs"]),
        ("", []),
    ],
)
def test_unknown_words_are_the_prompts_words_outside_the_vocabulary(prompt, unknown):
    assert unknown_words(prompt) == unknown
    assert set(unknown).isdisjoint(vocabulary())


def test_the_note_names_the_words_and_what_the_world_has():
    note = unknown_words_note("a dog on a bench")
    assert note.startswith("the toy model does not know 'dog' and 'bench':")
    assert all(shape in note for shape in SHAPES) and f"{len(COLORS)} colours" in note
    assert "the lens still runs" in note
    assert unknown_words_note("a green triangle above a yellow star") == ""
    many = unknown_words_note("one two three four five six seven eight circle")
    assert "'five', 'six' and 2 more" in many and "'seven'" not in many  # a long prompt, one short line


def test_the_command_line_says_it_before_denoising_and_still_writes_the_grid(tmp_path, capsys, monkeypatch):
    out = tmp_path / "dog.png"
    seen_at_first_step = []
    real_run = dl.Lens.execute

    def execute(self, *args, **kwargs):  # what stderr held when the denoising began
        seen_at_first_step.append(capsys.readouterr().err)
        return real_run(self, *args, **kwargs)

    monkeypatch.setattr(dl.Lens, "execute", execute)
    assert main(["run", "a dog on a bench", "--layers", "0,8", "--steps", "1", "--out", str(out)]) == 0
    note = "difflens: note: the toy model does not know 'dog' and 'bench'"
    assert seen_at_first_step and note in seen_at_first_step[0]
    assert out.stat().st_size > 0
    assert main(["run", "a red circle", "--layers", "8", "--steps", "1", "--out", str(tmp_path / "red.png")]) == 0
    assert "note" not in capsys.readouterr().err


def test_no_note_for_a_model_that_is_not_a_toy(tiny_pipe, tmp_path, capsys):
    folder = tmp_path / "pipe"
    tiny_pipe.save_pretrained(folder)
    argv = ["run", "a dog on a bench", "--model", str(folder), "--layers", "0", "--steps", "1"]
    assert main([*argv, "--out", str(tmp_path / "dog.png")]) == 0
    assert "does not know" not in capsys.readouterr().err


def test_the_dashboard_says_it_from_the_start_to_the_end_of_the_run():
    dash = dl.LensDashboard("toy", prompt="a dog on a bench", layers="0,8", seeds="0", num_inference_steps=2)
    messages = []
    started = threading.Event()

    def watch(change):
        messages.append((dash.status, change["new"]))
        started.set()

    dash.observe(watch, "message")
    dash.run()
    assert started.wait(30) and dash.wait(120)
    first_status, first_message = messages[0]
    assert first_status == "running" and first_message.startswith("the toy model does not know 'dog' and 'bench'")
    assert dash.status == "done" and "does not know 'dog'" in dash.message
    assert sorted(dash.result.images) == [(0, 0), (8, 0)]  # the images still come
    dash.prompt = "a red circle above a blue square"
    dash.run()
    assert dash.wait(120) and dash.status == "done" and "does not know" not in dash.message
