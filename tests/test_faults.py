"""An exception at any stage of a run — text encoder, a denoising chunk, the VAE decode, a preview, the progress
callback, a KeyboardInterrupt — leaves every family's pipeline exactly as a normal run leaves it (hooks, patched
methods, attention processors, scheduler, flags), and the next run equals a fresh one."""

import numpy as np
import pytest
import torch

import difflens_widgets as dl
from difflens_widgets import testing
from difflens_widgets.adapters import adapter_for

PROMPT = "a red circle left of a blue square"
FAMILIES = list(testing.TINY_FAMILIES.values())
STAGES = ["encode", "second chunk", "decode", "preview", "callback", "keyboard interrupt"]
RUN = dict(
    layers=[0, 1], seeds=[0], num_inference_steps=2, max_batch=1, snapshot_every=1, use_cache=False, skip_layers=[1]
)


def pipeline_state(pipe) -> dict:
    """Everything a run may touch and must put back."""
    state = {
        "interrupt": getattr(pipe, "_interrupt", None),
        "progress bar": dict(getattr(pipe, "_progress_bar_config", {})),
        "scheduler attributes": sorted(k for k, v in vars(pipe.scheduler).items() if callable(v)),
    }
    for name, module in pipe.components.items():
        if not isinstance(module, torch.nn.Module):
            continue
        for sub_name, sub in module.named_modules():
            key = f"{name}.{sub_name}"
            hooks = (len(sub._forward_hooks), len(sub._forward_pre_hooks))
            if any(hooks):
                state[f"hooks {key}"] = hooks
            if "forward" in vars(sub):
                state[f"patched {key}"] = True
        if hasattr(module, "attn_processors"):
            state[f"processors {name}"] = sorted({type(p).__name__ for p in module.attn_processors.values()})
    return state


def inject(stage, pipe, lens, monkeypatch):
    """Arrange for ``stage`` to fail; returns extra run arguments. Methods are replaced in the instance's
    ``__dict__`` (``setitem``), so undoing removes them: ``setattr`` on an instance leaves the old bound method behind
    as an instance attribute under pytest < 9.2, which the state check would read as a patch the run left."""
    error = KeyboardInterrupt if stage == "keyboard interrupt" else RuntimeError
    if stage == "encode":
        encoder = lens.adapter.text_encoder
        monkeypatch.setitem(vars(encoder), "forward", lambda *a, **k: (_ for _ in ()).throw(error("encoder failed")))
    elif stage == "second chunk":
        denoiser, calls = lens.adapter.denoiser, []
        original = denoiser.forward

        def forward(*args, **kwargs):
            calls.append(1)
            if len(calls) > 2:  # the first chunk (2 steps) passes, the second fails
                raise error("denoiser failed")
            return original(*args, **kwargs)

        monkeypatch.setitem(vars(denoiser), "forward", forward)
    elif stage == "decode":
        if getattr(pipe, "vae", None) is None:
            pytest.skip("pixel-space family: no VAE decode")
        monkeypatch.setitem(vars(pipe.vae), "decode", lambda *a, **k: (_ for _ in ()).throw(error("decode failed")))
    elif stage == "preview":
        monkeypatch.setitem(
            vars(lens.adapter), "decode_preview", lambda *a, **k: (_ for _ in ()).throw(error("preview failed"))
        )
    else:

        def progress(done, total, preview):
            if done == 3:
                raise error("callback failed")

        return {"progress": progress}
    return {}


@pytest.mark.parametrize("stage", STAGES)
@pytest.mark.parametrize("build", FAMILIES, ids=lambda f: f.__name__.removeprefix("tiny_"))
def test_a_failure_at_any_stage_leaves_the_pipeline_as_it_was(build, stage, monkeypatch):
    pipe = build()
    if stage == "decode" and getattr(pipe, "vae", None) is None:
        pytest.skip("pixel-space family: no VAE decode")
    lens = dl.Lens(pipe)
    run = dict(RUN, guidance_scale=3.0) if adapter_for(pipe).family == "flux" else dict(RUN)
    reference = lens.run(PROMPT, **run)  # also installs transformers' permanent hidden-state capture hooks
    before = pipeline_state(pipe)
    extra = inject(stage, pipe, lens, monkeypatch)
    expected = KeyboardInterrupt if stage == "keyboard interrupt" else RuntimeError
    with pytest.raises(expected, match="failed"):
        lens.run(PROMPT, **run, **extra)
    monkeypatch.undo()
    assert pipeline_state(pipe) == before
    again = lens.run(PROMPT, **run)
    for key, image in reference.images.items():
        assert np.array_equal(np.asarray(again.images[key]), np.asarray(image)), key


@pytest.mark.parametrize("build", FAMILIES, ids=lambda f: f.__name__.removeprefix("tiny_"))
def test_progress_previews_and_cancel_reach_every_family(build):
    pipe = build()
    lens = dl.Lens(pipe)
    guidance = 3.0 if adapter_for(pipe).family == "flux" else 7.5
    calls = []
    res = lens.run(
        PROMPT,
        layers=[0, 1],
        seeds=[0],
        num_inference_steps=2,
        max_batch=1,
        snapshot_every=1,
        guidance_scale=guidance,
        use_cache=False,
        progress=lambda d, t, p: calls.append((d, t, p)),
    )
    assert [(d, t) for d, t, _ in calls] == [(0, 4), (1, 4), (2, 4), (3, 4), (4, 4)]  # 0: before the first call
    assert calls[0][2] is None and all(p is not None and len(p.images) == 1 for _, _, p in calls[1:])
    assert [step for step, _ in res.snapshots[(0, 0)]] == [1, 2]
    stopped = lens.run(
        PROMPT,
        layers=[0, 1],
        seeds=[0],
        num_inference_steps=3,
        max_batch=1,
        guidance_scale=guidance,
        use_cache=False,
        progress=lambda d, t, p: d == 1,
    )
    assert not stopped.complete and stopped.images == {}
