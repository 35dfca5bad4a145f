"""``load_pipeline``: one entry point for the embedded toy models, a local folder, a cached hub id or a pipeline."""

from __future__ import annotations

import contextlib
import json
import math
import os
import warnings
from pathlib import Path
from typing import Any

import torch

# The embedded models: name → pipeline folder inside the package. Found by path, so loading one never imports the
# toy package (its world, annotator and training scripts sit above the engine).
_PACKAGE = Path(__file__).resolve().parents[1]
EMBEDDED_MODELS = {
    "toy": _PACKAGE / "toy" / "model",  # StableDiffusionPipeline: causal CLIP + latent UNet
    "toy-t5": _PACKAGE / "toy" / "model_t5",  # PixArtAlphaPipeline: bidirectional T5 + DiT, the same VAE
}
_TRAINING_KIND = {"toy": "clip-unet", "toy-t5": "t5-dit"}  # the trainer's --kind that makes each of them
TOY_MODEL_DIR = EMBEDDED_MODELS["toy"]
DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
}
OFFLOAD_MODES = ("model", "sequential")


def default_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def parse_dtype(dtype) -> torch.dtype | None:
    """``None``, a ``torch.dtype`` or one of the names in :data:`DTYPES` → a torch dtype (or None)."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if isinstance(dtype, str) and dtype.lower() in DTYPES:
        return DTYPES[dtype.lower()]
    raise ValueError(f"dtype must be a torch dtype or one of {', '.join(DTYPES)}, got {dtype!r}")


def default_dtype(device: torch.device, pipeline_class: str | None = None) -> torch.dtype:
    """fp32 on the CPU; on an accelerator, the precision the family is published in (adapters' ``cuda_dtype``:
    fp16 for SD 1/2/XL and IF, bf16 for SD3, FLUX and PixArt), fp16 for an unknown family."""
    if device.type == "cpu":
        return torch.float32
    from ..adapters import adapter_class_for

    adapter = adapter_class_for(pipeline_class) if pipeline_class else None
    return adapter.cuda_dtype if adapter is not None else torch.float16


def available_cpus() -> int:
    """CPUs this process may really use: its affinity set, capped by a cgroup CPU quota (containers often see
    all the host's cores but may only use a few; torch's default thread count then oversubscribes them)."""
    count = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    quota = cgroup_cpu_quota()
    return max(1, min(count, math.floor(quota))) if quota else max(1, count)


def cgroup_cpu_quota(path: str = "/sys/fs/cgroup/cpu.max") -> float | None:
    """The cgroup v2 CPU quota in CPUs ("200000 100000" → 2.0), or None when unlimited or unreadable."""
    try:
        quota, period = Path(path).read_text().split()[:2]
    except (OSError, ValueError):
        return None
    return None if quota == "max" else int(quota) / int(period)


def use_available_cpus() -> int:
    """Lower torch's CPU thread count to :func:`available_cpus` when it is higher; returns the count in use."""
    cpus = available_cpus()
    if torch.get_num_threads() > cpus:
        torch.set_num_threads(cpus)
    return torch.get_num_threads()


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


def dtype_keyword(module_class=None) -> str:
    """The ``from_pretrained`` keyword for a dtype: ``dtype`` from diffusers 0.40 (``torch_dtype`` is deprecated
    there) and in transformers models, ``torch_dtype`` in older diffusers, which silently ignore ``dtype``."""
    if module_class is not None and not module_class.__module__.startswith("diffusers"):
        return "dtype"  # a transformers model (a text encoder): transformers 5 takes ``dtype``
    from importlib.metadata import version

    from packaging.version import Version

    return "dtype" if Version(version("diffusers")) >= Version("0.40.0") else "torch_dtype"


def check_device(device) -> torch.device:
    """A torch device from ``device`` ("cpu", "cuda", "cuda:1", a torch.device); refuses a malformed name and an
    accelerator this torch build or machine does not have, before anything is loaded."""
    if not isinstance(device, torch.device):
        try:
            device = torch.device(device)
        except (RuntimeError, TypeError, ValueError):
            raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {device!r}") from None
    if device.type not in ("cpu", "cuda", "mps"):
        raise ValueError(
            f"device must be 'cpu', 'cuda' or 'cuda:N' (or 'mps'), got {str(device)!r}: a lens run "
            "needs a device that computes"
        )
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"device {str(device)!r} was asked for but CUDA is not available here (torch "
            f"{torch.__version__}); use device='cpu', or install a CUDA build of torch on a GPU machine"
        )
    return device


