"""Train the toy text-to-image model from scratch on the shapes world.

    python -m difflens_widgets.toy.train --out runs/toy            # VAE, then UNet + text encoder
    python -m difflens_widgets.toy.train --out runs/toy --steps 6000   # resume and go further
    python -m difflens_widgets.toy.train --out runs/toy --device cuda --batch 256 --steps 30000 --workers 6

Seeded and resumable: every batch and every noise draw depends only on (seed, step), so a run that is stopped and
resumed from its last checkpoint sees the same data as one that never stopped. Progress goes to ``DIR/log.jsonl``;
``DIR/pipeline`` is a standard diffusers ``StableDiffusionPipeline`` folder holding the EMA weights. Batches are
rendered in ``--workers`` loader processes (a GPU outruns one CPU rendering shapes); ``--max-minutes`` stops a run
cleanly (checkpoint + export) so it fits a time-limited machine and resumes later.
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

from ...core.models import sd_pipeline
from .. import architecture
from ..tokenizer import build_tokenizer
from ..world import FAMILY_WEIGHTS, World


def images_to_tensor(images) -> torch.Tensor:
    """PIL images → float tensor in [-1, 1], NCHW."""
    array = np.stack([np.asarray(im, dtype=np.float32) for im in images]) / 127.5 - 1.0
    return torch.from_numpy(array).permute(0, 3, 1, 2).contiguous()


class Curriculum:
    """Which caption families a step trains on: single objects first, then pairs, then relations.

    Before ``pairs_at`` only the single-object families (and the empty caption); from ``pairs_at`` two-object
    captions too, with the relation family's weight rising linearly to its full share at ``relations_at``; the
    world's own family weights from then on. ``Curriculum()`` (no stages) is the world's weights at every step."""

    def __init__(self, pairs_at: int = 0, relations_at: int = 0, weights: dict[str, float] | None = None):
        if not 0 <= pairs_at <= relations_at:
            raise ValueError(f"a curriculum needs 0 <= pairs_at <= relations_at, got {pairs_at}, {relations_at}")
        self.pairs_at, self.relations_at = pairs_at, relations_at
        self.weights = dict(weights or FAMILY_WEIGHTS)

    def weights_at(self, step: int) -> dict[str, float]:
        if step >= self.relations_at:
            return self.weights
        relation_share = 0.0 if step < self.pairs_at else (step - self.pairs_at) / (self.relations_at - self.pairs_at)
        weights = dict(self.weights, relation=self.weights["relation"] * relation_share)
        if step < self.pairs_at:
            weights["and"] = 0.0
        return weights


def batch_for_step(
    world: World, seed: int, step: int, batch_size: int, paired: bool = False, curriculum: Curriculum | None = None
):
    """The training batch of ``step``: a pure function of (seed, step), which makes resuming exact."""
    world.rng.seed(seed * 1_000_003 + step)
    if curriculum is not None:
        world.family_weights = curriculum.weights_at(step)
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
    """``world_options``: ``layout`` (the world's), ``paired`` and ``curriculum`` (:func:`batch_for_step`)."""
    dataset = StepBatches(seed, start, stop, batch_size, image_size, world_options)
    return torch.utils.data.DataLoader(
        dataset, batch_size=None, num_workers=workers, prefetch_factor=4 if workers else None, persistent_workers=False
    )


def encode_in_chunks(vae, images: torch.Tensor, chunk: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """The VAE posterior's mean and std, encoded ``chunk`` images at a time: on a CPU a whole batch's full-resolution
    activations fall out of cache, and 8 images at a time encode a batch of 64 in half the time (each image's
    posterior is its own, so the result does not depend on the chunking)."""
    parts = [vae.encode(part).latent_dist for part in images.split(chunk)]
    return torch.cat([p.mean for p in parts]), torch.cat([p.std for p in parts])


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
# Stage 2: UNet + text encoder, jointly, from scratch
# ---------------------------------------------------------------------------------------------------------------
def ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    with torch.no_grad():
        for e, p in zip(ema.parameters(), model.parameters()):
            e.lerp_(p, 1.0 - decay)


def export_pipeline(out: Path, vae, unet, text_encoder, tokenizer, dtype=torch.float16) -> Path:
    """Write a standard StableDiffusionPipeline folder (weights in ``dtype`` safetensors)."""
    parts = (copy.deepcopy(m).to(dtype) for m in (vae, unet, text_encoder))
    pipe = sd_pipeline(*parts, tokenizer, architecture.inference_scheduler())
    target = out / "pipeline"
    pipe.save_pretrained(target, safe_serialization=True)
    return target


def relation_check(
    vae,
    unet,
    text_encoder,
    tokenizer,
    prompts: list[str],
    seeds: tuple[int, ...] = (0, 1),
    steps: int = 20,
    guidance: float = 7.5,
) -> dict:
    """How well the model draws relations now: ``prompts`` × ``seeds`` through the pipeline (the last layer), judged
    by the annotator — both objects drawn, the arrangement right, and the arrangement right given both drawn (what
    the pilot tracks every few hundred steps: compositional skills appear late and abruptly in small diffusion
    models, so the curve, not one number, is kept)."""
    from ..annotate import judge

    pipe = sd_pipeline(vae, unet, text_encoder, tokenizer, architecture.inference_scheduler())
    verdicts = []
    with torch.no_grad():
        for seed in seeds:
            generators = [torch.Generator().manual_seed(seed) for _ in prompts]
            images = pipe(prompts, num_inference_steps=steps, guidance_scale=guidance, generator=generators).images
            verdicts += [
                {**judge(image, prompt), **_placement(image, prompt)} for image, prompt in zip(images, prompts)
            ]
    both = [v for v in verdicts if v["both"]]
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
    }


def _placement(image, prompt: str) -> dict:
    """The shape-blind relation check (annotate.placement) where the prompt names two different colours."""
    from ..annotate import parse_caption, placement

    colours = {c for c, _ in parse_caption(prompt).objects}
    return {f"by_{k}": v for k, v in placement(image, prompt).items()} if len(colours) == 2 else {}


def train_unet(
    out: Path,
    steps: int,
    batch_size: int,
    seed: int,
    lr: float,
    checkpoint_every: int,
    export_every: int,
    bf16: bool,
    device: torch.device,
    workers: int = 0,
    max_seconds: float | None = None,
    unet_channels: tuple[int, ...] | None = None,
    ema_decay: float = 0.999,
    stop_at: int | None = None,
    eval_every: int = 0,
    world_options: dict | None = None,
) -> None:
    """UNet and text encoder from scratch; the schedule spans ``steps``, the run stops at ``stop_at`` (a pilot
    stops early on the long run's schedule, so the winner resumes into the long run with nothing wasted).
    ``eval_every``: run :func:`relation_check` on the EMA weights that often and log it."""
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(out / "vae").eval().requires_grad_(False).to(device)
    tokenizer = build_tokenizer()
    torch.manual_seed(seed)
    unet = architecture.build_unet(channels=unet_channels) if unet_channels else architecture.build_unet()
    text_encoder = architecture.build_text_encoder(tokenizer)
    unet, text_encoder = unet.to(device), text_encoder.to(device)
    ema_unet, ema_text = copy.deepcopy(unet), copy.deepcopy(text_encoder)
    params = list(unet.parameters()) + list(text_encoder.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01, fused=device.type == "cuda")
    scheduler = architecture.train_scheduler()
    ckpt = out / "checkpoint.pt"
    start_step = 0
    if ckpt.exists():
        state = torch.load(ckpt, weights_only=True, map_location=device)
        for module, key in ((unet, "unet"), (text_encoder, "text"), (ema_unet, "ema_unet"), (ema_text, "ema_text")):
            module.load_state_dict(state[key])
        opt.load_state_dict(state["opt"])
        start_step = state["step"]
        print(f"resuming from step {start_step}")
    scale = vae.config.scaling_factor
    alphas = scheduler.alphas_cumprod.to(device)
    start, running = time.time(), []

    def save(done: int) -> None:
        torch.save(
            {
                "unet": unet.state_dict(),
                "text": text_encoder.state_dict(),
                "ema_unet": ema_unet.state_dict(),
                "ema_text": ema_text.state_dict(),
                "opt": opt.state_dict(),
                "step": done,
            },
            ckpt,
        )

    def export(done: int) -> None:
        target = export_pipeline(out, vae.cpu(), ema_unet.cpu(), ema_text.cpu(), tokenizer)
        vae.to(device), ema_unet.to(device), ema_text.to(device)
        log(out, stage="unet", step=done, exported=str(target))

    stop = min(steps, stop_at or steps)
    check_prompts = None
    if eval_every:
        from .report import evaluation_prompts

        check_prompts = evaluation_prompts(24)["relation"]

    def check(done: int) -> None:
        ema_unet.eval(), ema_text.eval()
        log(out, stage="eval", step=done, **relation_check(vae, ema_unet, ema_text, tokenizer, check_prompts))

    done = start_step
    for step, images, captions in step_batches(seed, start_step, stop, batch_size, workers, **(world_options or {})):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, lr, 200, steps)
        gen = torch.Generator().manual_seed(seed * 7_919 + step)
        ids = tokenizer(
            captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
        ).input_ids.to(device)
        images = images.to(device, non_blocking=True)
        with torch.no_grad():
            mean, std = encode_in_chunks(vae, images)
            latents = (mean + std * torch.randn(mean.shape, generator=gen).to(device)) * scale
        noise = torch.randn(latents.shape, generator=gen).to(device)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (batch_size,), generator=gen).to(device)
        a = alphas[t].view(-1, 1, 1, 1)
        noisy = a.sqrt() * latents + (1 - a).sqrt() * noise  # DDPM forward process (scheduler.add_noise)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            cond = text_encoder(ids).last_hidden_state
            pred = unet(noisy, t, encoder_hidden_states=cond).sample
        loss = F.mse_loss(pred.float(), noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        decay = min(ema_decay, (1 + step) / (10 + step))
        ema_update(ema_unet, unet, decay)
        ema_update(ema_text, text_encoder, decay)
        running.append(loss.detach())
        done = step + 1
        out_of_time = max_seconds is not None and time.time() - start > max_seconds
        if done % 50 == 0 or done == stop or out_of_time:
            log(
                out,
                stage="unet",
                step=done,
                loss=round(torch.stack(running).mean().item(), 5),
                lr=round(lr_at(step, lr, 200, steps), 6),
                elapsed_s=round(time.time() - start, 1),
            )
            running = []
        if done % checkpoint_every == 0 or done == stop or out_of_time:
            save(done)
        if done % export_every == 0 or done == stop or out_of_time:
            export(done)
        if eval_every and (done % eval_every == 0 or done == stop):
            check(done)
        if out_of_time:
            log(out, stage="unet", stopped_at=done, reason="--max-minutes reached; rerun to resume")
            break


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, type=Path, help="run folder (checkpoints, log, pipeline)")
    parser.add_argument("--stage", choices=("vae", "unet", "all"), default="all")
    parser.add_argument("--vae-steps", type=int, default=600)
    parser.add_argument("--vae-batch", type=int, default=32)
    parser.add_argument(
        "--vae-from",
        type=Path,
        default=None,
        help="fine-tune this VAE folder (e.g. an earlier toy model's vae/) instead of starting afresh",
    )
    parser.add_argument("--vae-lr", type=float, default=1e-3)
    parser.add_argument("--steps", type=int, default=4000, help="UNet + text-encoder steps (total, not added)")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
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
    parser.add_argument("--workers", type=int, default=0, help="loader processes rendering batches")
    parser.add_argument("--max-minutes", type=float, default=None, help="stop cleanly (checkpoint + export) after")
    parser.add_argument("--unet-channels", default=None, help="UNet block widths, e.g. 64,128,192")
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
        help="judge relation prompts with the EMA weights every N steps (logged as stage 'eval')",
    )
    parser.add_argument(
        "--layout",
        choices=("clear", "uniform", "slots"),
        default="clear",
        help="how relation scenes are placed (world.LAYOUTS)",
    )
    parser.add_argument("--paired", action="store_true", help="every relation scene twice in its batch, said both ways")
    parser.add_argument(
        "--curriculum",
        default=None,
        metavar="PAIRS_AT,RELATIONS_AT",
        help="single objects until PAIRS_AT, then pairs, relations ramped in up to RELATIONS_AT",
    )
    args = parser.parse_args(argv)
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
    )
    if args.stage in ("vae", "all"):
        train_vae(args.out, args.vae_steps, args.vae_batch, args.seed, device, args.workers, args.vae_from, args.vae_lr)
    if args.stage in ("unet", "all"):
        train_unet(
            args.out,
            args.steps,
            args.batch,
            args.seed,
            args.lr,
            args.checkpoint_every,
            args.export_every,
            bf16=device.type == "cuda" and not args.no_bf16,
            device=device,
            workers=args.workers,
            max_seconds=None if args.max_minutes is None else 60 * args.max_minutes,
            unet_channels=channels,
            ema_decay=args.ema_decay,
            stop_at=args.stop_at,
            eval_every=args.eval_every,
            world_options={
                "layout": args.layout,
                "paired": args.paired,
                "curriculum": Curriculum(*map(int, args.curriculum.split(","))) if args.curriculum else None,
            },
        )


if __name__ == "__main__":
    main()
