"""The annotator's shape classifier: a tiny CNN that names the shape of one segmented blob.

Why a trained classifier: the toy model's shapes are soft. A small diamond that went through the VAE and 20 DDIM
steps has rounded corners, and a template match on its thresholded mask calls it a circle. This network is trained
on what such shapes look like — world renders passed through the shipped model's own VAE round trip, then softened
further (blur, lowered contrast, jittered threshold), as generations are — and it reads the blob's *soft* paint mask,
not a hard threshold, so faint edges still carry their shape.

The training shapes are also *deformed the way generations are*: stretched and turned a little, their corners
rounded or arms thickened (drawn large, blurred, re-thresholded), and an extra class, ``other``, holds shapes that are
not in the world — ellipses, teardrops, pentagons, merged lumps — so that a generated lump is called a blob rather
than forced into the nearest world shape.

Input: a square window around the blob (side 1.3 × its larger extent, so aspect ratio survives: diamond vs square),
paint strength in [0, 1], resized to :data:`SIDE` × :data:`SIDE`. Output: one of :data:`~.world.SHAPES` or
:data:`OTHER`.

    python -m difflens_widgets.studies.train_shape_classifier   # retrain; writes shape_classifier.safetensors

Weights: ``shape_classifier.safetensors`` (0.16 MB) shipped in the package; training (16,000 examples, 12 epochs)
takes about five minutes on a 2-core CPU.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFilter
from torch import nn

from .world import SHAPES

SIDE = 24
WINDOW = 1.3  # window side / the blob's larger extent
PAINT_SCALE = 160.0  # RGB distance from the background that counts as fully painted
WEIGHTS = Path(__file__).with_name("shape_classifier.safetensors")
OTHER = "other"
CLASSES = SHAPES + (OTHER,)


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
    def __init__(self, classes: int = len(CLASSES)):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),  # 12
            nn.Conv2d(16, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),  # 6
            nn.Conv2d(32, 64, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(2),
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(256, 64), nn.ReLU(), nn.Linear(64, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


@lru_cache(maxsize=1)
def load(path: Path = WEIGHTS) -> ShapeNet:
    from safetensors.torch import load_file

    if not Path(path).exists():
        raise FileNotFoundError(
            f"the annotator's shape classifier {path} is missing; rebuild it with "
            f"python -m difflens_widgets.toy.shape_classifier"
        )
    net = ShapeNet()
    net.load_state_dict(load_file(str(path)))
    return net.eval()


def classify(windows: list[np.ndarray]) -> list[tuple[str, float]]:
    """(shape or :data:`OTHER`, probability) for each window from :func:`crop_window`."""
    if not windows:
        return []
    with torch.no_grad():
        probs = load()(torch.from_numpy(np.stack(windows))[:, None]).softmax(-1)
    best = probs.max(-1)
    return [(CLASSES[i], float(p)) for p, i in zip(best.values.tolist(), best.indices.tolist())]
