"""load_pipeline, the command line and the IPython magics, on a tiny pipeline saved to a folder."""

import time

import numpy as np
import pytest
from PIL import Image

import difflens_widgets as dl
from difflens_widgets.cli import main


@pytest.fixture(scope="module")
def pipe_folder(tmp_path_factory, tiny_pipe):
    folder = tmp_path_factory.mktemp("tiny") / "pipe"
    tiny_pipe.save_pretrained(folder)
    return folder


def test_load_local_folder_gives_same_images(pipe_folder, tiny_pipe):
    loaded = dl.load_pipeline(pipe_folder, device="cpu")
    a = dl.Lens(loaded).run("a red circle", layers=[0, 4], num_inference_steps=2)
    b = dl.Lens(tiny_pipe).run("a red circle", layers=[0, 4], num_inference_steps=2)
    for layer in (0, 4):
        assert np.array_equal(np.asarray(a.image(layer)), np.asarray(b.image(layer)))


def test_pipeline_object_passes_through(tiny_pipe):
    assert dl.load_pipeline(tiny_pipe) is tiny_pipe


def test_uncached_hub_id_fails_fast_and_explains(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    start = time.perf_counter()
    with pytest.raises(FileNotFoundError, match="not in the local Hugging Face cache.*local pipeline folder"):
        dl.load_pipeline("someone/not-a-cached-model", device="cpu")
    assert time.perf_counter() - start < 30  # a generous bound: it must not wait on a network


def test_folder_without_pipeline(tmp_path):
    with pytest.raises(ValueError, match="model_index.json"):
        dl.load_pipeline(tmp_path)
    with pytest.raises(FileNotFoundError, match="no pipeline folder"):
        dl.load_pipeline(str(tmp_path / "missing" / "pipe.safetensors"))
    with pytest.raises(TypeError, match="diffusers pipeline"):
        dl.load_pipeline(42)


def test_cli_writes_grid_and_folder(pipe_folder, tmp_path, capsys):
    out = tmp_path / "grid.png"
    code = main(
        [
            "run",
            "a red circle left of a blue square",
            "--model",
            str(pipe_folder),
            "--layers",
            "0:5:2",
            "--seeds",
            "0,1",
            "--steps",
            "2",
            "--out",
            str(out),
            "--save-dir",
            str(tmp_path / "all"),
            "--device",
            "cpu",
        ]
    )
    assert code == 0
    grid = Image.open(out)
    assert grid.size == (80 + 3 * 128, 26 + 22 + 2 * 128)  # 3 layers × 2 seeds of 32 px images at 128 px
    assert len(list((tmp_path / "all").glob("layer*_seed*.png"))) == 6
    assert "layers [0, 2, 4]" in capsys.readouterr().out


def test_cli_reports_bad_input(pipe_folder, capsys):
    code = main(["run", "a red circle", "--model", str(pipe_folder), "--layers", "7", "--device", "cpu"])
    assert code == 2
    assert "valid layers for this model are 0..4" in capsys.readouterr().err


def test_magics(pipe_folder, capsys):
    from IPython.testing.globalipapp import get_ipython

    ip = get_ipython()
    ip.run_line_magic("load_ext", "difflens")
    ip.run_line_magic("difflens", f'"a red circle" --model {pipe_folder} --layers 0,4 --steps 2 --seeds 0,1')
    dash = ip.user_ns["_difflens"]
    assert isinstance(dash, dl.LensDashboard) and dash.status in ("loading", "running", "done")  # on screen at once
    assert dash.wait(60) and dash.status == "done"
    assert dash.result.layers == [0, 4] and dash.result.seeds == [0, 1] and len(dash.frames) == 4
    assert dash.final_norm is None and dash.result.params["final_norm"] is True  # None: the family's own choice
    ip.run_line_magic("difflens", f'"a red circle" --model {pipe_folder} --layers 4 --steps 1 --no-final-norm')
    ablated = ip.user_ns["_difflens"]
    assert ablated.wait(60) and ablated.final_norm is False and ablated.result.params["final_norm"] is False
    ip.run_cell_magic("difflens", f"--model {pipe_folder} --layers 4 --steps 1", "a red circle\na blue square\n")
    dashes = ip.user_ns["_difflens"]
    assert all(d.wait(60) for d in dashes)
    assert [d.result.prompt for d in dashes] == ["a red circle", "a blue square"]
    capsys.readouterr()
    ip.run_line_magic("difflens", f'"a red circle" --model {pipe_folder} --layers 40')
    assert "difflens: layer 40 is out of range" in capsys.readouterr().out
    ip.run_line_magic("difflens", '"a red circle" --model /no/such/folder')
    assert "difflens: no pipeline folder" in capsys.readouterr().out
    ip.run_line_magic("difflens", '"a red circle" --steps many')
    assert "difflens: argument --num-inference-steps/--steps: invalid int value" in capsys.readouterr().out
    ip.run_line_magic("difflens", "it's red")
    assert "difflens: cannot read the line (No closing quotation)" in capsys.readouterr().out
    ip.run_line_magic("difflens", "--help")
    assert "--layers" in capsys.readouterr().out
    ip.run_line_magic("unload_ext", "difflens")
    assert "difflens" not in ip.magics_manager.magics["line"]


def test_half_precision_pipeline_keeps_vae_in_fp32():
    import torch

    from difflens_widgets.core.models import keep_vae_in_fp32
    from difflens_widgets.testing import tiny_stable_diffusion

    pipe = tiny_stable_diffusion().to(torch.bfloat16)
    keep_vae_in_fp32(pipe)
    assert pipe.vae.dtype == torch.float32 and pipe.unet.dtype == torch.bfloat16
    res = dl.Lens(pipe).run("a red circle", layers=[0, 4], num_inference_steps=2)
    assert res.image(4).size == (32, 32)
    assert np.asarray(res.image(4)).std() > 0  # not a flat (NaN → black) image


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--device", "cuda"], "device 'cuda' was asked for but CUDA is not available"),
        (["--out", "grid.xyz"], "--out 'grid.xyz' must end in an image extension"),
        (["--seeds", "0,0"], "repeat a seed"),
        (["--steps", "0"], "num_inference_steps must be in 1..1000"),
        (["--guidance", "inf"], "guidance_scale must be a number in 0..100"),
        (["--guidance", "1e20"], "published models use 1-20), got 1e+20"),
    ],
)
def test_cli_refuses_bad_arguments_in_one_line_before_loading_a_model(argv, message, capfd, monkeypatch):
    import torch

    if argv[0] == "--device" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    from diffusers import DiffusionPipeline

    monkeypatch.setattr(DiffusionPipeline, "from_pretrained", lambda *a, **k: pytest.fail("model loaded"))
    assert main(["run", "a red circle"] + argv) == 2
    captured = capfd.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert lines == [f"difflens: error: {lines[0].removeprefix('difflens: error: ')}"] and message in lines[0]
    assert "Traceback" not in captured.err and "denoising" not in captured.err


