"""Train the toy text-to-image models from scratch on the shapes world.

    python -m difflens_widgets.studies.train --out runs/toy                 # VAE, pool, UNet + CLIP
    python -m difflens_widgets.studies.train --out runs/t5 --kind t5-dit \
        --vae-from difflens_widgets/toy/model/vae --vae-steps 0 --threads 1      # toy-t5 on one core, shipped VAE
    python -m difflens_widgets.studies.train --out runs/t5 --kind t5-dit --steps 60000   # resume, go further

Two stages. The VAE learns on batches rendered per step (``--workers`` loader processes). The denoiser and its text
encoder then learn from a *pool* (:mod:`.pool`): scenes rendered, VAE-encoded and tokenized once, each draw a fresh
latent sample and fresh noise, so a step is denoiser and encoder work only (on a CPU, encoding was half a step).
Loss: ε-MSE weighted by min-SNR-γ (``--snr-gamma``). ``--eval-every`` judges relation prompts on the raw and the
EMA weights (the EMA hides early learning) and logs both.

Seeded and resumable: every draw depends only on (seed, step), so a run stopped and resumed from ``checkpoint.pt``
sees the same data as one that never stopped; ``weights.safetensors`` (raw and EMA weights, fp16, with the step) is
small enough to carry between machines and resumes with a fresh, re-warmed optimizer. Progress goes to
``DIR/log.jsonl``; ``DIR/pipeline`` is a standard diffusers pipeline folder (``StableDiffusionPipeline`` or
``PixArtAlphaPipeline``) holding the EMA weights. ``--max-minutes`` stops a run cleanly (checkpoint + export) so it
fits a time-limited machine and resumes later.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..core.models import sd_pipeline
from ..toy import architecture
from ..toy.tokenizer import build_tokenizer
from ..toy.world import World
from .pool import TRAINING_WEIGHTS


def images_to_tensor(images) -> torch.Tensor:
    """PIL images → float tensor in [-1, 1], NCHW."""
    array = np.stack([np.asarray(im, dtype=np.float32) for im in images]) / 127.5 - 1.0
    return torch.from_numpy(array).permute(0, 3, 1, 2).contiguous()


def batch_for_step(world: World, seed: int, step: int, batch_size: int, paired: bool = False):
    """The training batch of ``step``: a pure function of (seed, step), which makes resuming exact."""
    world.rng.seed(seed * 1_000_003 + step)
    images, scenes = world.batch(batch_size, paired=paired)
    return images_to_tensor(images), [s.caption for s in scenes]


class StepBatches(torch.utils.data.IterableDataset):
    """The batches of steps ``start..stop-1`` in order, each from :func:`batch_for_step`, so loader workers
    (worker i renders steps start+i, start+i+n, ...; the loader interleaves them back in order) change nothing."""

    def __init__(self, seed: int, start: int, stop: int, batch_size: int, image_size: int, world_options: dict):
        self.seed, self.start, self.stop, self.batch_size, self.image_size = seed, start, stop, batch_size, image_size
        self.world_options = world_options

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        first, stride = (0, 1) if info is None else (info.id, info.num_workers)
        options = dict(self.world_options)
        world = World(self.seed, image_size=self.image_size, layout=options.pop("layout", "clear"))
        for step in range(self.start + first, self.stop, stride):
            images, captions = batch_for_step(world, self.seed, step, self.batch_size, **options)
            yield step, images, captions


def step_batches(
    seed: int, start: int, stop: int, batch_size: int, workers: int, image_size: int = 64, **world_options
):
    """``world_options``: ``layout`` (the world's) and ``paired`` (:func:`batch_for_step`)."""
    dataset = StepBatches(seed, start, stop, batch_size, image_size, world_options)
    return torch.utils.data.DataLoader(
        dataset, batch_size=None, num_workers=workers, prefetch_factor=4 if workers else None, persistent_workers=False
    )


def lr_at(step: int, peak: float, warmup: int, total: int) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return peak * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress)))


def log(out: Path, **record) -> None:
    print(json.dumps(record), flush=True)
    with open(out / "log.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")


