"""The annotator's shape classifier: a tiny CNN that names the shape of one segmented blob.

Why a trained classifier: the toy model's shapes are soft. A small diamond that went through the VAE and 20 DDIM
steps has rounded corners, and a template match on its thresholded mask calls it a circle. This network is trained
on what such shapes look like — world renders passed through the shipped model's own VAE round trip, then softened
further (blur, lowered contrast, jittered threshold), as generations are — and it reads the blob's *soft* paint mask,
not a hard threshold, so faint edges still carry their shape.

Input: a square window around the blob (side 1.3 × its larger extent, so aspect ratio survives: diamond vs square),
paint strength in [0, 1], resized to :data:`SIDE` × :data:`SIDE`. Output: one of :data:`~.world.SHAPES`.

    python -m difflens_widgets.toy.shape_classifier   # retrain; writes shape_classifier.safetensors beside this file

Weights: ``shape_classifier.safetensors`` (≈ 0.1 MB) shipped in the package; training takes about a minute on a CPU.
"""

from __future__ import annotations

import argparse
import time
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFilter
from torch import nn

from .world import SHAPES, World

SIDE = 24
WINDOW = 1.3  # window side / the blob's larger extent
PAINT_SCALE = 160.0  # RGB distance from the background that counts as fully painted
WEIGHTS = Path(__file__).with_name("shape_classifier.safetensors")


def paint_strength(pixels: np.ndarray, background: np.ndarray) -> np.ndarray:
    """Per pixel, how far it is from the background, as a share of a saturated world colour's distance."""
    return np.clip(np.linalg.norm(pixels - background, axis=-1) / PAINT_SCALE, 0.0, 1.0)


def crop_window(paint: np.ndarray, member_mask: np.ndarray) -> np.ndarray:
    """The classifier's input for one blob: its paint (other blobs' paint zeroed) in a square window around it."""
    ys, xs = np.nonzero(member_mask)
    cy, cx = (ys.min() + ys.max()) / 2, (xs.min() + xs.max()) / 2
    half = WINDOW * max(ys.max() - ys.min() + 1, xs.max() - xs.min() + 1) / 2
    grown = np.asarray(Image.fromarray(member_mask.astype(np.uint8) * 255).filter(ImageFilter.MaxFilter(3))) > 0
    own = np.where(grown, paint, 0.0).astype(np.float32)
    box = (cx - half, cy - half, cx + half + 1, cy + half + 1)
    window = Image.fromarray(own, mode="F").transform((SIDE, SIDE), Image.EXTENT, box, Image.BILINEAR)
    return np.asarray(window, dtype=np.float32)


class ShapeNet(nn.Module):
    def __init__(self, classes: int = len(SHAPES)):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # 12
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # 6
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(256, 64), nn.ReLU(), nn.Linear(64, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


@lru_cache(maxsize=1)
def load(path: Path = WEIGHTS) -> ShapeNet:
    from safetensors.torch import load_file

    if not Path(path).exists():
        raise FileNotFoundError(f"the annotator's shape classifier {path} is missing; rebuild it with "
                                f"python -m difflens_widgets.toy.shape_classifier")
    net = ShapeNet()
    net.load_state_dict(load_file(str(path)))
    return net.eval()


def classify(windows: list[np.ndarray]) -> list[tuple[str, float]]:
    """(shape, probability) for each window from :func:`crop_window`."""
    if not windows:
        return []
    with torch.no_grad():
        probs = load()(torch.from_numpy(np.stack(windows))[:, None]).softmax(-1)
    best = probs.max(-1)
    return [(SHAPES[i], float(p)) for p, i in zip(best.values.tolist(), best.indices.tolist())]


# ---------------------------------------------------------------------------------------------------------------
# Training data: world renders through the VAE round trip, softened
# ---------------------------------------------------------------------------------------------------------------
def _soften(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Make a clean round-tripped render look more like a generation: blur and fade towards the background."""
    if rng.random() < 0.6:
        image = image.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.3, 1.2))))
    fade = float(rng.uniform(0.55, 1.0)) if rng.random() < 0.5 else 1.0
    pixels = np.asarray(image, dtype=np.float32)
    background = np.median(np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]]), axis=0)
    return Image.fromarray(np.clip(background + fade * (pixels - background), 0, 255).astype(np.uint8))


def training_windows(count: int, seed: int, vae=None) -> tuple[np.ndarray, np.ndarray]:
    """``count`` (window, shape index) examples from one- and two-object scenes, each object its own example."""
    from .annotate import segment  # the same segmentation the annotator uses, so the inputs match

    world = World(seed)
    rng = np.random.default_rng(seed)
    windows, labels = [], []
    while len(windows) < count:
        scenes = [world.sample(world.rng.choice(("colored", "and", "relation"))) for _ in range(32)]
        images = _round_trip([_render(s) for s in scenes], vae) if vae is not None else [_render(s) for s in scenes]
        for scene, image in zip(scenes, images):
            image = _soften(image, rng)
            for blob in segment(image):
                truth = min(scene.objects, key=lambda o: (o.x - blob.x) ** 2 + (o.y - blob.y) ** 2)
                if (truth.x - blob.x) ** 2 + (truth.y - blob.y) ** 2 < (0.5 * truth.radius) ** 2:
                    windows.append(blob.window)
                    labels.append(SHAPES.index(truth.shape))
    return np.stack(windows[:count]), np.array(labels[:count])


def _render(scene):
    from .world import render

    return render(scene)


def _round_trip(images: list[Image.Image], vae) -> list[Image.Image]:
    from .train import images_to_tensor

    with torch.no_grad():
        x = images_to_tensor(images).to(vae.dtype)
        out = vae.decode(vae.encode(x).latent_dist.mode()).sample.float()
    array = ((out.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()
    return [Image.fromarray(a) for a in array]


def train(vae_path: str | Path, count: int = 12000, epochs: int = 12, seed: int = 0,
          out: Path = WEIGHTS) -> dict:
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
            idx = order[i:i + 128]
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
    per_shape = {s: round(float((pred[y_val == i] == i).mean()), 4) for i, s in enumerate(SHAPES)}
    return {"heldout_accuracy": round(float((pred == y_val).mean()), 4), "per_shape": per_shape,
            "examples": count, "seconds": round(time.perf_counter() - start, 1)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vae", default=str(Path(__file__).with_name("model") / "vae"),
                        help="the VAE whose round trip the training images go through (default: the shipped toy's)")
    parser.add_argument("--count", type=int, default=12000)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--out", type=Path, default=WEIGHTS)
    args = parser.parse_args(argv)
    print(train(args.vae, args.count, args.epochs, out=args.out))


if __name__ == "__main__":
    main()
