"""A training pool: scenes of the world rendered once, VAE-encoded once, captions tokenized once.

Rendering and VAE-encoding are about half of a CPU training step at batch 32, and a GPU outruns several processes
rendering shapes; a pool of a few hundred thousand scenes costs seconds to minutes once and makes every later step
pure denoiser + text-encoder work. Each draw from the pool samples a fresh latent from the stored posterior
(mean, std) and fresh noise, so a scene seen twice is never the same training example.

    python -m difflens_widgets.studies.pool --out runs/pool --scenes 40000 --vae difflens_widgets/toy/model/vae

A pool folder holds ``latents.safetensors`` (posterior mean and std, fp16), ``captions.json`` (every caption with
the index of its image: with ``paired``, a relation scene's image carries both of its phrasings) and ``pool.json``
(how it was made). Scenes are rendered in ``workers`` processes, chunk by chunk, each chunk seeded by its index, so
a pool is the same whatever the number of workers.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..toy.world import FAMILY_WEIGHTS, World, render

CHUNK = 1000  # scenes per rendering task
# The trainers' pool: relations weighted up, every relation scene said both ways; no empty captions, since the
# trainer drops captions to "" itself (--uncond), over every scene rather than a family of its own
TRAINING_WEIGHTS = "relation=0.6,colored=0.2,and=0.12,object=0.08,empty=0"


@dataclass
class Pool:
    """A pool on one device: ``mean``/``std`` (N, C, h, w) float32, ``images`` (M,) the image index of each caption,
    ``input_ids``/``attention_mask`` (M, max_length) the tokenized captions."""

    mean: torch.Tensor
    std: torch.Tensor
    images: torch.Tensor
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    captions: list[str]
    empty_ids: torch.Tensor  # the empty caption, for classifier-free guidance's dropout
    empty_mask: torch.Tensor

    def __len__(self) -> int:
        return len(self.captions)

    def latents(self, rows: torch.Tensor, generator: torch.Generator, scale: float) -> torch.Tensor:
        """A fresh sample of each image's posterior (``rows``: image indices), × the VAE's scaling factor."""
        eps = torch.randn((len(rows), *self.mean.shape[1:]), generator=generator).to(self.mean.device)
        return (self.mean[rows] + self.std[rows] * eps) * scale

    def draw(self, batch_size: int, generator: torch.Generator, scale: float, uncond: float = 0.0):
        """A batch: latents sampled from their posteriors (× the VAE's scaling factor), token ids and masks, each
        caption replaced by the empty one with probability ``uncond`` (what classifier-free guidance needs: the
        unconditional model learns p(image) over every scene). A pure function of the generator's state, so a
        resumed run draws what an unbroken one would."""
        device = self.mean.device
        picks = torch.randint(0, len(self), (batch_size,), generator=generator).to(device)
        latents = self.latents(self.images[picks], generator, scale)
        drop = (torch.rand(batch_size, generator=generator) < uncond).to(device)[:, None]
        ids = torch.where(drop, self.empty_ids, self.input_ids[picks])
        mask = torch.where(drop, self.empty_mask, self.attention_mask[picks])
        return latents, ids, mask


def _render_chunk(task: tuple[int, int, int, str, bool, dict]) -> tuple[np.ndarray, list[tuple[int, str, str]]]:
    """Scenes of chunk ``index``: uint8 images (n, 64, 64, 3) and (local image index, caption, family) rows."""
    seed, index, n, layout, paired, weights = task
    world = World(seed * 1_000_003 + index, layout=layout, family_weights=weights)
    images, rows = [], []
    while len(images) < n:
        scene = world.sample()
        rows.append((len(images), scene.caption, scene.family))
        if paired and scene.relation:
            rows.append((len(images), world.inverse(scene).caption, scene.family))
        images.append(np.asarray(render(scene), dtype=np.uint8))
    return np.stack(images), rows


def render_scenes(
    scenes: int, seed: int = 0, layout: str = "slots", paired: bool = True, weights=None, workers: int = 1
) -> tuple[np.ndarray, list[tuple[int, str, str]]]:
    """``scenes`` renders (uint8, N×64×64×3) and their caption rows (image index, caption, family)."""
    weights = dict(weights or FAMILY_WEIGHTS)
    tasks = [(seed, i, min(CHUNK, scenes - i * CHUNK), layout, paired, weights) for i in range(-(-scenes // CHUNK))]
    if workers > 1:
        with multiprocessing.get_context("spawn").Pool(workers) as pool:
            parts = pool.map(_render_chunk, tasks)
    else:
        parts = [_render_chunk(task) for task in tasks]
    images, rows, offset = [], [], 0
    for chunk_images, chunk_rows in parts:
        images.append(chunk_images)
        rows += [(offset + i, caption, family) for i, caption, family in chunk_rows]
        offset += len(chunk_images)
    return np.concatenate(images), rows


@torch.no_grad()
def encode_images(
    vae, images: np.ndarray, device: torch.device, chunk: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The VAE posterior (mean, std) of every image, ``chunk`` images at a time (default 256 on a GPU, 8 on a CPU,
    where a larger chunk's activations fall out of cache: 8 at a time encoded a batch of 64 in half the time)."""
    chunk = chunk or (256 if device.type == "cuda" else 8)
    vae = vae.to(device).eval()
    means, stds = [], []
    for start in range(0, len(images), chunk):
        batch = torch.from_numpy(images[start : start + chunk]).to(device).permute(0, 3, 1, 2).float() / 127.5 - 1
        dist = vae.encode(batch).latent_dist
        means.append(dist.mean.half().cpu())
        stds.append(dist.std.half().cpu())
    return torch.cat(means), torch.cat(stds)


def build_pool(
    out: Path,
    vae,
    scenes: int,
    seed: int = 0,
    layout: str = "slots",
    paired: bool = True,
    weights=None,
    workers: int = 1,
    device: torch.device | None = None,
) -> Path:
    """Render, encode and write a pool folder (see the module docstring); returns its path."""
    from safetensors.torch import save_file

    device = device or torch.device("cpu")
    out.mkdir(parents=True, exist_ok=True)
    start = time.time()
    images, rows = render_scenes(scenes, seed, layout, paired, weights, workers)
    rendered = time.time() - start
    mean, std = encode_images(vae, images, device)
    save_file({"mean": mean.contiguous(), "std": std.contiguous()}, out / "latents.safetensors")
    (out / "captions.json").write_text(json.dumps(rows))
    counts: dict[str, int] = {}
    for _, _, family in rows:
        counts[family] = counts.get(family, 0) + 1
    info = {
        "scenes": scenes,
        "captions": len(rows),
        "seed": seed,
        "layout": layout,
        "paired": paired,
        "family_weights": dict(weights or FAMILY_WEIGHTS),
        "captions_per_family": counts,
        "render_s": round(rendered, 1),
        "encode_s": round(time.time() - start - rendered, 1),
        "workers": workers,
        "device": str(device),
    }
    (out / "pool.json").write_text(json.dumps(info, indent=1))
    return out


def load_pool(folder: Path, tokenizer, device: torch.device, relations: tuple[str, ...] | None = None) -> Pool:
    """A pool folder on ``device``, its captions tokenized as the pipelines tokenize (padded to the tokenizer's
    length, with the attention mask). ``relations``: keep only the relation captions that name one of these (e.g.
    ``("left of", "above")``: a paired pool then says each relation scene once, the first-named object on the left
    or on top — a curriculum's first stage, in which word order alone says which object goes where)."""
    from safetensors.torch import load_file

    from ..toy.annotate import parse_caption
    from ..toy.world import RELATIONS

    missing = [name for name in ("latents.safetensors", "captions.json") if not (folder / name).exists()]
    if missing:
        raise FileNotFoundError(f"{folder} is not a pool folder (missing {', '.join(missing)}); build one with "
                                "python -m difflens_widgets.studies.pool")  # fmt: skip
    if relations is not None and (not relations or set(relations) - set(RELATIONS)):
        raise ValueError(f"relations must be some of {', '.join(RELATIONS)}, got {', '.join(relations) or 'none'}")
    tensors = load_file(folder / "latents.safetensors")
    rows = json.loads((folder / "captions.json").read_text())
    if relations is not None:
        rows = [row for row in rows if row[2] != "relation" or parse_caption(row[1]).relation in relations]
    captions = [caption for _, caption, _ in rows]
    tokens, empty = (
        tokenizer(texts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                  return_tensors="pt")
        for texts in (captions, [""])
    )  # fmt: skip
    return Pool(
        mean=tensors["mean"].float().to(device),
        std=tensors["std"].float().to(device),
        images=torch.tensor([i for i, _, _ in rows], dtype=torch.long, device=device),
        input_ids=tokens.input_ids.to(device),
        attention_mask=tokens.attention_mask.to(device),
        captions=captions,
        empty_ids=empty.input_ids.to(device),
        empty_mask=empty.attention_mask.to(device),
    )


def parse_weights(text: str | None) -> dict[str, float] | None:
    """``relation=0.6,colored=0.15,...`` → a family-weight dict (None stays None: the world's own weights)."""
    if not text:
        return None
    weights = {}
    for item in text.split(","):
        family, _, value = item.partition("=")
        weights[family.strip()] = float(value)
    return weights


def main(argv: list[str] | None = None) -> None:
    from diffusers import AutoencoderKL

    from ..toy import MODEL_DIR

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--scenes", type=int, default=40_000)
    parser.add_argument("--vae", type=Path, default=MODEL_DIR / "vae", help="the VAE folder (default: the toy's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--layout", default="slots", choices=("clear", "uniform", "slots"))
    parser.add_argument("--unpaired", action="store_true", help="one phrasing per relation scene")
    parser.add_argument("--weights", default=None, help="family weights, e.g. relation=0.6,colored=0.15,and=0.1,...")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--device", default=None)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    vae = AutoencoderKL.from_pretrained(args.vae, torch_dtype=torch.float32)
    build_pool(
        args.out,
        vae,
        args.scenes,
        args.seed,
        args.layout,
        not args.unpaired,
        parse_weights(args.weights),
        args.workers,
        device,
    )
    print((args.out / "pool.json").read_text())


if __name__ == "__main__":
    main()
