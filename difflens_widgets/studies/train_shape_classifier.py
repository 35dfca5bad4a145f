"""Train the annotator's shape classifier (:mod:`difflens_widgets.toy.shape_classifier`) on world shapes and
others, deformed the way generations are, passed through the toy VAE's round trip and softened.

    python -m difflens_widgets.studies.train_shape_classifier   # writes toy/shape_classifier.safetensors

16,000 examples, 12 epochs: about five minutes on a 2-core CPU.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFilter
from torch import nn

from ..toy import MODEL_DIR
from ..toy.annotate import background_of, segment
from ..toy.shape_classifier import CLASSES, OTHER, WEIGHTS, ShapeNet, load
from ..toy.world import BACKGROUND, COLORS, SHAPES, World, shape_polygon
from .train import images_to_tensor

OTHER_SHARE = 0.2  # share of training objects that are not world shapes


# ---------------------------------------------------------------------------------------------------------------
# Training data: world shapes (and others) deformed, through the VAE round trip, softened
# ---------------------------------------------------------------------------------------------------------------
def _soften(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Make a clean round-tripped render look more like a generation: blur and fade towards the background."""
    if rng.random() < 0.6:
        image = image.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.3, 1.2))))
    fade = float(rng.uniform(0.55, 1.0)) if rng.random() < 0.5 else 1.0
    pixels = np.asarray(image, dtype=np.float32)
    background = background_of(pixels)
    return Image.fromarray(np.clip(background + fade * (pixels - background), 0, 255).astype(np.uint8))


SUPERSAMPLE = 4


def _outline(kind: str, x: float, y: float, r: float, rng: np.random.Generator) -> list[list[tuple]]:
    """Polygons (one or several, drawn as a union) of a world shape or of a non-world ``other`` shape."""
    if kind in SHAPES:
        if kind == "circle":
            return [[(x + r * math.cos(a), y + r * math.sin(a)) for a in np.linspace(0, 2 * math.pi, 40)]]
        return [shape_polygon(kind, x, y, r)]
    choice = rng.integers(4)
    if choice == 0:  # ellipse, round-ended (a world diamond stretched thin keeps its points)
        aspect = rng.uniform(1.5, 2.4)
        return [
            [
                (x + 0.8 * r * math.cos(a) / math.sqrt(aspect), y + 0.8 * r * math.sin(a) * math.sqrt(aspect))
                for a in np.linspace(0, 2 * math.pi, 40)
            ]
        ]
    if choice == 1:  # teardrop: a round end and a point
        cy = y + 0.3 * r
        arc = [(x + 0.65 * r * math.cos(a), cy + 0.65 * r * math.sin(a)) for a in np.linspace(-0.3, math.pi + 0.3, 24)]
        return [arc + [(x, y - r)]]
    if choice == 2:  # pentagon
        angles = [-math.pi / 2 + k * 2 * math.pi / 5 for k in range(5)]
        return [[(x + r * math.cos(a), y + r * math.sin(a)) for a in angles]]
    lumps = []  # two or three overlapping discs: a merged lump
    for _ in range(int(rng.integers(2, 4))):
        cx, cy, rr = x + rng.uniform(-0.5, 0.5) * r, y + rng.uniform(-0.5, 0.5) * r, rng.uniform(0.4, 0.7) * r
        lumps.append([(cx + rr * math.cos(a), cy + rr * math.sin(a)) for a in np.linspace(0, 2 * math.pi, 24)])
    return lumps


def _deformed_mask(polygons: list[list[tuple]], x: float, y: float, size: int, rng: np.random.Generator) -> Image.Image:
    """The shape's mask at SUPERSAMPLE×, stretched and turned a little, corners rounded or arms thickened / thinned
    (blurred and re-thresholded) — how the toy model's shapes deviate from the renders."""
    from PIL import ImageDraw

    angle = rng.uniform(-0.25, 0.25)
    sx, sy = rng.uniform(0.75, 1.33, size=2)  # generated diamonds are often spindles
    cos, sin = math.cos(angle), math.sin(angle)
    mask = Image.new("L", (size * SUPERSAMPLE,) * 2, 0)
    draw = ImageDraw.Draw(mask)
    for polygon in polygons:
        moved = []
        for px, py in polygon:
            dx, dy = (px - x) * sx, (py - y) * sy
            moved.append(((x + cos * dx - sin * dy) * SUPERSAMPLE, (y + sin * dx + cos * dy) * SUPERSAMPLE))
        draw.polygon(moved, fill=255)
    if rng.random() < 0.7:
        blurred = np.asarray(mask.filter(ImageFilter.GaussianBlur(float(rng.uniform(2, 7)))), np.float32)
        mask = Image.fromarray(((blurred > rng.uniform(0.3, 0.65) * 255) * 255).astype(np.uint8))
    return mask