# ---------------------------------------------------------------------------------------------------------------
# Stage 1: the autoencoder
# ---------------------------------------------------------------------------------------------------------------
def train_vae(
    out: Path,
    steps: int,
    batch_size: int,
    seed: int,
    device: torch.device,
    workers: int = 0,
    start_from: Path | None = None,
    lr: float = 1e-3,
) -> None:
    """Train the autoencoder (from scratch, or fine-tune ``start_from``: a VAE folder trained on an earlier world)."""
    from diffusers import AutoencoderKL

    path = out / "vae"
    if (path / "config.json").exists():
        print(f"VAE already trained in {path}; skipping")
        return
    torch.manual_seed(seed)
    vae = AutoencoderKL.from_pretrained(start_from) if start_from else architecture.build_vae()
    vae = vae.float().train().to(device)
    world = World(seed)
    opt = torch.optim.AdamW(vae.parameters(), lr=lr)
    start = time.time()
    for step, images, _ in step_batches(seed + 17, 0, steps, batch_size, workers):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, lr, 50, steps)
        images = images.to(device, non_blocking=True)
        posterior = vae.encode(images).latent_dist
        recon = vae.decode(posterior.sample()).sample
        mse = F.mse_loss(recon, images)
        kl = posterior.kl().mean() / posterior.mean[0].numel()
        loss = mse + 1e-4 * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 50 == 0 or step == steps - 1:
            log(
                out,
                stage="vae",
                step=step,
                mse=round(mse.item(), 6),
                kl=round(kl.item(), 4),
                elapsed_s=round(time.time() - start, 1),
            )
    vae.eval()
    with torch.no_grad():
        images = batch_for_step(world, seed + 99, 0, 256)[0].to(device)
        latents = vae.encode(images).latent_dist.sample()
        recon = vae.decode(vae.encode(images).latent_dist.mode()).sample
    scaling = 1.0 / latents.std().item()
    vae.register_to_config(scaling_factor=scaling)
    vae.cpu().save_pretrained(path)
    log(
        out,
        stage="vae",
        done=True,
        scaling_factor=round(scaling, 4),
        heldout_mse=round(F.mse_loss(recon, images).item(), 6),
        elapsed_s=round(time.time() - start, 1),
    )


# ---------------------------------------------------------------------------------------------------------------
# Stage 2: the denoiser and the text encoder, jointly, from scratch, on a pre-encoded pool
# ---------------------------------------------------------------------------------------------------------------
class ClipUNet:
    """``toy``: a causal CLIP text encoder (no attention mask: padding after the end token never reaches the real
    tokens of a causal encoder) and the latent UNet, as a ``StableDiffusionPipeline``."""

    name = "clip-unet"
    denoiser_folder = "unet"

    def build(self, tokenizer, unet_channels=None):
        unet = architecture.build_unet(channels=unet_channels) if unet_channels else architecture.build_unet()
        return unet, architecture.build_text_encoder(tokenizer)

    def condition(self, text_encoder, ids, mask):
        return text_encoder(ids).last_hidden_state

    def predict(self, denoiser, noisy, t, cond, mask):
        return denoiser(noisy, t, encoder_hidden_states=cond).sample

    def pipeline(self, vae, denoiser, text_encoder, tokenizer):
        return sd_pipeline(vae, denoiser, text_encoder, tokenizer, architecture.inference_scheduler())

    generate_kwargs: dict = {}


class T5DiT:
    """``toy-t5``: a bidirectional T5 encoder reading the caption with its attention mask, and a PixArt-α DiT that
    gets the same mask for its cross-attention (as ``PixArtAlphaPipeline`` passes it), as a ``PixArtAlphaPipeline``."""

    name = "t5-dit"
    denoiser_folder = "transformer"

    def build(self, tokenizer, unet_channels=None):
        return architecture.build_dit(), architecture.build_t5_encoder(tokenizer)

    def condition(self, text_encoder, ids, mask):
        return text_encoder(ids, attention_mask=mask).last_hidden_state  # after T5's final RMS norm

    def predict(self, denoiser, noisy, t, cond, mask):
        no_resolution = {"resolution": None, "aspect_ratio": None}  # PixArt's size conditioning is for 1024² only
        return denoiser(
            noisy, encoder_hidden_states=cond, encoder_attention_mask=mask, timestep=t, added_cond_kwargs=no_resolution
        ).sample

    def pipeline(self, vae, denoiser, text_encoder, tokenizer):
        from diffusers import PixArtAlphaPipeline

        pipe = PixArtAlphaPipeline(
            tokenizer=tokenizer,
            text_encoder=text_encoder,
            vae=vae,
            transformer=denoiser,
            scheduler=architecture.inference_scheduler(),
        )
        pipe.set_progress_bar_config(disable=True)
        return pipe

    # the toy's 64×64 is none of PixArt's aspect-ratio bins; clean_caption needs bs4 + ftfy and the world's
    # captions have nothing to clean
    generate_kwargs = {"use_resolution_binning": False, "clean_caption": False}


