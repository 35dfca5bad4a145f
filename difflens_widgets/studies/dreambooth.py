"""DreamBooth on the toy model: bind the rare word "xon" to one particular striped triangle.

    python -m difflens_widgets.studies.dreambooth --out runs/xon                  # ~300 steps, a few minutes on a CPU
    python -m difflens_widgets.studies.dreambooth --out runs/xon --steps 60 --every 20   # a quick look

What it does (Ruiz et al., 2023, shrunk to the shapes world):

* **instance**: "a xon triangle" ↔ renderings of one specific triangle pattern (dark teal and charcoal stripes)
  that the world never draws. The toy tokenizer reads "xon" as two pieces, ``x`` (in no caption) + ``on</w>`` (only
  in "on top of"), so the identifier starts with almost no prior meaning — the rare-token recipe of the paper.
* **prior preservation**: "a triangle" ↔ images the *base* model itself generates for that prompt, so the class word
  keeps its meaning while the new one is learned.
* text encoder and UNet are both trained; a :class:`~difflens_widgets.tracker.LensTracker` records lens images of
  "a xon triangle" at every layer, and cos("xon", "triangle") per layer, every ``--every`` steps.

Writes ``OUT/tuned`` (``text_encoder/`` and ``unet/`` folders: ``dl.load_tuned("toy", "OUT/tuned")`` loads them),
``OUT/tracker`` (the evolution grid and numbers) and ``OUT/report.json`` (before/after table, printed too).
"""

from __future__ import annotations

import argparse
import copy
import json
import random
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from ..toy.world import BACKGROUND, SIZES, shape_polygon
from .train import images_to_tensor

IDENTIFIER = "xon"
CLASS_WORD = "triangle"
INSTANCE_PROMPT = f"a {IDENTIFIER} {CLASS_WORD}"
CLASS_PROMPT = f"a {CLASS_WORD}"
STRIPES = ((0, 110, 110), (45, 45, 55))  # dark teal and charcoal: ≥ 70 RGB from every world colour (cyan too)
STRIPE_WIDTH = 4  # pixels at 64×64