def test_loading_prints_no_warnings_or_bars(capfd):
    dl.load_pipeline("toy", device="cpu")
    captured = capfd.readouterr()
    assert captured.out == "" and captured.err == ""


def test_package_import_is_light_and_submodules_are_attributes():
    import subprocess
    import sys

    code = (
        "import sys, difflens_widgets as dl, difflens_widgets.cli as cli; cli._parser(); "
        "assert 'torch' not in sys.modules and 'diffusers' not in sys.modules, 'heavy import'; "
        "assert dl.similarity.token_similarity and dl.memory.ChunkPlan and dl.Lens; print('ok')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "ok", out.stderr
    with pytest.raises(AttributeError, match="has no attribute 'nope'"):
        dl.nope  # noqa: B018 (the attribute access is what is tested)


def test_uncached_hub_id_with_downloading_off_never_touches_the_network(monkeypatch):
    import socket

    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)  # as on a user's machine
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    lookups = []
    monkeypatch.setattr(socket, "getaddrinfo", lambda host, *a, **k: lookups.append(host) or pytest.fail(host))
    with pytest.raises(FileNotFoundError, match="not in the local Hugging Face cache and downloading is off"):
        dl.load_pipeline("someone/not-cached-model", device="cpu")
    assert lookups == []


def test_cli_attention_writes_the_words_map_and_every_map(pipe_folder, tmp_path, capsys):
    out, saved = tmp_path / "grid.png", tmp_path / "all"
    argv = ["run", "a red circle", "--model", str(pipe_folder), "--layers", "0,4", "--steps", "2", "--device", "cpu"]
    assert main(argv + ["--attention", "circle", "--out", str(out), "--save-dir", str(saved)]) == 0
    written = tmp_path / "grid_attention_circle.png"
    assert f"wrote {written}" in capsys.readouterr().out
    expected = dl.Lens(pipe_folder).run("a red circle", layers=[0, 4], num_inference_steps=2,
                                                      attention=True)  # fmt: skip
    assert np.array_equal(np.asarray(Image.open(written)), np.asarray(expected.attention_grid("circle")))
    with np.load(saved / "attention.npz") as arrays:
        assert sorted(arrays.files) == ["maps_0,0", "maps_4,0", "mass_0,0", "mass_4,0"]
        assert np.allclose(arrays["maps_4,0"], expected.attention_maps[(4, 0)])
        assert arrays["mass_0,0"].shape == (2, expected.attention_maps[(0, 0)].shape[0])  # steps × tokens


def test_cli_attention_refuses_a_word_not_in_the_prompt_before_denoising(pipe_folder, tmp_path, capsys, monkeypatch):
    import difflens_widgets.analyses.panels as panels

    monkeypatch.setattr(panels, "execute_panels", lambda *a, **k: pytest.fail("denoised before checking the word"))
    argv = [
        "run",
        "a red circle",
        "--model",
        str(pipe_folder),
        "--attention",
        "square",
        "--out",
        str(tmp_path / "g.png"),
    ]
    assert main(argv + ["--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "'square' is not a word of this prompt" in err and "circle" in err and err.count("\n") == 1
    assert not (tmp_path / "g.png").exists()