KINDS = {kind.name: kind for kind in (ClipUNet(), T5DiT())}


def ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    with torch.no_grad():
        torch._foreach_lerp_(list(ema.parameters()), list(model.parameters()), 1.0 - decay)


def export_pipeline(
    out: Path, kind, vae, denoiser, text_encoder, tokenizer, dtype=torch.float16, folder: str = "pipeline"
) -> Path:
    """Write a standard pipeline folder of ``kind`` (weights in ``dtype`` safetensors) to ``out/folder``."""
    parts = (copy.deepcopy(m).to(dtype) for m in (vae, denoiser, text_encoder))
    pipe = kind.pipeline(*parts, tokenizer)
    target = out / folder
    pipe.save_pretrained(target, safe_serialization=True)
    return target


def min_snr_weights(alphas_cumprod: torch.Tensor, gamma: float | None) -> torch.Tensor:
    """Per-timestep loss weights of min-SNR-γ (Hang et al. 2023) for ε-prediction: min(SNR, γ) / SNR, which stops
    the nearly clean timesteps (high SNR, easy and many) from dominating the gradient; all ones without γ."""
    if not gamma:
        return torch.ones_like(alphas_cumprod)
    snr = alphas_cumprod / (1 - alphas_cumprod)
    return torch.clamp(snr, max=gamma) / snr


def timestep_weights(num_timesteps: int, later: float = 1.0, portion: float = 0.5) -> torch.Tensor | None:
    """Sampling weights over the training timesteps: the noisiest ``portion`` of them drawn ``later`` times as often
    as the rest (diffusers' ``--timestep_bias_strategy later``). Why: where two objects go is decided in the first,
    noisiest denoising steps; a model that has the relation's axis but not which object goes first gets more of the
    steps that decide it. None (uniform, the seeded draw unchanged) when ``later`` is 1."""
    if later == 1.0:
        return None
    if later <= 0 or not 0 < portion < 1:
        raise ValueError(f"timestep bias: the multiplier must be > 0 and the portion in (0, 1), got {later}, {portion}")
    weights = torch.ones(num_timesteps)
    weights[num_timesteps - round(portion * num_timesteps) :] = later
    return weights / weights.sum()


def relation_check(pipe, kind, prompts: list[str], seeds=(0, 1), steps: int = 20, guidance: float = 7.5) -> dict:
    """How well the model draws relations now: ``prompts`` × ``seeds`` through the pipeline (the last layer), judged
    by the annotator — both objects drawn, the arrangement right, the arrangement right given both drawn (what the
    pilot tracks every few hundred steps: compositional skills appear late and abruptly in small diffusion models,
    so the curve, not one number, is kept), and the axis right in either order given both (axis 1.0 beside
    relation 0.5: the relation word is read, which named object goes where is not). ``order_varies_with_seed``:
    of the prompts drawn on their axis in two seeds or more, the share whose order changes with the seed — near 0
    when the words decide which object goes where (rightly or not), about 1 − 2^(1−seeds) when the starting noise
    does. ``first_named_first``: of the images on their axis, the share with the first-named object on the left or
    on top (1 after training on ``left of``/``above`` alone, as a curriculum's first stage does; 0.5 by chance)."""
    from ..toy.annotate import annotate, judge, parse_caption, relation_axis
    from .binding import GOES_FIRST

    verdicts = []
    orders: dict[str, list[bool]] = {}  # prompt → per seed drawn on the axis: is the named order right?
    with torch.no_grad():
        for seed in seeds:
            generators = [torch.Generator().manual_seed(seed) for _ in prompts]
            images = pipe(
                prompts, num_inference_steps=steps, guidance_scale=guidance, generator=generators,
                height=architecture.IMAGE_SIZE, width=architecture.IMAGE_SIZE, **kind.generate_kwargs,
            ).images  # fmt: skip
            for image, prompt in zip(images, prompts):
                detections = annotate(image)
                verdict = {**judge(detections, prompt), "axis": relation_axis(detections, prompt)}
                verdicts.append({**verdict, **_placement(image, prompt)})
                if verdict["both"] and verdict["axis"]:
                    orders.setdefault(prompt, []).append(bool(verdict["relation"]))
    both = [v for v in verdicts if v["both"]]
    repeated = [seen for seen in orders.values() if len(seen) >= 2]
    first_named_first = [
        right == GOES_FIRST[parse_caption(prompt).relation] for prompt, seen in orders.items() for right in seen
    ]
    coloured = [v for v in verdicts if v.get("by_colours")]
    return {
        "colours_present": round(len(coloured) / len(verdicts), 3),
        "placement_given_colours": round(sum(v["by_placement"] for v in coloured) / len(coloured), 3)
        if coloured
        else None,
        "images": len(verdicts),
        "both": round(len(both) / len(verdicts), 3),
        "relation": round(sum(v["relation"] for v in verdicts) / len(verdicts), 3),
        "relation_given_both": round(sum(v["relation"] for v in both) / len(both), 3) if both else None,
        "axis_given_both": round(sum(v["axis"] for v in both) / len(both), 3) if both else None,
        "order_varies_with_seed": round(sum(len(set(seen)) == 2 for seen in repeated) / len(repeated), 3)
        if repeated
        else None,
        "first_named_first": round(sum(first_named_first) / len(first_named_first), 3) if first_named_first else None,
    }


