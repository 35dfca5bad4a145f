"""The CUDA tier (``pytest -m gpu``): what only a real GPU can show — each tiny family in its own precision, the
memory probe and the out-of-memory back-off under a real memory cap, attention capture and a dashboard run on the
device. Skipped cleanly without CUDA; ``benchmarks/device_check.sh`` runs it on a lent GPU beside the benchmarks."""

import numpy as np
import pytest
import torch

import difflens_widgets as dl
from difflens_widgets.core import memory, models
from difflens_widgets.testing import TINY_FAMILIES

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (the CPU paths are tested elsewhere)"),
]

PROMPT = "a red circle left of a blue square"
CUDA = torch.device("cuda")


def on_cuda(build, dtype: torch.dtype | None = None):
    """A tiny pipeline on the GPU in the family's own precision, as load_pipeline puts a hub model there."""
    pipe = build()
    dtype = dtype or models.default_dtype(CUDA, type(pipe).__name__)
    pipe.to(dtype=dtype)
    models.keep_vae_safe(pipe, dtype)
    models.place(pipe, CUDA)
    return pipe


@pytest.mark.parametrize("family", list(TINY_FAMILIES))
def test_each_family_runs_in_its_own_precision_on_cuda(family):
    pipe = on_cuda(TINY_FAMILIES[family])
    lens = dl.Lens(pipe)
    guidance = 3.5 if family == "flux" else 5.0
    size = {"height": 32, "width": 32} if family == "flux" else {}
    res = lens.run(PROMPT, seeds=[0, 1], num_inference_steps=3, guidance_scale=guidance, use_cache=False, **size)
    assert lens.device.type == "cuda" and res.problem == "" and res.non_finite == {}
    assert len(res.images) == 2 * (lens.num_layers + 1)
    first, last = (np.asarray(res.image(l), dtype=int) for l in (0, lens.num_layers))
    assert first.std() > 0 and not np.array_equal(first, last)  # drawn, and the layers differ


def test_the_probe_sizes_chunks_under_a_real_memory_cap():
    pipe = on_cuda(TINY_FAMILIES["stable-diffusion"])
    lens = dl.Lens(pipe)
    cap = (torch.cuda.memory_allocated() + 2 * 2**30) / 2**30
    with memory.memory_cap(CUDA, cap):
        res = lens.run(PROMPT, seeds=list(range(8)), num_inference_steps=2, height=256, width=256, use_cache=False)
    assert res.complete and len(res.images) == 40 and res.non_finite == {}
    assert res.params["memory_events"][0].startswith("measured ")  # the one-step probe, then sized chunks
    assert sum(res.params["images_per_call"]) == 40


def test_out_of_memory_backs_off_under_a_real_memory_cap_and_loses_nothing():
    pipe = on_cuda(TINY_FAMILIES["stable-diffusion"])
    lens = dl.Lens(pipe)
    run = dict(seeds=list(range(8)), num_inference_steps=2, height=256, width=256, use_cache=False)
    roomy = lens.run(PROMPT, max_batch=4, **run)
    cap = (torch.cuda.memory_allocated() + 256 * 2**20) / 2**30  # far below what 40 images at once need
    torch.cuda.empty_cache()
    with memory.memory_cap(CUDA, cap):
        res = lens.run(PROMPT, max_batch=40, **run)
    assert res.complete and len(res.images) == 40 and res.non_finite == {}
    assert any("out of memory" in event for event in res.params["memory_events"])
    worst = max(
        int(np.abs(np.asarray(res.images[k], dtype=int) - np.asarray(roomy.images[k], dtype=int)).max())
        for k in res.images
    )
    assert worst <= 8  # the same noise; only fp16 batching differences


def test_attention_maps_are_captured_on_cuda():
    lens = dl.Lens(on_cuda(TINY_FAMILIES["stable-diffusion"]))
    res = lens.run(PROMPT, layers=[0, 4], seeds=[0], num_inference_steps=2, attention=True, use_cache=False)
    heat = res.attention(4, "circle")
    assert heat.shape == (32, 32) and np.isfinite(heat).all() and heat.max() > 0


def test_a_dashboard_run_on_cuda():
    dash = dl.LensDashboard(on_cuda(TINY_FAMILIES["stable-diffusion"]))
    dash.num_inference_steps, dash.seeds = 2, "0,1"
    dash.run()
    assert dash.wait(120)
    assert dash.status == "done" and dash.message == "" and len(dash.frames) == 10
