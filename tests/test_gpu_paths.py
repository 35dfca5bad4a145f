"""The GPU-facing paths, exercised on the CPU: family precision, measured chunk sizes, out-of-memory back-off,
CPU offload, thread count, compile-friendly chunks. Nothing here needs a GPU: OOM and GPU memory are simulated."""

import functools

import numpy as np
import pytest
import torch

import difflens_widgets as dl
from difflens_widgets import testing
from difflens_widgets.adapters import adapter_class_for, adapter_for
from difflens_widgets.core import memory, models

PROMPT = "a red circle left of a blue square"
FAMILY_PRECISION = {
    testing.tiny_stable_diffusion: (torch.float16, True),
    testing.tiny_sdxl: (torch.float16, True),
    testing.tiny_sd3: (torch.bfloat16, False),
    testing.tiny_flux: (torch.bfloat16, False),
    testing.tiny_chroma: (torch.bfloat16, False),
    testing.tiny_flux2_klein: (torch.bfloat16, False),
    testing.tiny_flux2: (torch.bfloat16, False),
    testing.tiny_qwen_image: (torch.bfloat16, False),
    testing.tiny_lumina2: (torch.bfloat16, False),
    testing.tiny_sana: (torch.bfloat16, False),
    testing.tiny_cogview4: (torch.bfloat16, False),
    testing.tiny_hidream: (torch.bfloat16, False),
    testing.tiny_pixart: (torch.bfloat16, False),
    testing.tiny_deepfloyd_if: (torch.float16, False),
}


# Another batch composition (a chunk halved, a decode split, a padded chunk) is the same images up to rounding: the
# same noise, the same conditioning, but the CPU's GEMMs block a batch of 8 differently from one of 2, and with one
# torch thread (as under `pytest -n 2`) that shows as 1/255 on a few pixels. Two threads happened to round alike.
ROUNDING = 1


def max_pixel_difference(a, b) -> int:
    return max(
        int(np.abs(np.asarray(a.image(l, s), dtype=int) - np.asarray(b.image(l, s), dtype=int)).max())
        for l in a.layers
        for s in a.seeds
    )


@pytest.fixture
def reference(tiny_pipe):
    return dl.Lens(tiny_pipe).run(PROMPT, seeds=[0, 1], num_inference_steps=3, max_batch=64, use_cache=False)


@pytest.mark.parametrize("build", list(FAMILY_PRECISION), ids=lambda f: f.__name__)
def test_each_family_runs_in_its_own_precision_on_a_gpu(build):
    pipe = build()
    expected, vae_fp32 = FAMILY_PRECISION[build]
    name = type(pipe).__name__
    assert adapter_class_for(name) is type(adapter_for(pipe))
    assert models.default_dtype(torch.device("cuda"), name) == expected
    assert models.default_dtype(torch.device("cpu"), name) == torch.float32
    assert adapter_class_for(name).vae_in_fp32 is vae_fp32
    assert models.default_dtype(torch.device("cuda"), "SomeNewPipeline") == torch.float16


@pytest.mark.parametrize(
    "build, folder_dtype", [(testing.tiny_flux, torch.bfloat16), (testing.tiny_stable_diffusion, torch.float16)]
)
def test_load_pipeline_picks_the_family_precision_before_reading_weights(build, folder_dtype, tmp_path, monkeypatch):
    build().save_pretrained(tmp_path)
    assert models.pipeline_class_of(str(tmp_path), {}) == type(build()).__name__
    placed = []
    monkeypatch.setattr(models, "place", lambda pipe, device, *a: placed.append(device))  # no GPU here
    monkeypatch.setattr(models, "check_device", torch.device)
    pipe = dl.load_pipeline(tmp_path, device="cuda")
    assert placed == [torch.device("cuda")]
    assert adapter_for(pipe).denoiser.dtype == folder_dtype
    if folder_dtype == torch.float16:  # SD: the VAE stays fp32, and decodes fp16 latents
        assert pipe.vae.dtype == torch.float32
        out = pipe.vae.decode(torch.zeros(1, 4, 8, 8, dtype=torch.float16)).sample
        assert out.dtype == torch.float32