def binding_check(text_encoder, tokenizer) -> list[float] | str:
    """Per encoder layer, how well an object's words say which side it goes to (:mod:`.binding`'s ``side`` probe,
    600 prompts): the text encoder's half of a relation, which moves before the pictures do (0.5 while the words
    hold their place and the relation apart, near 1 once a layer fuses them)."""
    from ..denoiser.probes import require_sklearn
    from .binding import binding_probe

    try:
        require_sklearn()
    except ImportError as err:
        return f"not measured: {err}"
    return binding_probe(text_encoder, tokenizer, count=600)["side"]


def _placement(image, prompt: str) -> dict:
    """The shape-blind relation check (annotate.placement) where the prompt names two different colours."""
    from ..toy.annotate import parse_caption, placement

    colours = {c for c, _ in parse_caption(prompt).objects}
    return {f"by_{k}": v for k, v in placement(image, prompt).items()} if len(colours) == 2 else {}


WEIGHTS_FILE = "weights.safetensors"  # raw and EMA weights in fp16 with the step: small enough to carry anywhere


def save_weights(path: Path, modules: dict[str, torch.nn.Module], step: int) -> None:
    """``modules`` (name → module) as one fp16 safetensors file, keys ``name.parameter``, the step in its metadata."""
    from safetensors.torch import save_file

    tensors = {
        f"{name}.{key}": value.detach().to("cpu", torch.float16).contiguous()
        for name, module in modules.items()
        for key, value in module.state_dict().items()
    }
    save_file(tensors, path, metadata={"step": str(step)})