@contextlib.contextmanager
def quiet_loading():
    """Silence diffusers' and transformers' loading bars and info/warning logs while a pipeline loads (students
    read them as errors; the lens reports its own progress). Errors still surface as exceptions."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    levels = (diffusers_logging.get_verbosity(), transformers_logging.get_verbosity())
    bars = (diffusers_logging.is_progress_bar_enabled(), transformers_logging.is_progress_bar_enabled())
    diffusers_logging.set_verbosity_error()
    transformers_logging.set_verbosity_error()
    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            yield
    finally:
        diffusers_logging.set_verbosity(levels[0])
        transformers_logging.set_verbosity(levels[1])
        if bars[0]:
            diffusers_logging.enable_progress_bar()
        if bars[1]:
            transformers_logging.enable_progress_bar()


def pipeline_class_of(source: str, extra: dict) -> str | None:
    """The pipeline class named by a folder's or a cached hub entry's ``model_index.json`` (no weights read, no
    network unless downloading is allowed); None if it cannot be read."""
    index: Path | None = Path(source) / "model_index.json"
    if index is not None and not index.exists():
        try:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(source, "model_index.json")
        except Exception:  # noqa: BLE001 - an unreadable cache only means "unknown family"
            cached = None
        index = Path(cached) if isinstance(cached, str) else None
    if index is None and not extra.get("local_files_only", True):
        try:
            from diffusers import DiffusionPipeline

            return DiffusionPipeline.load_config(source).get("_class_name")
        except Exception:  # noqa: BLE001 - from_pretrained will report the real problem
            return None
    try:
        return json.loads(index.read_text()).get("_class_name") if index else None
    except (OSError, ValueError):
        return None


def check_offload(offload) -> None:
    if offload is not None and offload not in OFFLOAD_MODES:
        raise ValueError(f"offload must be None, 'model' or 'sequential', got {offload!r}")


def place(pipe, device: torch.device, offload: str | None = None, channels_last: bool = False):
    """Put ``pipe`` on ``device``, or let accelerate offload it: ``"model"`` keeps one component at a time on
    the device, ``"sequential"`` streams weights layer by layer (slowest, least memory). The lens always
    computes on the pipeline's execution device, so both work unchanged."""
    check_offload(offload)
    if offload == "model":
        pipe.enable_model_cpu_offload(device=device)
    elif offload == "sequential":
        pipe.enable_sequential_cpu_offload(device=device)
    else:
        pipe.to(device)
    if channels_last:
        from ..adapters import denoiser_of

        denoiser = denoiser_of(pipe)
        if any(isinstance(m, torch.nn.Conv2d) for m in denoiser.modules()):
            denoiser.to(memory_format=torch.channels_last)
    if device.type == "cpu":
        use_available_cpus()
    return pipe


def embedded_name(pipe) -> str | None:
    """The name of the embedded model ``pipe`` was loaded from ("toy", "toy-t5"), or None."""
    source = str(getattr(pipe.config, "_name_or_path", ""))
    return next((name for name, folder in EMBEDDED_MODELS.items() if source == str(folder)), None)


def is_toy(pipe) -> bool:
    """Whether ``pipe`` is one of the embedded toy models (whose world the annotator knows)."""
    return embedded_name(pipe) is not None


PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".pkl", ".pickle")


def pickle_refusal(what: str) -> str:
    """Why pickle-based weights are refused, and what to do instead."""
    return (
        f"{what} must be safetensors: pickle-based weights (.bin, .pt, .ckpt) can run code when they are "
        "loaded, so difflens-widgets never loads them; convert them with safetensors.torch.save_file in an "
        "environment you trust"
    )


def _resolve(model: str, download: bool) -> tuple[str, dict]:
    """Where to load ``model`` from, and the from_pretrained arguments that keep it offline unless asked."""
    if model in EMBEDDED_MODELS:
        folder = EMBEDDED_MODELS[model]
        if not (folder / "model_index.json").exists():
            raise FileNotFoundError(
                f"the embedded model {model!r} is missing from this installation ({folder}); reinstall "
                "difflens-widgets, or train it: python -m difflens_widgets.studies.train "
                f"--kind {_TRAINING_KIND[model]} --out DIR"
            )
        return str(folder), {}
    path = Path(model).expanduser()
    if path.is_dir():
        if not (path / "model_index.json").exists():
            raise ValueError(
                f"{path} is a folder but holds no model_index.json; pass a diffusers pipeline folder "
                "(one saved with pipe.save_pretrained(...))"
            )
        return str(path), {}
    if path.suffix or model.startswith((".", "/", "~")):
        raise FileNotFoundError(f"no pipeline folder at {path}")
    return model, {"local_files_only": not download}


def locate(model, download: bool = False) -> tuple[str, dict, str | None]:
    """Where ``model`` ("toy", "toy-t5", a folder, a hub id) is, the offline arguments and its pipeline class, read
    without loading a weight: what a face checks before showing anything (a missing folder or an uncached hub id
    fails here, at once)."""
    source, extra = _resolve(os.fspath(model), download)
    pipeline_class = pipeline_class_of(source, extra)
    if extra.get("local_files_only", False) and pipeline_class is None:  # not cached: say so before the hub
        raise FileNotFoundError(_not_cached(source))
    return source, extra, pipeline_class