def render_instance(x: float, y: float, radius: float, size: int = 64, supersample: int = 4) -> Image.Image:
    """The "xon" triangle: the world's triangle shape filled with horizontal teal/charcoal stripes."""
    big = size * supersample
    stripes = Image.new("RGB", (big, big))
    draw = ImageDraw.Draw(stripes)
    band = STRIPE_WIDTH * supersample
    for top in range(0, big, band):
        draw.rectangle([0, top, big, top + band - 1], fill=STRIPES[(top // band) % 2])
    mask = Image.new("L", (big, big), 0)
    ImageDraw.Draw(mask).polygon(
        shape_polygon(CLASS_WORD, x * supersample, y * supersample, radius * supersample), fill=255
    )
    image = Image.new("RGB", (big, big), BACKGROUND)
    image.paste(stripes, (0, 0), mask)
    return image.reduce(supersample)


def instance_images(n: int = 8, seed: int = 0, size: int = 64) -> list[Image.Image]:
    """``n`` renderings of the one instance at different places and the world's two sizes."""
    rng = random.Random(seed)
    images = []
    for i in range(n):
        radius = SIZES[("small", "large")[i % 2]] * size
        lo, hi = radius + 1.5, size - radius - 1.5
        images.append(render_instance(rng.uniform(lo, hi), rng.uniform(lo, hi), radius, size))
    return images


def stripe_share(image: Image.Image) -> float:
    """Share of painted (non-background) pixels that are near the teal stripe colour: ~0.5 on the instance, ~0 on
    the world's plain shapes. A measurable stand-in for "does this image show the xon instance?"."""
    pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
    painted = np.linalg.norm(pixels - np.array(BACKGROUND, np.float32), axis=-1) > 70
    teal = np.linalg.norm(pixels - np.array(STRIPES[0], np.float32), axis=-1) < 60
    return float((teal & painted).sum() / max(1, painted.sum()))


# ---------------------------------------------------------------------------------------------------------------
def measure(pipe, seeds: list[int], steps: int = 20) -> dict:
    """Before/after numbers: cos(xon, triangle) per layer, stripe share of "a xon triangle" images, and whether "a
    triangle" still draws a triangle (prior preserved)."""
    from ..analyses.similarity import token_similarity
    from ..core.engine import Lens
    from ..toy.annotate import judge

    lens = Lens(pipe, cache_size=1)
    sims = token_similarity(lens, INSTANCE_PROMPT, IDENTIFIER, CLASS_PROMPT, CLASS_WORD)
    xon = lens.run(INSTANCE_PROMPT, layers=[lens.num_layers], seeds=seeds, num_inference_steps=steps, use_cache=False)
    plain = lens.run(CLASS_PROMPT, layers=[lens.num_layers], seeds=seeds, num_inference_steps=steps, use_cache=False)
    return {
        "cos_xon_triangle_per_layer": dict(zip(sims.layers, np.round(sims.values.astype(float), 4).tolist())),
        "xon_stripe_share": round(float(np.mean([stripe_share(xon.image(lens.num_layers, s)) for s in seeds])), 3),
        "class_prompt_draws_triangle": round(
            float(np.mean([judge(plain.image(lens.num_layers, s), CLASS_PROMPT)["objects"] for s in seeds])), 3
        ),
    }


def class_images(pipe, n: int, seed: int, steps: int = 20) -> list[Image.Image]:
    """The prior-preservation set: what the base model draws for "a triangle" (seeds seed..seed+n-1)."""
    from ..core.engine import quiet_progress_bar

    generators = [torch.Generator(pipe.device).manual_seed(seed + i) for i in range(n)]
    with quiet_progress_bar(pipe):
        return pipe([CLASS_PROMPT] * n, num_inference_steps=steps, generator=generators).images


def fine_tune(
    base,
    *,
    steps: int,
    lr: float,
    batch: int,
    prior_weight: float,
    seed: int,
    class_count: int = 16,
    tracker=None,
    log=print,
):
    """DreamBooth: train copies of the base's text encoder and UNet; returns the tuned pipeline."""
    from ..analyses.tuning import derived_pipeline

    torch.manual_seed(seed)
    tuned = derived_pipeline(base, unet=copy.deepcopy(base.unet), text_encoder=copy.deepcopy(base.text_encoder))
    instance = images_to_tensor(instance_images(8, seed))
    prior = images_to_tensor(class_images(base, class_count, 1000 + seed))
    vae, tokenizer, scheduler = tuned.vae, tuned.tokenizer, _train_scheduler(tuned)
    ids = tokenizer(
        [INSTANCE_PROMPT] * batch + [CLASS_PROMPT] * batch,
        padding="max_length",
        max_length=tokenizer.model_max_length,
        return_tensors="pt",
    ).input_ids
    params = list(tuned.unet.parameters()) + list(tuned.text_encoder.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    tuned.unet.train()
    tuned.text_encoder.train()
    started, running = time.perf_counter(), []
    for step in range(steps):
        if tracker is not None:
            tracker(tuned, step)
        gen = torch.Generator().manual_seed(seed * 7_919 + step)
        pick_i = torch.randint(0, len(instance), (batch,), generator=gen)
        pick_p = torch.randint(0, len(prior), (batch,), generator=gen)
        images = torch.cat([instance[pick_i], prior[pick_p]])
        with torch.no_grad():
            latents = vae.encode(images).latent_dist.sample(generator=gen) * vae.config.scaling_factor
        noise = torch.randn(latents.shape, generator=gen)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (len(images),), generator=gen)
        pred = tuned.unet(
            scheduler.add_noise(latents, noise, t), t, encoder_hidden_states=tuned.text_encoder(ids).last_hidden_state
        ).sample
        per_item = F.mse_loss(pred, noise, reduction="none").mean(dim=(1, 2, 3))
        loss = per_item[:batch].mean() + prior_weight * per_item[batch:].mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        running.append(loss.item())
        if (step + 1) % 20 == 0 or step + 1 == steps:
            log(
                json.dumps(
                    {
                        "step": step + 1,
                        "loss": round(float(np.mean(running)), 5),
                        "elapsed_s": round(time.perf_counter() - started, 1),
                    }
                )
            )
            running = []
    tuned.unet.eval()
    tuned.text_encoder.eval()
    if tracker is not None:
        tracker(tuned, steps, force=True)
    return tuned


def _train_scheduler(pipe):
    from diffusers import DDPMScheduler

    return DDPMScheduler.from_config(pipe.scheduler.config)


def run(
    out: Path,
    *,
    steps: int = 300,
    lr: float = 5e-5,
    batch: int = 4,
    prior_weight: float = 1.0,
    every: int = 50,
    seed: int = 0,
    eval_seeds: int = 8,
    class_count: int = 16,
    base=None,
    log=print,
    eval_steps: int = 20,
) -> dict:
    """The whole experiment; returns (and writes) the report. ``eval_steps``: denoising steps of the before/after
    images and of the tracker's lens (fewer for a quick check of the plumbing)."""
    from ..analyses.tracker import LensTracker
    from ..core.models import load_pipeline

    base = base if base is not None else load_pipeline("toy", device="cpu")
    seeds = list(range(eval_seeds))
    before = measure(base, seeds, steps=eval_steps)
    tracker = LensTracker(
        INSTANCE_PROMPT,
        every=every,
        seed=0,
        num_inference_steps=eval_steps,
        pairs=[(INSTANCE_PROMPT, IDENTIFIER, CLASS_PROMPT, CLASS_WORD)],
    )
    started = time.perf_counter()
    tuned = fine_tune(
        base,
        steps=steps,
        lr=lr,
        batch=batch,
        prior_weight=prior_weight,
        seed=seed,
        class_count=class_count,
        tracker=tracker,
        log=log,
    )
    seconds = time.perf_counter() - started
    after = measure(tuned, seeds, steps=eval_steps)
    out.mkdir(parents=True, exist_ok=True)
    tuned.text_encoder.save_pretrained(out / "tuned" / "text_encoder")
    tuned.unet.save_pretrained(out / "tuned" / "unet")
    tracker.save(out / "tracker")
    report = {
        "command": {
            "steps": steps,
            "lr": lr,
            "batch": batch,
            "prior_weight": prior_weight,
            "every": every,
            "seed": seed,
            "class_count": class_count,
            "eval_steps": eval_steps,
        },
        "train_seconds": round(seconds, 1),
        "eval_seeds": seeds,
        "before": before,
        "after": after,
    }
    (out / "report.json").write_text(json.dumps(report, indent=2))
    log(format_table(report))
    return report


def format_table(report: dict) -> str:
    before, after = report["before"], report["after"]
    lines = [
        f"cos({IDENTIFIER!r} in {INSTANCE_PROMPT!r}, {CLASS_WORD!r} in {CLASS_PROMPT!r}) per layer",
        "layer | before | after",
        "----- | ------ | -----",
    ]
    for layer, value in before["cos_xon_triangle_per_layer"].items():
        lines.append(f"{layer:>5} | {value:6.4f} | {after['cos_xon_triangle_per_layer'][layer]:.4f}")
    lines += [
        f"stripe share of '{INSTANCE_PROMPT}' images: {before['xon_stripe_share']} → {after['xon_stripe_share']}",
        f"'{CLASS_PROMPT}' still draws a triangle: {before['class_prompt_draws_triangle']} → "
        f"{after['class_prompt_draws_triangle']}",
        f"training: {report['train_seconds']} s",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--batch", type=int, default=4, help="instance images per step (as many prior images)")
    parser.add_argument("--prior-weight", type=float, default=1.0)
    parser.add_argument("--every", type=int, default=50, help="lens snapshot every N steps")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eval-seeds", type=int, default=8)
    parser.add_argument("--class-images", type=int, default=16, help="prior-preservation images the base draws")
    parser.add_argument("--eval-steps", type=int, default=20, help="denoising steps of the measured images")
    args = parser.parse_args(argv)
    for name in ("steps", "batch", "every", "eval_seeds", "class_images", "eval_steps"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be ≥ 1")
    run(
        args.out,
        steps=args.steps,
        lr=args.lr,
        batch=args.batch,
        prior_weight=args.prior_weight,
        every=args.every,
        seed=args.seed,
        eval_seeds=args.eval_seeds,
        class_count=args.class_images,
        eval_steps=args.eval_steps,
    )


if __name__ == "__main__":
    main()
