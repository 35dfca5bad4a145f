"""Every bad command line is one line on stderr and exit status 2 — before any model work where the problem can be
seen without a model — and pickle-based weights are never loaded (a crafted pickle runs code when unpickled)."""

import pickle
import shutil

import pytest

import difflens_widgets as dl
from difflens_widgets.cli import main
from difflens_widgets.testing import tiny_stable_diffusion


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    (root / "afile").write_text("not a folder")
    (root / "prompts.txt").write_text("a red circle\n")
    (root / "notimage.txt").write_text("hello")
    (root / "labels.csv").write_text("image,color\nnotimage.txt,red\nnotimage.txt,blue\n")
    return root


# (arguments, what the one line must say, whether the model may be loaded first)
CASES = [
    (["run", "x", "--out", "/dev/null/x.png"], "is a file, so", False),
    (["run", "x", "--out", "grid.txt"], "must end in an image extension", False),
    (["run", "x", "--save-dir", "{root}/afile"], "is a file, so", False),
    (["run", "x", "--device", "meta"], "a device that computes", False),
    (["run", "x", "--tuned", "{root}/evil.pt"], "must be safetensors", True),
    (["run", "x", "--layers", "99"], "out of range", True),
    (["probe", "--out", "{root}/afile/p"], "is a file, so", False),
    (["probe", "--out", "{root}/p", "--timesteps", "abc"], "--timesteps: timesteps 'abc' must be integers", False),
    (["probe", "--out", "{root}/p", "--sae", "up1@7"], "timestep 7 is not probed", False),
    (["probe", "--out", "{root}/p", "--sae", "nosuch@50"], "block 'nosuch' is not probed", True),
    (["probe", "--out", "{root}/p", "--images", "{root}/labels.csv"], "line 2: 'notimage.txt' is not an image", False),
    (["sweep", "{root}/prompts.txt", "--out", "{root}/afile"], "is a file, not a folder", False),
    (["sweep", "{root}/prompts.txt", "--out", "{root}/s", "--scorer", "bogus"], "unknown scorer 'bogus'", False),
    (["report", "{root}"], "is not a sweep folder", False),
]


@pytest.mark.parametrize("args, says, needs_model", CASES, ids=[" ".join(c[0][:4]) for c in CASES])
def test_each_bad_command_line_is_one_line_and_status_2(files, args, says, needs_model, capsys, monkeypatch):
    evil = files / "evil.pt"
    evil.write_bytes(pickle.dumps(Exploit(files / "pwned")))
    if not needs_model:
        for module in (dl, dl.models):  # the facade first: it caches what it finds in core.models
            monkeypatch.setattr(module, "load_pipeline", lambda *a, **k: pytest.fail("a model was loaded first"))
    code = main([a.format(root=files) for a in args])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("difflens: error: ") and says in err[0], err
    assert not (files / "pwned").exists()
    assert not (files / "s").exists()  # a refused sweep writes nothing


class Exploit:
    """A pickle that, when loaded, leaves a file behind: the proof that something unpickled it."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def crafted(tmp_path):
    """Places pickle-based weights can hide in: files of every pickle suffix, and each kind of folder."""
    base = tiny_stable_diffusion()
    payload = pickle.dumps(Exploit(tmp_path / "pwned"))
    places = []
    for suffix in (".pt", ".pth", ".bin", ".ckpt", ".pkl", ".pickle"):
        path = tmp_path / f"tuned{suffix}"
        path.write_bytes(payload)
        places.append(path)
    for folder, name in (("embeds", "learned_embeds.bin"), ("lora", "pytorch_lora_weights.bin")):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / name).write_bytes(payload)
        places.append(tmp_path / folder)
    for part, weights in (("text_encoder", "pytorch_model.bin"), ("unet", "diffusion_pytorch_model.bin")):
        alone = tmp_path / f"{part}_alone"
        getattr(base, part).save_pretrained(alone)
        for file in alone.glob("*.safetensors"):
            file.unlink()
        (alone / weights).write_bytes(payload)
        places.append(alone)
        components = tmp_path / f"{part}_components"
        shutil.copytree(alone, components / part)
        places.append(components)
    for part, weights in (("unet", "diffusion_pytorch_model.bin"), ("text_encoder", "model.bin")):
        pipeline = tmp_path / f"pipeline_{part}"
        base.save_pretrained(pipeline)
        for file in (pipeline / part).glob("*.safetensors"):
            file.unlink()
        (pipeline / part / weights).write_bytes(payload)
        places.append(pipeline)
    return base, places


def test_fourteen_crafted_pickles_are_never_unpickled(tmp_path):
    base, places = crafted(tmp_path)
    assert len(places) == 14
    for place in places:
        with pytest.raises(ValueError, match="must be safetensors"):
            dl.load_tuned(base, place)
        assert not (tmp_path / "pwned").exists(), place
    with pytest.raises(ValueError, match="must be safetensors"):
        dl.load_pipeline(tmp_path / "pipeline_unet", device="cpu")
    assert not (tmp_path / "pwned").exists()