def load_pipeline(
    model="toy",
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype | str | None = None,
    download: bool = False,
    offload: str | None = None,
    channels_last: bool = False,
    **from_pretrained_kwargs,
):
    """Load a diffusers pipeline for the lens.

    ``model`` is ``"toy"`` or ``"toy-t5"`` (the embedded models), a local pipeline folder, a hub id, or a pipeline
    object (moved to ``device``/``dtype`` when those are given). Hub ids are read from the local cache only unless
    ``download=True``, so nothing ever waits on a network that is not there. ``device`` defaults to CUDA when
    present, else CPU. ``dtype`` (a torch dtype or "float16" / "bfloat16" / "float32") defaults to fp32 on the
    CPU and, on a GPU, to the family's own precision: fp16 for SD 1/2/XL and IF (their VAE kept in fp32), bf16
    for SD3, FLUX and PixArt. ``offload="model"`` or ``"sequential"`` uses accelerate's CPU offload for GPUs too
    small to hold the pipeline (e.g. FLUX on a 16 GB card). ``channels_last`` stores the UNet's convolution
    weights channels-last (often faster on GPUs; measure with ``benchmarks/bench_gpu.py``). On the CPU, torch's
    thread count is capped to the CPUs this process may use. ``trust_remote_code`` is never turned on here.
    """
    dtype = parse_dtype(dtype)
    check_offload(offload)  # before any weight is read
    if not isinstance(model, (str, os.PathLike)):
        if not hasattr(model, "components"):
            raise TypeError(
                f"model must be 'toy', 'toy-t5', a folder, a hub id or a diffusers pipeline, not {type(model).__name__}"
            )
        if dtype is not None:
            model.to(dtype=dtype)
        if device is not None or offload is not None or channels_last:
            target = check_device(device) if device is not None else default_device()
            place(model, target, offload, channels_last)
        return model
    device = check_device(device) if device is not None else default_device()
    source, extra, pipeline_class = locate(model, download)
    offline = extra.get("local_files_only", False)
    dtype = dtype or default_dtype(device, pipeline_class)
    # safetensors only: a pickled .bin/.ckpt can run code when loaded, and a folder may be someone else's
    kwargs = {**extra, "use_safetensors": True, **from_pretrained_kwargs, dtype_keyword(): dtype}
    try:
        with quiet_loading():
            from diffusers import DiffusionPipeline

            pipe = DiffusionPipeline.from_pretrained(source, **kwargs)
    except OSError as err:  # diffusers/huggingface_hub raise OSError subclasses for a missing cache entry
        if offline and not Path(source).is_dir():
            raise FileNotFoundError(_not_cached(source)) from err
        if "safetensors" in str(err).lower():
            raise ValueError(f"{source}: {pickle_refusal('its weights')}") from None
        raise
    keep_vae_safe(pipe, dtype)
    place(pipe, device, offload, channels_last)
    if hasattr(pipe, "safety_checker") and pipe.safety_checker is None and hasattr(pipe, "register_to_config"):
        pipe.register_to_config(requires_safety_checker=False)
    return pipe


def _not_cached(source: str) -> str:
    return (
        f"{source!r} is not in the local Hugging Face cache and downloading is off. Either download it once "
        f"(load_pipeline({source!r}, download=True), or `hf download {source}`), or pass a local pipeline "
        f"folder (pipe.save_pretrained(FOLDER) then load_pipeline(FOLDER))."
    )


def keep_vae_safe(pipe, dtype: torch.dtype) -> None:
    """Under fp16, keep the VAE in fp32 where the family's VAE overflows (adapters' ``vae_in_fp32``; an unknown
    family with a VAE too, to be safe)."""
    from ..adapters import adapter_class_for

    adapter = adapter_class_for(type(pipe).__name__)
    needs = adapter.vae_in_fp32 if adapter is not None else getattr(pipe, "vae", None) is not None
    if dtype == torch.float16 and needs:
        keep_vae_in_fp32(pipe)


def sd_pipeline(vae, unet, text_encoder, tokenizer, scheduler):
    """A ``StableDiffusionPipeline`` of these parts, without a safety checker (the toy model and the test
    architectures have nothing to check) and with its progress bar off (the lens reports progress itself)."""
    from diffusers import StableDiffusionPipeline

    pipe: Any = StableDiffusionPipeline(vae=vae, unet=unet, text_encoder=text_encoder, tokenizer=tokenizer,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)  # fmt: skip
    pipe.set_progress_bar_config(disable=True)
    return pipe