def load_weights(path: Path, modules: dict[str, torch.nn.Module]) -> int:
    """Fill ``modules`` from a :func:`save_weights` file (a module the file lacks takes its EMA twin's weights: a
    file carried with the EMA weights alone still resumes); returns the step it was saved at."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    tensors = load_file(path)
    with safe_open(path, "pt") as f:
        step = int(f.metadata()["step"])
    for name, module in modules.items():
        source = name if any(k.startswith(f"{name}.") for k in tensors) else f"ema_{name}"
        state = {k[len(source) + 1 :]: v for k, v in tensors.items() if k.startswith(f"{source}.")}
        if not state:
            raise ValueError(f"{path} holds no weights for {name} (nor ema_{name})")
        module.load_state_dict({k: v.float() for k, v in state.items()})
    return step


def build_modules(toy, tokenizer, unet_channels=None, device: torch.device | None = None) -> dict:
    """A fresh denoiser and text encoder of kind ``toy`` and their EMA twins, by the names weights files use."""
    denoiser, text_encoder = (m.to(device or "cpu") for m in toy.build(tokenizer, unet_channels))
    ema_denoiser, ema_text = copy.deepcopy(denoiser), copy.deepcopy(text_encoder)
    return {"denoiser": denoiser, "text": text_encoder, "ema_denoiser": ema_denoiser, "ema_text": ema_text}


def train_denoiser(
    out: Path,
    pool_dir: Path,
    steps: int,
    batch_size: int,
    seed: int,
    lr: float,
    checkpoint_every: int,
    export_every: int,
    bf16: bool,
    device: torch.device,
    kind: str = "clip-unet",
    deadline: float | None = None,
    unet_channels: tuple[int, ...] | None = None,
    ema_decay: float = 0.999,
    stop_at: int | None = None,
    eval_every: int = 0,
    eval_prompts: int = 24,
    snr_gamma: float | None = None,
    warmup: int = 200,
    uncond: float = 0.1,
    later_timesteps: float = 1.0,
    text_lr_scale: float = 1.0,
    relations: tuple[str, ...] | None = None,
) -> None:
    """Denoiser and text encoder from scratch on the pool in ``pool_dir``; the schedule spans ``steps``, the run
    stops at ``stop_at`` (a pilot stops early on the long run's schedule, so the winner resumes into the long run
    with nothing wasted) or at ``deadline`` (a ``time.time()``), whichever comes first. ``eval_every``: run
    :func:`relation_check` on the raw and the EMA weights that often (the EMA lags the raw weights, and hides
    early learning). ``text_lr_scale``: the text encoder learns at that multiple of the denoiser's rate.
    ``relations``: train on the relation captions naming these only (:func:`.pool.load_pool`)."""
    from diffusers import AutoencoderKL

    from .pool import load_pool

    toy = KINDS[kind]
    vae = AutoencoderKL.from_pretrained(out / "vae").eval().requires_grad_(False).to(device)
    tokenizer = build_tokenizer()
    pool = load_pool(pool_dir, tokenizer, device, relations)
    torch.manual_seed(seed)
    modules = build_modules(toy, tokenizer, unet_channels, device)
    denoiser, text_encoder, ema_denoiser, ema_text = modules.values()
    params = list(denoiser.parameters()) + list(text_encoder.parameters())
    lr_scales = (1.0, text_lr_scale)  # per parameter group, as given now (a resumed run may change them)
    opt = torch.optim.AdamW(
        [{"params": list(denoiser.parameters())}, {"params": list(text_encoder.parameters())}],
        lr=lr,
        weight_decay=0.01,
        fused=device.type == "cuda",
    )
    scheduler = architecture.train_scheduler()
    ckpt = out / "checkpoint.pt"
    start_step, warm_from = 0, 0
    if ckpt.exists():
        state = torch.load(ckpt, weights_only=True, map_location=device)
        for key, module in modules.items():
            module.load_state_dict(state[key])
        opt.load_state_dict(state["opt"])
        start_step = state["step"]
        print(f"resuming from step {start_step}")
    elif (out / WEIGHTS_FILE).exists():  # carried weights without optimizer state: warm the optimizer up again
        start_step = warm_from = load_weights(out / WEIGHTS_FILE, modules)
        print(f"resuming from the weights of step {start_step} (fresh optimizer state)")
    scale = vae.config.scaling_factor
    alphas = scheduler.alphas_cumprod.to(device)
    loss_weights = min_snr_weights(alphas, snr_gamma)
    t_weights = timestep_weights(scheduler.config.num_train_timesteps, later_timesteps)
    start, running = time.time(), []

    def save(done: int) -> None:
        torch.save({**{k: m.state_dict() for k, m in modules.items()}, "opt": opt.state_dict(), "step": done}, ckpt)

    def export(done: int) -> None:
        target = export_pipeline(out, toy, vae, ema_denoiser, ema_text, tokenizer)
        save_weights(out / WEIGHTS_FILE, modules, done)
        log(out, stage="unet", step=done, exported=str(target))

    stop = min(steps, stop_at or steps)
    check_prompts = None
    if eval_every:
        from .report import evaluation_prompts

        check_prompts = evaluation_prompts(eval_prompts)["relation"]

    def check(done: int) -> None:
        for weights, (den, text) in (("raw", (denoiser, text_encoder)), ("ema", (ema_denoiser, ema_text))):
            den.eval(), text.eval()
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                result = relation_check(toy.pipeline(vae, den, text, tokenizer), toy, check_prompts)
            result["binding_side"] = binding_check(text, tokenizer)
            log(out, stage="eval", step=done, weights=weights, elapsed_s=round(time.time() - start, 1), **result)
        denoiser.train(), text_encoder.train()

    def lr_now(step: int) -> float:
        rate = lr_at(step, lr, warmup, steps)
        if warm_from and step - warm_from < warmup:  # resumed without optimizer state: warm up again
            rate *= (step - warm_from + 1) / warmup
        return rate

    denoiser.train(), text_encoder.train()
    done = start_step
    for step in range(start_step, stop):
        for group, lr_scale in zip(opt.param_groups, lr_scales, strict=True):
            group["lr"] = lr_now(step) * lr_scale
        gen = torch.Generator().manual_seed(seed * 7_919 + step)
        latents, ids, mask = pool.draw(batch_size, gen, scale, uncond)
        noise = torch.randn(latents.shape, generator=gen).to(device)
        if t_weights is None:
            t = torch.randint(0, scheduler.config.num_train_timesteps, (batch_size,), generator=gen).to(device)
        else:
            t = torch.multinomial(t_weights, batch_size, replacement=True, generator=gen).to(device)
        a = alphas[t].view(-1, 1, 1, 1)
        noisy = a.sqrt() * latents + (1 - a).sqrt() * noise  # DDPM forward process (scheduler.add_noise)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            cond = toy.condition(text_encoder, ids, mask)
            pred = toy.predict(denoiser, noisy, t, cond, mask)
        per_sample = F.mse_loss(pred.float(), noise, reduction="none").mean(dim=(1, 2, 3))
        loss = (loss_weights[t] * per_sample).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        decay = min(ema_decay, (1 + step) / (10 + step))
        ema_update(ema_denoiser, denoiser, decay)
        ema_update(ema_text, text_encoder, decay)
        running.append(per_sample.detach().mean())  # the plain ε-MSE, comparable with or without min-SNR
        done = step + 1
        out_of_time = deadline is not None and time.time() > deadline
        if done % 50 == 0 or done == stop or out_of_time:
            log(
                out,
                stage="unet",
                step=done,
                loss=round(torch.stack(running).mean().item(), 5),
                lr=round(lr_now(step), 6),
                run_samples=(done - start_step) * batch_size,  # since this run (re)started: batches may differ
                elapsed_s=round(time.time() - start, 1),
            )
            running = []
        if done % checkpoint_every == 0 or done == stop or out_of_time:
            save(done)
        if done % export_every == 0 or done == stop or out_of_time:
            export(done)
        if eval_every and (done % eval_every == 0 or done == stop or out_of_time):
            check(done)
        if out_of_time:
            log(out, stage="unet", stopped_at=done, reason="--max-minutes reached; rerun to resume")
            break


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, type=Path, help="run folder (checkpoints, log, pipeline)")
    parser.add_argument(
        "--stage",
        choices=("vae", "unet", "all", "export"),
        default="all",
        help="unet: the denoiser stage; export: write OUT/pipeline from OUT/weights.safetensors (e.g. carried from "
        "another machine)",
    )
    parser.add_argument(
        "--kind",
        choices=tuple(KINDS),
        default="clip-unet",
        help="clip-unet: the toy (Stable Diffusion layout); t5-dit: toy-t5 (PixArt-α layout)",
    )
    parser.add_argument("--vae-steps", type=int, default=600)
    parser.add_argument("--vae-batch", type=int, default=32)
    parser.add_argument(
        "--vae-from",
        type=Path,
        default=None,
        help="fine-tune this VAE folder (e.g. an earlier toy model's vae/) instead of starting afresh; with "
        "--vae-steps 0, copy it as it is (the shipped toys share one VAE)",
    )
    parser.add_argument("--vae-lr", type=float, default=1e-3)
    parser.add_argument("--pool", type=Path, default=None, help="pool folder (default: OUT/pool, built if missing)")
    parser.add_argument("--pool-scenes", type=int, default=40_000, help="scenes rendered into a new pool")
    parser.add_argument(
        "--pool-weights",
        default=TRAINING_WEIGHTS,
        help="caption-family weights of a new pool (empty captions come from --uncond instead)",
    )
    parser.add_argument("--uncond", type=float, default=0.1, help="share of captions dropped to '' (for CFG)")
    parser.add_argument("--layout", choices=("clear", "uniform", "slots"), default="slots", help="of a new pool")
    parser.add_argument("--unpaired", action="store_true", help="a new pool says each relation scene one way only")
    parser.add_argument("--steps", type=int, default=4000, help="denoiser steps (total, not added)")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--snr-gamma", type=float, default=5.0, help="min-SNR-γ loss weighting (0: plain ε-MSE)")
    parser.add_argument(
        "--later-timesteps",
        type=float,
        default=1.0,
        help="draw the noisier half of the timesteps this many times as often (1: uniform)",
    )
    parser.add_argument(
        "--text-lr-scale",
        type=float,
        default=1.0,
        help="the text encoder learns at this multiple of --lr (it must fuse an object with its side of a relation)",
    )
    parser.add_argument(
        "--relations",
        default=None,
        help="train on relation captions naming only these, e.g. 'left of,above' (a paired pool then says each "
        "scene with the first-named object on the left or on top: a curriculum's first stage)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--checkpoint-every", type=int, default=100)
    parser.add_argument("--export-every", type=int, default=500)
    parser.add_argument(
        "--no-bf16",
        action="store_true",
        help="train in fp32 on a GPU too (default: bf16 autocast on CUDA; CPUs always train in fp32, "
        "which is faster than bf16 emulation on CPUs without AMX)",
    )
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    parser.add_argument("--workers", type=int, default=0, help="processes rendering (VAE batches, a new pool)")
    parser.add_argument("--max-minutes", type=float, default=None, help="stop cleanly (checkpoint + export) after")
    parser.add_argument("--unet-channels", default=None, help="UNet block widths, e.g. 64,128,192 (clip-unet)")
    parser.add_argument("--ema-decay", type=float, default=0.999)
    parser.add_argument(
        "--stop-at",
        type=int,
        default=None,
        help="stop (checkpoint + export) at this step; the schedule still spans --steps",
    )
    parser.add_argument(
        "--eval-every",
        type=int,
        default=0,
        help="judge relation prompts with the raw and the EMA weights every N steps (logged as stage 'eval')",
    )
    parser.add_argument("--eval-prompts", type=int, default=24, help="relation prompts per check (44 at most)")
    parser.add_argument(
        "--init-from",
        type=Path,
        default=None,
        help="a new run starts from this pipeline folder's weights (e.g. a shipped toy's model folder: its VAE, "
        "denoiser and text encoder) with a fresh, re-warmed optimizer, at --init-step",
    )
    parser.add_argument("--init-step", type=int, default=0, help="the step the --init-from weights were taken at")
    parser.add_argument(
        "--init-parts", choices=INIT_PARTS, default="all",
        help="--init-from takes everything, or the denoiser alone with a fresh text encoder (another language)",
    )  # fmt: skip
    parser.add_argument(
        "--export-weights", choices=tuple(EXPORT_FOLDERS), default="ema",
        help="--stage export: the EMA weights (into OUT/pipeline) or the raw ones (OUT/pipeline-raw)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    started = time.time()  # --max-minutes counts from here: loading and building a pool are part of the budget
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    channels = tuple(int(c) for c in args.unet_channels.split(",")) if args.unet_channels else None
    if args.threads:
        torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    log(
        args.out,
        stage="start",
        args={k: str(v) for k, v in vars(args).items()},
        torch=torch.__version__,
        threads=torch.get_num_threads(),
        device=str(device),
    )
    if args.init_from is not None:
        init_from_pipeline(args.out, args.init_from, args.kind, args.init_step, args.init_parts)
    if args.stage in ("vae", "all"):
        if args.vae_from is not None and args.vae_steps == 0:
            copy_vae(args.vae_from, args.out / "vae")
        else:
            train_vae(
                args.out, args.vae_steps, args.vae_batch, args.seed, device, args.workers, args.vae_from, args.vae_lr
            )
    if args.stage == "export":
        export_weights(args.out, args.kind, channels, args.export_weights)
        return
    if args.stage in ("unet", "all"):
        pool_dir = args.pool or args.out / "pool"
        if not (pool_dir / "captions.json").exists():
            ensure_pool(args, pool_dir, device)
        train_denoiser(
            args.out,
            pool_dir,
            args.steps,
            args.batch,
            args.seed,
            args.lr,
            args.checkpoint_every,
            args.export_every,
            bf16=device.type == "cuda" and not args.no_bf16,
            device=device,
            kind=args.kind,
            deadline=None if args.max_minutes is None else started + 60 * args.max_minutes,
            unet_channels=channels,
            ema_decay=args.ema_decay,
            stop_at=args.stop_at,
            eval_every=args.eval_every,
            eval_prompts=args.eval_prompts,
            snr_gamma=args.snr_gamma or None,
            warmup=args.warmup,
            uncond=args.uncond,
            later_timesteps=args.later_timesteps,
            text_lr_scale=args.text_lr_scale,
            relations=None if args.relations is None else tuple(r.strip() for r in args.relations.split(",")),
        )


EXPORT_FOLDERS = {"ema": "pipeline", "raw": "pipeline-raw"}  # which weights → where --stage export writes them


def export_weights(out: Path, kind: str, unet_channels: tuple[int, ...] | None = None, weights: str = "ema") -> Path:
    """A pipeline folder from ``out/weights.safetensors`` (a run carried as weights alone): the EMA weights into
    ``out/pipeline``, or the raw ones into ``out/pipeline-raw`` — early in a run the EMA lags the raw weights by
    thousands of steps, and a toy may ship the raw ones (toy-t5 does)."""
    from diffusers import AutoencoderKL

    if weights not in EXPORT_FOLDERS:
        raise ValueError(f"weights must be one of {', '.join(EXPORT_FOLDERS)}, got {weights!r}")
    toy = KINDS[kind]
    tokenizer = build_tokenizer()
    modules = build_modules(toy, tokenizer, unet_channels)
    step = load_weights(out / WEIGHTS_FILE, modules)
    vae = AutoencoderKL.from_pretrained(out / "vae")
    prefix = "ema_" if weights == "ema" else ""
    denoiser, text = modules[f"{prefix}denoiser"], modules[f"{prefix}text"]
    target = export_pipeline(out, toy, vae, denoiser, text, tokenizer, folder=EXPORT_FOLDERS[weights])
    log(out, stage="export", step=step, weights=weights, exported=str(target))
    return target


INIT_PARTS = ("all", "denoiser")


def init_from_pipeline(out: Path, pipeline_dir: Path, kind: str, step: int, parts: str = "all") -> None:
    """Start ``out`` from a pipeline folder (its VAE, and its denoiser and text encoder as the EMA weights a carried
    run resumes from): how a CPU session continues a shipped toy that was trained on a lent GPU. ``parts="denoiser"``
    takes the denoiser alone and starts the text encoder afresh — a denoiser that already draws the world under a
    new language's encoder (the CLIP toy's U-Net, trained on language v2, for a v3 encoder). A run that already has
    a checkpoint or weights of its own is left as it is, so rerunning the same command resumes."""
    from safetensors.torch import load_file

    if parts not in INIT_PARTS:
        raise ValueError(f"parts must be one of {', '.join(INIT_PARTS)}, got {parts!r}")
    if (out / "checkpoint.pt").exists() or (out / WEIGHTS_FILE).exists():
        return
    toy = KINDS[kind]
    denoiser, text_encoder = toy.build(build_tokenizer())
    denoiser.load_state_dict(load_file(pipeline_dir / toy.denoiser_folder / "diffusion_pytorch_model.safetensors"))
    if parts == "all":
        _load_with_tied_weights(text_encoder, load_file(pipeline_dir / "text_encoder" / "model.safetensors"))
    copy_vae(pipeline_dir / "vae", out / "vae")
    save_weights(out / WEIGHTS_FILE, {"ema_denoiser": denoiser, "ema_text": text_encoder}, step)
    log(out, stage="init", pipeline=str(pipeline_dir), step=step, parts=parts)


def _load_with_tied_weights(module: torch.nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    """``load_state_dict`` for a file saved without a module's tied copies (T5's ``encoder.embed_tokens`` is its
    ``shared`` embedding): a missing key is accepted only when its tensor is one the file did fill."""
    try:
        result = module.load_state_dict(tensors, strict=False)
    except RuntimeError as error:  # shapes that differ (another vocabulary, another width)
        raise ValueError(f"weights do not fit the {type(module).__name__}: {error}") from None
    state = module.state_dict()
    filled = {state[key].data_ptr() for key in tensors}
    untied = [key for key in result.missing_keys if state[key].data_ptr() not in filled]
    if untied or result.unexpected_keys:
        raise ValueError(
            f"weights do not fit the {type(module).__name__}: missing {untied}, unexpected {result.unexpected_keys}"
        )


def copy_vae(source: Path, target: Path) -> None:
    """Use a trained VAE as it is (the two shipped toys share one, so their latents are the same)."""
    import shutil

    if not (target / "config.json").exists():
        shutil.copytree(source, target, dirs_exist_ok=True)


def ensure_pool(args, pool_dir: Path, device: torch.device) -> None:
    from diffusers import AutoencoderKL

    from .pool import build_pool, parse_weights

    vae = AutoencoderKL.from_pretrained(args.out / "vae")
    start = time.time()
    build_pool(
        pool_dir,
        vae,
        args.pool_scenes,
        args.seed,
        args.layout,
        not args.unpaired,
        parse_weights(args.pool_weights),
        max(1, args.workers),
        device,
    )
    log(args.out, stage="pool", folder=str(pool_dir), scenes=args.pool_scenes, elapsed_s=round(time.time() - start, 1))


if __name__ == "__main__":
    main()
