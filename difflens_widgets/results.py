"""LensResult: everything one lens run produced, with no torch objects inside (widgets and exports read it)."""

from __future__ import annotations

import copy

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont


class Tokens(list):
    """A prompt's token strings, padding included, that also know how many are real (from the attention mask,
    not from spotting end tokens by name)."""

    def __init__(self, tokens, real: int):
        super().__init__(tokens)
        self.real = int(real)


@dataclass
class LensResult:
    """Images per (layer, seed), lens embeddings per layer, optional denoising snapshots, and the parameters.

    ``images[(layer, seed)]`` is a PIL image; ``embeddings[layer]`` the prompt's lens embedding at that layer as a
    float32 array (tokens × width, padding included); ``snapshots[(layer, seed)]`` a list of (step, image) previews
    of the predicted clean image. ``complete`` is False when the run was cancelled: then only the (layer, seed)
    pairs that finished are in ``images``.
    """

    prompt: str
    layers: list[int]
    seeds: list[int]
    images: dict[tuple[int, int], Image.Image]
    embeddings: dict[int, np.ndarray]
    tokens: list[str]
    params: dict
    snapshots: dict[tuple[int, int], list[tuple[int, Image.Image]]] = field(default_factory=dict)
    complete: bool = True

    def copy(self) -> "LensResult":
        """An independent copy (images, arrays, parameters): what a cache hands out, so that changing one
        answer never changes a later one."""
        return LensResult(
            prompt=self.prompt, layers=list(self.layers), seeds=list(self.seeds),
            images={k: im.copy() for k, im in self.images.items()},
            embeddings={k: v.copy() for k, v in self.embeddings.items()}, tokens=list(self.tokens),
            params=copy.deepcopy(self.params),
            snapshots={k: [(step, im.copy()) for step, im in v] for k, v in self.snapshots.items()},
            complete=self.complete,
        )

    def image(self, layer: int, seed: int | None = None) -> Image.Image:
        """The lens image of ``layer`` (a ``hidden_states`` index) for ``seed`` (default: the first seed)."""
        seed = self.seeds[0] if seed is None else seed
        if seed not in self.seeds:
            raise KeyError(f"seed {seed} was not run; seeds: {self.seeds}")
        if (layer, seed) not in self.images:
            done = sorted({l for l, _ in self.images})
            raise KeyError(f"layer {layer} has no image for seed {seed}; layers with images: {done}")
        return self.images[(layer, seed)]

    def grid(self, label: bool = True, scale: int | None = None) -> Image.Image:
        """Rows = seeds, columns = layers, each column headed "L<layer>" and each row "seed <s>".

        Small images (the toy model's 64×64) are enlarged with nearest-neighbour so labels stay legible.
        """
        layers = [l for l in self.layers if any((l, s) in self.images for s in self.seeds)]
        if not layers:
            raise ValueError("this result holds no image (the run was cancelled before any layer finished)")
        rows = [[self.images.get((l, s)) for l in layers] for s in self.seeds]
        return labelled_grid(rows, [f"seed {s}" for s in self.seeds] if label else None,
                             [f"L{l}" for l in layers] if label else None, scale=scale)

    def save(self, folder: str | Path) -> Path:
        """Write ``layer{L:02d}_seed{S}.png`` per image, ``grid.png``, and ``lens.json`` with every parameter
        needed to reproduce the run (prompt, layers, seeds, steps, guidance, size, scheduler, model)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        files = {}
        for (layer, seed), img in sorted(self.images.items()):
            name = f"layer{layer:02d}_seed{seed}.png"
            img.save(folder / name)
            files[f"{layer},{seed}"] = name
        if self.images:
            self.grid().save(folder / "grid.png")
        meta = {"prompt": self.prompt, "layers": self.layers, "seeds": self.seeds, "tokens": self.tokens,
                "complete": self.complete, "params": self.params, "files": files}
        (folder / "lens.json").write_text(json.dumps(meta, indent=2, default=str))
        return folder

    def __repr__(self) -> str:
        state = "" if self.complete else ", cancelled"
        return f"LensResult({self.prompt!r}, layers={self.layers}, seeds={self.seeds}{state})"


def labelled_grid(rows: list[list[Image.Image | None]], row_labels: list[str] | None, col_labels: list[str] | None,
                  *, scale: int | None = None, target: int = 128, left: int = 62) -> Image.Image:
    """Paste images in rows and columns (None leaves a cell blank) with optional row and column labels. Images
    smaller than ``target`` pixels are enlarged by an integer factor with nearest-neighbour, so pixels stay crisp."""
    first = next(img for row in rows for img in row if img is not None)
    scale = scale or max(1, target // max(first.size))
    w, h = first.width * scale, first.height * scale
    top, left = (18 if col_labels else 0), (left if row_labels else 0)
    canvas = Image.new("RGB", (left + w * max(len(r) for r in rows), top + h * len(rows)), "white")
    draw, font = ImageDraw.Draw(canvas), ImageFont.load_default()
    for col, text in enumerate(col_labels or []):
        draw.text((left + col * w + 4, 3), text, fill="black", font=font)
    for r, row in enumerate(rows):
        if row_labels:
            draw.text((4, top + r * h + h // 2 - 6), row_labels[r], fill="black", font=font)
        for c, img in enumerate(row):
            if img is not None:
                canvas.paste(img.resize((w, h), Image.NEAREST), (left + c * w, top + r * h))
    return canvas