def _draw(scene, rng: np.random.Generator, kinds: list[str]) -> Image.Image:
    """``scene`` with each object drawn as ``kinds[i]`` (a world shape or ``other``), deformed."""
    size = scene.image_size
    canvas = np.tile(np.array(BACKGROUND, np.float32), (size * SUPERSAMPLE, size * SUPERSAMPLE, 1))
    for obj, kind in zip(scene.objects, kinds):
        mask = (
            np.asarray(
                _deformed_mask(_outline(kind, obj.x, obj.y, obj.radius, rng), obj.x, obj.y, size, rng), np.float32
            )[..., None]
            / 255
        )
        canvas = canvas * (1 - mask) + mask * np.array(COLORS[obj.color], np.float32)
    return Image.fromarray(canvas.astype(np.uint8)).reduce(SUPERSAMPLE)


def training_windows(count: int, seed: int, vae=None) -> tuple[np.ndarray, np.ndarray]:
    """``count`` (window, class index) examples from one- and two-object scenes, each object its own example."""

    world = World(seed)
    rng = np.random.default_rng(seed)
    windows, labels = [], []
    while len(windows) < count:
        scenes = [world.sample(world.rng.choice(("colored", "and", "relation"))) for _ in range(32)]
        kinds = [[OTHER if rng.random() < OTHER_SHARE else o.shape for o in s.objects] for s in scenes]
        images = [_draw(s, rng, k) for s, k in zip(scenes, kinds)]
        images = _round_trip(images, vae) if vae is not None else images
        for scene, kind, image in zip(scenes, kinds, images):
            image = _soften(image, rng)
            for blob in segment(image):
                nearest = min(
                    range(len(scene.objects)),
                    key=lambda i: (scene.objects[i].x - blob.x) ** 2 + (scene.objects[i].y - blob.y) ** 2,
                )
                truth = scene.objects[nearest]
                if (truth.x - blob.x) ** 2 + (truth.y - blob.y) ** 2 < (0.5 * truth.radius) ** 2:
                    windows.append(blob.window)
                    labels.append(CLASSES.index(kind[nearest]))
    return np.stack(windows[:count]), np.array(labels[:count])


def _round_trip(images: list[Image.Image], vae) -> list[Image.Image]:
    from diffusers.image_processor import VaeImageProcessor

    with torch.no_grad():
        x = images_to_tensor(images).to(vae.dtype)
        out = vae.decode(vae.encode(x).latent_dist.mode()).sample.float()
    return VaeImageProcessor().postprocess(out, output_type="pil")


def train(vae_path: str | Path, count: int = 16000, epochs: int = 12, seed: int = 0, out: Path = WEIGHTS) -> dict:
    """Train the classifier on round-tripped, softened renders; report accuracy on a separate held-out draw."""
    from diffusers import AutoencoderKL
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    start = time.perf_counter()
    vae = AutoencoderKL.from_pretrained(vae_path).float().eval()
    x, y = training_windows(count, seed, vae)
    x_val, y_val = training_windows(2000, seed + 1, vae)
    x, y = torch.from_numpy(x)[:, None], torch.from_numpy(y)
    net = ShapeNet()
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=1e-4)
    steps = epochs * (len(x) // 128)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
    for _ in range(epochs):
        order = torch.randperm(len(x))
        for i in range(0, len(x) - 127, 128):
            idx = order[i : i + 128]
            batch = x[idx]
            if torch.rand(()) < 0.5:  # shapes are symmetric under a horizontal flip
                batch = batch.flip(-1)
            loss = nn.functional.cross_entropy(net(batch), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    net.eval()
    with torch.no_grad():
        pred = net(torch.from_numpy(x_val)[:, None]).argmax(-1).numpy()
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(out))
    load.cache_clear()
    per_shape = {s: round(float((pred[y_val == i] == i).mean()), 4) for i, s in enumerate(CLASSES)}
    return {
        "heldout_accuracy": round(float((pred == y_val).mean()), 4),
        "per_shape": per_shape,
        "examples": count,
        "seconds": round(time.perf_counter() - start, 1),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--vae",
        default=str(MODEL_DIR / "vae"),
        help="the VAE whose round trip the training images go through (default: the shipped toy's)",
    )
    parser.add_argument("--count", type=int, default=16000)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--out", type=Path, default=WEIGHTS)
    args = parser.parse_args(argv)
    print(train(args.vae, args.count, args.epochs, out=args.out))


if __name__ == "__main__":
    main()
