"""``load_pipeline``: one entry point for the embedded toy model, a local folder, a cached hub id or a pipeline."""

from __future__ import annotations

import os
from pathlib import Path

import torch

TOY_MODEL_DIR = Path(__file__).parent / "toy" / "model"


def default_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def default_dtype(device: torch.device) -> torch.dtype:
    return torch.float16 if device.type == "cuda" else torch.float32


def keep_vae_in_fp32(pipe) -> None:
    """Keep the VAE in fp32 while the rest runs in half precision: SD-family VAEs overflow in fp16 (NaN → black
    images). Forward pre-hooks cast whatever latents arrive to the VAE's own dtype, so every pipeline's decode
    works unchanged."""
    vae = getattr(pipe, "vae", None)
    if vae is None:
        return
    vae.to(torch.float32)

    def to_fp32(module, args, kwargs):
        return tuple(a.float() if torch.is_tensor(a) else a for a in args), kwargs

    for name in ("post_quant_conv", "decoder", "quant_conv", "encoder"):
        part = getattr(vae, name, None)
        if isinstance(part, torch.nn.Module):
            part.register_forward_pre_hook(to_fp32, with_kwargs=True)


def _resolve(model: str, download: bool) -> tuple[str, dict]:
    """Where to load ``model`` from, and the from_pretrained arguments that keep it offline unless asked."""
    if model == "toy":
        if not (TOY_MODEL_DIR / "model_index.json").exists():
            raise FileNotFoundError(
                f"the embedded toy model is missing from this installation ({TOY_MODEL_DIR}); reinstall "
                "difflens-widgets, or train it: python -m difflens_widgets.toy.train --out DIR"
            )
        return str(TOY_MODEL_DIR), {}
    path = Path(model).expanduser()
    if path.is_dir():
        if not (path / "model_index.json").exists():
            raise ValueError(f"{path} is a folder but holds no model_index.json; pass a diffusers pipeline folder "
                             "(one saved with pipe.save_pretrained(...))")
        return str(path), {}
    if path.suffix or model.startswith((".", "/", "~")):
        raise FileNotFoundError(f"no pipeline folder at {path}")
    return model, {"local_files_only": not download}


def load_pipeline(model="toy", *, device: str | torch.device | None = None, dtype: torch.dtype | None = None,
                  download: bool = False, **from_pretrained_kwargs):
    """Load a diffusers pipeline for the lens.

    ``model`` is ``"toy"`` (the embedded model), a local pipeline folder, a hub id, or a pipeline object (moved to
    ``device``/``dtype`` when those are given). Hub ids are read from the local cache only unless
    ``download=True``, so nothing ever waits on a network that is not there. ``device`` defaults to CUDA when
    present, else CPU; ``dtype`` to fp16 on CUDA (VAE kept in fp32) and fp32 on CPU. ``trust_remote_code`` is
    never turned on here.
    """
    if not isinstance(model, (str, os.PathLike)):
        if not hasattr(model, "components"):
            raise TypeError(f"model must be 'toy', a folder, a hub id or a diffusers pipeline, "
                            f"not {type(model).__name__}")
        if device is not None:
            model.to(torch.device(device))
        if dtype is not None:
            model.to(dtype=dtype)
        return model
    device = torch.device(device) if device is not None else default_device()
    dtype = dtype or default_dtype(device)
    source, extra = _resolve(os.fspath(model), download)
    from diffusers import DiffusionPipeline

    kwargs = {**extra, **from_pretrained_kwargs, "dtype": dtype}
    try:
        pipe = DiffusionPipeline.from_pretrained(source, **kwargs)
    except OSError as err:  # diffusers/huggingface_hub raise OSError subclasses for a missing cache entry
        if kwargs.get("local_files_only"):
            raise FileNotFoundError(
                f"{source!r} is not in the local Hugging Face cache and downloading is off. Either download it "
                f"once (load_pipeline({source!r}, download=True), or `hf download {source}`), or pass a local "
                f"pipeline folder (pipe.save_pretrained(FOLDER) then load_pipeline(FOLDER))."
            ) from err
        raise
    pipe.to(device)
    if dtype == torch.float16:
        keep_vae_in_fp32(pipe)
    if hasattr(pipe, "safety_checker") and pipe.safety_checker is None and hasattr(pipe, "register_to_config"):
        pipe.register_to_config(requires_safety_checker=False)
    return pipe