def test_dtype_names_and_bad_values(tmp_path):
    assert models.parse_dtype("bf16") is torch.bfloat16 and models.parse_dtype("float16") is torch.float16
    with pytest.raises(ValueError, match="dtype must be a torch dtype or one of float32"):
        dl.load_pipeline("toy", device="cpu", dtype="float8")
    with pytest.raises(ValueError, match="offload must be None, 'model' or 'sequential'"):
        dl.load_pipeline(testing.tiny_stable_diffusion(), device="cpu", offload="disk")


def test_out_of_memory_halves_the_chunk_and_loses_nothing(tiny_pipe, reference, monkeypatch):
    original = tiny_pipe.unet.forward

    def forward(sample, *args, **kwargs):  # a "GPU" that holds at most 2 images (4 rows with guidance)
        if sample.shape[0] > 4:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (simulated)")
        return original(sample, *args, **kwargs)

    monkeypatch.setattr(tiny_pipe.unet, "forward", forward)
    seen = []
    res = dl.Lens(tiny_pipe).run(
        PROMPT,
        seeds=[0, 1],
        num_inference_steps=3,
        max_batch=8,
        use_cache=False,
        progress=lambda done, total, _: seen.append((done, total)),
    )
    assert res.complete and max_pixel_difference(res, reference) <= ROUNDING
    assert res.params["memory_events"] == [
        "out of memory at 8 images per call; retried at 4",
        "out of memory at 4 images per call; retried at 2",
    ]
    assert res.params["images_per_call"] == [2] * 5
    assert all(done <= total for done, total in seen) and seen[-1] == (15, 15)
    assert "step" not in vars(tiny_pipe.scheduler)  # the scheduler wrapper is gone


