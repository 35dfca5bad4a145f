"""Train the toy text-to-image model from scratch on the shapes world.

    python -m difflens_widgets.toy.train --out runs/toy            # VAE, then UNet + text encoder
    python -m difflens_widgets.toy.train --out runs/toy --steps 6000   # resume and go further

Seeded and resumable: every batch and every noise draw depends only on (seed, step), so a run that is stopped and
resumed from its last checkpoint sees the same data as one that never stopped. Progress goes to ``DIR/log.jsonl``;
``DIR/pipeline`` is a standard diffusers ``StableDiffusionPipeline`` folder holding the EMA weights.
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

from . import architecture
from .tokenizer import build_tokenizer
from .world import World


def images_to_tensor(images) -> torch.Tensor:
    """PIL images → float tensor in [-1, 1], NCHW."""
    array = np.stack([np.asarray(im, dtype=np.float32) for im in images]) / 127.5 - 1.0
    return torch.from_numpy(array).permute(0, 3, 1, 2).contiguous()


def batch_for_step(world: World, seed: int, step: int, batch_size: int):
    """The training batch of ``step``: a pure function of (seed, step), which makes resuming exact."""
    world.rng.seed(seed * 1_000_003 + step)
    images, scenes = world.batch(batch_size)
    return images_to_tensor(images), [s.caption for s in scenes]


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
def train_vae(out: Path, steps: int, batch_size: int, seed: int) -> None:
    path = out / "vae"
    if (path / "config.json").exists():
        print(f"VAE already trained in {path}; skipping")
        return
    torch.manual_seed(seed)
    vae = architecture.build_vae()
    world = World(seed)
    opt = torch.optim.AdamW(vae.parameters(), lr=1e-3)
    start = time.time()
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, 1e-3, 50, steps)
        images, _ = batch_for_step(world, seed + 17, step, batch_size)
        posterior = vae.encode(images).latent_dist
        recon = vae.decode(posterior.sample()).sample
        mse = F.mse_loss(recon, images)
        kl = posterior.kl().mean() / posterior.mean[0].numel()
        loss = mse + 1e-4 * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 50 == 0 or step == steps - 1:
            log(out, stage="vae", step=step, mse=round(mse.item(), 6), kl=round(kl.item(), 4),
                elapsed_s=round(time.time() - start, 1))
    vae.eval()
    with torch.no_grad():
        images, _ = batch_for_step(world, seed + 99, 0, 256)
        latents = vae.encode(images).latent_dist.sample()
        recon = vae.decode(vae.encode(images).latent_dist.mode()).sample
    scaling = 1.0 / latents.std().item()
    vae.register_to_config(scaling_factor=scaling)
    vae.save_pretrained(path)
    log(out, stage="vae", done=True, scaling_factor=round(scaling, 4),
        heldout_mse=round(F.mse_loss(recon, images).item(), 6), elapsed_s=round(time.time() - start, 1))


# ---------------------------------------------------------------------------------------------------------------
# Stage 2: UNet + text encoder, jointly, from scratch
# ---------------------------------------------------------------------------------------------------------------
def ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    with torch.no_grad():
        for e, p in zip(ema.parameters(), model.parameters()):
            e.lerp_(p, 1.0 - decay)


def export_pipeline(out: Path, vae, unet, text_encoder, tokenizer, dtype=torch.float16) -> Path:
    """Write a standard StableDiffusionPipeline folder (weights in ``dtype`` safetensors)."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline(
        vae=copy.deepcopy(vae).to(dtype), unet=copy.deepcopy(unet).to(dtype),
        text_encoder=copy.deepcopy(text_encoder).to(dtype), tokenizer=tokenizer,
        scheduler=architecture.inference_scheduler(), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )
    target = out / "pipeline"
    pipe.save_pretrained(target, safe_serialization=True)
    return target


def train_unet(out: Path, steps: int, batch_size: int, seed: int, lr: float, checkpoint_every: int,
               export_every: int, bf16: bool) -> None:
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(out / "vae").eval().requires_grad_(False)
    tokenizer = build_tokenizer()
    torch.manual_seed(seed)
    unet, text_encoder = architecture.build_unet(), architecture.build_text_encoder(tokenizer)
    ema_unet, ema_text = copy.deepcopy(unet), copy.deepcopy(text_encoder)
    params = list(unet.parameters()) + list(text_encoder.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    scheduler = architecture.train_scheduler()
    world = World(seed)
    ckpt = out / "checkpoint.pt"
    start_step = 0
    if ckpt.exists():
        state = torch.load(ckpt, weights_only=True)
        for module, key in ((unet, "unet"), (text_encoder, "text"), (ema_unet, "ema_unet"), (ema_text, "ema_text")):
            module.load_state_dict(state[key])
        opt.load_state_dict(state["opt"])
        start_step = state["step"]
        print(f"resuming from step {start_step}")
    scale = vae.config.scaling_factor
    start, running = time.time(), []
    for step in range(start_step, steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, lr, 200, steps)
        images, captions = batch_for_step(world, seed, step, batch_size)
        gen = torch.Generator().manual_seed(seed * 7_919 + step)
        ids = tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                        return_tensors="pt").input_ids
        with torch.no_grad():
            latents = vae.encode(images).latent_dist.sample(generator=gen) * scale
        noise = torch.randn(latents.shape, generator=gen)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (batch_size,), generator=gen)
        noisy = scheduler.add_noise(latents, noise, t)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            cond = text_encoder(ids).last_hidden_state
            pred = unet(noisy, t, encoder_hidden_states=cond).sample
        loss = F.mse_loss(pred.float(), noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        decay = min(0.999, (1 + step) / (10 + step))
        ema_update(ema_unet, unet, decay)
        ema_update(ema_text, text_encoder, decay)
        running.append(loss.item())
        done = step + 1
        if done % 50 == 0 or done == steps:
            log(out, stage="unet", step=done, loss=round(sum(running) / len(running), 5),
                lr=round(lr_at(step, lr, 200, steps), 6), elapsed_s=round(time.time() - start, 1))
            running = []
        if done % checkpoint_every == 0 or done == steps:
            torch.save({"unet": unet.state_dict(), "text": text_encoder.state_dict(), "ema_unet": ema_unet.state_dict(),
                        "ema_text": ema_text.state_dict(), "opt": opt.state_dict(), "step": done}, ckpt)
        if done % export_every == 0 or done == steps:
            target = export_pipeline(out, vae, ema_unet, ema_text, tokenizer)
            log(out, stage="unet", step=done, exported=str(target))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, type=Path, help="run folder (checkpoints, log, pipeline)")
    parser.add_argument("--stage", choices=("vae", "unet", "all"), default="all")
    parser.add_argument("--vae-steps", type=int, default=600)
    parser.add_argument("--vae-batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=4000, help="UNet + text-encoder steps (total, not added)")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--checkpoint-every", type=int, default=100)
    parser.add_argument("--export-every", type=int, default=500)
    parser.add_argument("--no-bf16", action="store_true", help="train in fp32 (default: bf16 autocast)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    log(args.out, stage="start", args={k: str(v) for k, v in vars(args).items()},
        torch=torch.__version__, threads=torch.get_num_threads())
    if args.stage in ("vae", "all"):
        train_vae(args.out, args.vae_steps, args.vae_batch, args.seed)
    if args.stage in ("unet", "all"):
        train_unet(args.out, args.steps, args.batch, args.seed, args.lr, args.checkpoint_every, args.export_every,
                   bf16=not args.no_bf16)


if __name__ == "__main__":
    main()