def test_out_of_memory_at_one_image_says_what_to_change(tiny_pipe, reference, monkeypatch):
    def forward(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory (simulated)")

    monkeypatch.setattr(tiny_pipe.unet, "forward", forward)
    with pytest.raises(MemoryError, match="single image; lower height/width, load the pipeline with offload="):
        dl.Lens(tiny_pipe).run(PROMPT, seeds=[0, 1], num_inference_steps=3, max_batch=2, use_cache=False)
    monkeypatch.undo()
    again = dl.Lens(tiny_pipe).run(PROMPT, seeds=[0, 1], num_inference_steps=3, use_cache=False)
    assert max_pixel_difference(again, reference) <= ROUNDING


def test_other_errors_are_not_retried(tiny_pipe, monkeypatch):
    calls = []

    def forward(*args, **kwargs):
        calls.append(1)
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")

    monkeypatch.setattr(tiny_pipe.unet, "forward", forward)
    with pytest.raises(RuntimeError, match="shapes cannot be multiplied"):
        dl.Lens(tiny_pipe).run(PROMPT, num_inference_steps=2, use_cache=False)
    assert len(calls) == 1


class SimulatedGpu:
    """Stands in for CudaMemory: 100 MiB available; an image costs 10 MiB in a denoiser call and 40 MiB in a VAE
    decode (an fp32 VAE at a large size costs more than a denoising step, as SDXL's does)."""

    def __init__(self):
        self.high = 0

    def available(self):
        return 100 * 2**20

    def start_peak(self):
        self.high = 0
        return 0

    def peak(self):
        return self.high

    def saw(self, images: int, mib: int) -> None:
        self.high = max(self.high, images * mib * 2**20)


def on_simulated_gpu(pipe, monkeypatch, rows_per_image: int = 2) -> tuple[SimulatedGpu, list]:
    """Route the pipe's denoiser and VAE calls through a SimulatedGpu; returns it and the denoiser's batch sizes
    (in images: ``rows_per_image`` denoiser rows each, 2 with classifier-free guidance)."""
    gpu, batches = SimulatedGpu(), []
    denoiser = adapter_for(pipe).denoiser
    original = denoiser.forward

    def forward(*args, **kwargs):
        rows = len(args[0] if args else kwargs.get("hidden_states", kwargs.get("sample")))
        batches.append(rows // rows_per_image)
        gpu.saw(rows // rows_per_image, 10)
        return original(*args, **kwargs)

    monkeypatch.setattr(denoiser, "forward", forward)
    if getattr(pipe, "vae", None) is not None:
        decode = pipe.vae.decode

        def vae_decode(z, *args, **kwargs):
            gpu.saw(len(z), 40)
            return decode(z, *args, **kwargs)

        monkeypatch.setattr(pipe.vae, "decode", vae_decode)
    monkeypatch.setattr(
        memory.ChunkPlan, "for_run", functools.partial(memory.ChunkPlan.for_run.__func__, memory.ChunkPlan, memory=gpu)
    )
    return gpu, batches


def test_denoising_and_decoding_are_sized_apart_from_a_one_step_probe(tiny_pipe, reference, monkeypatch):
    _, batches = on_simulated_gpu(tiny_pipe, monkeypatch)
    res = dl.Lens(tiny_pipe).run(PROMPT, seeds=[0, 1], num_inference_steps=3, use_cache=False)
    assert batches[0] == 2 and batches[1:] == [8] * 3 + [2] * 3  # the probe: one step of 2, then 8 + 2 images
    assert res.params["images_per_call"] == [8, 2]  # 0.85 × 100 MiB / 10 MiB denoising = 8
    assert res.params["memory_events"] == [  # 0.85 × 100 / 40 decoding = 2
        "measured 10 MiB per image denoising, 40 MiB decoding; 8 images per call, decoded 2 at a time"
    ]
    assert max_pixel_difference(res, reference) <= ROUNDING  # the same noise and the same pixels, decoded 2 at a time
    assert "decode" not in vars(tiny_pipe.vae) or vars(tiny_pipe.vae)["decode"].__name__ == "vae_decode"


@pytest.mark.parametrize("build", list(FAMILY_PRECISION), ids=lambda f: f.__name__.removeprefix("tiny_"))
def test_probed_chunks_and_decode_sub_chunks_keep_every_familys_pixels(build, monkeypatch):
    pipe = build()
    lens = dl.Lens(pipe)
    run = dict(seeds=[0, 1], num_inference_steps=2, use_cache=False, guidance_scale=3.0)
    whole = lens.run(PROMPT, max_batch=64, **run)  # every image in one call, decoded at once
    one_row = lens.adapter.family == "flux" or lens.adapter.guidance_layout == "calls"  # no guidance batch rows
    on_simulated_gpu(pipe, monkeypatch, rows_per_image=1 if one_row else 2)
    probed = lens.run(PROMPT, **run)
    assert probed.params["memory_events"][0].startswith("measured 10 MiB per image denoising")
    if getattr(pipe, "vae", None) is not None:
        assert probed.params["memory_events"][0].endswith("decoded 2 at a time")
    assert max_pixel_difference(probed, whole) <= ROUNDING


def test_a_decode_out_of_memory_halves_the_decode_and_keeps_the_denoising(tiny_pipe, reference, monkeypatch):
    original, batches = tiny_pipe.vae.decode, []

    def decode(z, *args, **kwargs):  # a "GPU" that decodes at most 2 images at once
        if len(z) > 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 4.00 GiB (simulated)")
        return original(z, *args, **kwargs)

    monkeypatch.setattr(tiny_pipe.vae, "decode", decode)
    unet = tiny_pipe.unet.forward
    monkeypatch.setattr(tiny_pipe.unet, "forward", lambda s, *a, **k: batches.append(len(s)) or unet(s, *a, **k))
    res = dl.Lens(tiny_pipe).run(PROMPT, seeds=[0, 1], num_inference_steps=3, max_batch=8, use_cache=False)
    assert res.complete and max_pixel_difference(res, reference) <= ROUNDING
    assert res.params["memory_events"] == [
        "out of memory decoding 8 images at once; decoding 4",
        "out of memory decoding 4 images at once; decoding 2",
    ]
    assert len(batches) == 6 and res.params["images_per_call"] == [8, 2]  # no denoising step was run twice
    assert vars(tiny_pipe.vae)["decode"] is decode  # the patch found is put back


def test_the_memory_cap_is_set_on_an_indexed_device(monkeypatch):
    from types import SimpleNamespace

    calls = []

    def strict(fraction, device):  # torch's own check, which refused bench_gpu's bare "cuda"
        if isinstance(device, torch.device) and device.index is None:
            raise ValueError(f"Expected a torch.device with a specified index or an integer, but got:{device}")
        calls.append((round(fraction, 3), device))

    monkeypatch.setattr(torch.cuda, "set_per_process_memory_fraction", strict)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: SimpleNamespace(total_memory=128 * 2**30))
    with memory.memory_cap(torch.device("cuda"), 16):
        assert calls == [(0.125, torch.device("cuda", 0))]
    assert calls[-1] == (1.0, torch.device("cuda", 0))  # lifted after
    with memory.memory_cap("cpu", 16):
        pass
    assert len(calls) == 2  # no cap off CUDA


def test_cpu_refuses_an_image_that_cannot_fit_before_any_denoiser_call(tiny_pipe, monkeypatch):
    monkeypatch.setattr(memory.CpuMemory, "available", lambda self: 50 * 2**20)  # a machine with 50 MiB free
    calls = []
    original = tiny_pipe.unet.forward
    monkeypatch.setattr(tiny_pipe.unet, "forward", lambda *a, **k: calls.append(1) or original(*a, **k))
    seen = []
    with pytest.raises(MemoryError, match=r"one 256×256 image needs about 0.3 GiB on the CPU.*lower height/width"):
        dl.Lens(tiny_pipe).run(
            PROMPT, height=256, width=256, num_inference_steps=1, use_cache=False, progress=lambda *a: seen.append(a)
        )
    assert calls == [] and seen == []  # refused before the first denoiser call, before any progress


def test_cpu_chunks_shrink_to_the_free_memory(tiny_pipe, reference, monkeypatch):
    per_image = memory.cpu_image_bytes(32, 32, torch.float32)
    monkeypatch.setattr(memory.CpuMemory, "available", lambda self: int(3.5 * per_image / memory.HEADROOM))
    res = dl.Lens(tiny_pipe).run(PROMPT, seeds=[0, 1], num_inference_steps=3, use_cache=False)
    assert res.params["images_per_call"] == [3, 3, 3, 1]
    assert "3 images per call to fit" in res.params["memory_events"][0]
    assert max_pixel_difference(res, reference) <= ROUNDING  # another batching: the lens's batched == sequential bound


def test_a_progress_event_comes_before_the_first_denoiser_call_returns(tiny_pipe, monkeypatch):
    """A slowed denoiser: the caller hears "step 0 of N" before its first call is done."""
    events, in_denoiser = [], []
    original = tiny_pipe.unet.forward

    def slow(*args, **kwargs):
        in_denoiser.append(len(events))
        return original(*args, **kwargs)

    monkeypatch.setattr(tiny_pipe.unet, "forward", slow)
    dl.Lens(tiny_pipe).run(
        PROMPT,
        layers=[4],
        num_inference_steps=2,
        use_cache=False,
        progress=lambda done, total, preview: events.append((done, total)),
    )
    assert events[0] == (0, 2) and in_denoiser[0] == 1  # the event was there when the first call began


def test_cpu_estimate_and_oom_detection():
    assert memory.cpu_image_bytes(64, 64, torch.float32) == 2 * memory.cpu_image_bytes(64, 64, torch.bfloat16)
    assert memory.CpuMemory().available() > 0
    assert memory.is_out_of_memory(RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried ..."))
    assert memory.is_out_of_memory(torch.OutOfMemoryError("CUDA out of memory"))
    assert not memory.is_out_of_memory(RuntimeError("expected scalar type Half but found Float"))


@pytest.mark.parametrize("mode", ["model", "sequential"])
def test_lens_works_under_cpu_offload(mode, reference):
    pipe = dl.load_pipeline(testing.tiny_stable_diffusion(), device="cpu", offload=mode)
    if mode == "sequential":
        assert pipe.text_encoder.device.type == "meta"  # weights stream in per layer; ids must not follow them
        try:
            pipe(PROMPT, num_inference_steps=1)
        except TypeError as err:  # accelerate cannot stream weights on a CPU-only torch build
            pytest.skip(f"diffusers' own pipeline cannot run with sequential offload here: {str(err)[:80]}")
    res = dl.Lens(pipe).run(PROMPT, seeds=[0, 1], num_inference_steps=3, use_cache=False)
    assert max_pixel_difference(res, reference) <= ROUNDING
    vectors, _ = dl.Lens(pipe).embed(PROMPT, layers=[4])
    assert np.isfinite(vectors[4]).all()


def test_threads_follow_the_cgroup_quota(tmp_path, monkeypatch):
    quota = tmp_path / "cpu.max"
    quota.write_text("150000 100000\n")
    assert models.cgroup_cpu_quota(str(quota)) == 1.5
    quota.write_text("max 100000\n")
    assert models.cgroup_cpu_quota(str(quota)) is None
    assert models.cgroup_cpu_quota(str(tmp_path / "missing")) is None
    before = torch.get_num_threads()
    monkeypatch.setattr(models, "cgroup_cpu_quota", lambda *a: 1.0)
    try:
        assert models.available_cpus() == 1
        assert models.use_available_cpus() == 1 and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_compile_compiles_once_and_keeps_every_chunk_the_same_shape(reference, monkeypatch):
    compiled = []
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, **kw: compiled.append((self, kw)))
    pipe = testing.tiny_stable_diffusion()
    batches = []
    pipe.unet.register_forward_pre_hook(lambda m, args: batches.append(args[0].shape[0]))
    lens = dl.Lens(pipe, compile=True)
    dl.Lens(pipe, compile=True)
    assert [m for m, _ in compiled] == [pipe.unet] and compiled[0][1]["dynamic"] is False
    res = lens.run(PROMPT, seeds=[0, 1], num_inference_steps=3, max_batch=4, use_cache=False, snapshot_every=3)
    assert set(batches) == {8}  # 10 images in chunks of 4: the last chunk of 2 padded to 4 (×2 for guidance)
    assert max_pixel_difference(res, reference) <= ROUNDING
    assert all(len(res.snapshots[item]) == 1 for item in res.images)


def test_attention_runs_through_pytorch_sdpa(tiny_pipe, monkeypatch):
    calls = []
    sdpa = torch.nn.functional.scaled_dot_product_attention
    monkeypatch.setattr(
        torch.nn.functional, "scaled_dot_product_attention", lambda *a, **k: calls.append(1) or sdpa(*a, **k)
    )
    dl.Lens(tiny_pipe).run(PROMPT, layers=[4], num_inference_steps=1, use_cache=False)
    assert calls


def test_cli_prints_memory_events_and_one_line_memory_errors(tmp_path, capsys, monkeypatch):
    from difflens_widgets.cli import main

    folder = tmp_path / "pipe"
    testing.tiny_stable_diffusion().save_pretrained(folder)
    import diffusers

    original = diffusers.UNet2DConditionModel.forward
    limit = {"rows": 4}

    def forward(self, sample, *args, **kwargs):
        if sample.shape[0] > limit["rows"]:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return original(self, sample, *args, **kwargs)

    monkeypatch.setattr(diffusers.UNet2DConditionModel, "forward", forward)
    args = [
        "run",
        PROMPT,
        "--model",
        str(folder),
        "--layers",
        "0:5:2",
        "--steps",
        "1",
        "--device",
        "cpu",
        "--dtype",
        "float32",
        "--max-batch",
        "3",
        "--out",
        str(tmp_path / "g.png"),
    ]
    assert main(args) == 0
    assert "difflens: out of memory at 3 images per call; retried at 1" in capsys.readouterr().err
    limit["rows"] = 0
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "difflens: error: out of memory denoising a single image" in err and "Traceback" not in err


def test_dashboard_says_when_memory_ran_out(monkeypatch):
    pipe = testing.tiny_stable_diffusion()
    original = pipe.unet.forward

    def forward(sample, *args, **kwargs):
        if sample.shape[0] > 4:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return original(sample, *args, **kwargs)

    monkeypatch.setattr(pipe.unet, "forward", forward)
    dash = dl.LensDashboard(pipe)
    dash.num_inference_steps, dash.layers, dash.seeds, dash.max_batch = 2, "", "0,1", 10
    dash.run()
    assert dash.wait(60)
    assert dash.status == "done" and len(dash.frames) == 10
    assert dash.message == (
        "GPU memory: out of memory at 10 images per call; retried at 5; "
        "out of memory at 5 images per call; retried at 2"
    )


@pytest.mark.parametrize("build", [testing.tiny_flux2_klein, testing.tiny_qwen_image, testing.tiny_hidream])
def test_language_model_families_run_under_model_offload(build):
    """The 4–24 B encoders of these families share a GPU with the denoiser only through offload: each component
    moves to the execution device for its own pass and back, and the lens's images do not change."""
    plain = dl.Lens(build()).run(PROMPT, layers=[1, 4], seeds=[0], num_inference_steps=2, use_cache=False)
    pipe = dl.load_pipeline(build(), device="cpu", offload="model")
    offloaded = dl.Lens(pipe).run(PROMPT, layers=[1, 4], seeds=[0], num_inference_steps=2, use_cache=False)
    assert max_pixel_difference(offloaded, plain) <= ROUNDING
