"""LensResult: everything one lens run produced, with no torch objects inside (widgets and exports read it)."""

from __future__ import annotations

import copy
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont


class Tokens(list):
    """A prompt's token strings, padding included, that also know which are shown to a reader: positions
    ``first .. real - 1``, the user's own tokens (from the attention mask, not from spotting end tokens by name;
    ``first`` > 0 where a chat template comes before them)."""

    def __init__(self, tokens, real: int, first: int = 0):
        super().__init__(tokens)
        self.real = int(real)
        self.first = int(first)

    @classmethod
    def shown_in(cls, encoded, index: int) -> Tokens:
        """Text ``index``'s tokens of an encoder pass (``adapters.EncodedPrompts``), with the span a reader sees."""
        first, end = encoded.shown(index)
        return cls(encoded.tokens[index], end, first)

    @property
    def shown(self) -> range:
        return range(self.first, self.real)


END_TOKENS = ("<|endoftext|>", "</s>")
WORD_STARTS = ("▁", "Ġ")  # sentencepiece (T5, Llama 2, Gemma) and byte-level BPE (GPT-2, Qwen, Llama 3) word starts


def shown_span(tokens: list[str], params: dict | None = None) -> range:
    """The positions a reader is shown: the user's own tokens (start and end tokens included; never padding or a
    chat template's tokens), from :class:`Tokens` or a result's ``params``; a result saved by an older version
    shows up to and including its first end token."""
    end = getattr(tokens, "real", None) or (params or {}).get("real_tokens")
    first = getattr(tokens, "first", None) or (params or {}).get("first_token") or 0
    if not end:
        ends = [i + 1 for i, t in enumerate(tokens) if i > 0 and t in END_TOKENS]
        end = ends[0] if ends else len(tokens)
    return range(int(first), int(end))


def _span_ends(tokens: list[str]) -> tuple[int, int]:
    """(real, first) of a token list: its own, if it is a :class:`Tokens`; else every position shown."""
    return getattr(tokens, "real", len(tokens)), getattr(tokens, "first", 0)


def readable(token: str) -> str:
    """A token as a reader writes it: no word-end (``</w>``) or byte-level space (``Ġ``) marks, newlines as ⏎."""
    return token.replace("</w>", "").replace("Ġ", "").replace("Ċ", "⏎")


def word_spans(tokens: list[str], span: range | None = None) -> list[tuple[str, list[int]]]:
    """The tokens in ``span`` (default: every one) as words: (word, the positions of its pieces). CLIP's pieces end
    a word with ``</w>``, T5's and byte-level BPE's begin one with ``▁`` / ``Ġ``; a vocabulary of whole words marks
    neither; start, end and padding tokens stand alone."""
    span = range(len(tokens)) if span is None else span
    chosen = [tokens[p] for p in span]
    marked = any(t.endswith("</w>") or t.startswith(WORD_STARTS) for t in chosen)
    spans: list[tuple[str, list[int]]] = []
    open_word = False
    for position, token in zip(span, chosen):
        special = token.startswith("<") and token.endswith(">")
        text = readable(token).replace("▁", "")
        if not open_word or special or token.startswith(WORD_STARTS):
            spans.append((text, [position]))
        else:
            spans[-1] = (spans[-1][0] + text, [*spans[-1][1], position])
        open_word = marked and not special and not token.endswith("</w>")
    return spans


def token_positions(tokens: list[str], token: int | str) -> list[int]:
    """The positions ``token`` names: a position itself, or every piece of the first occurrence of a word
    (e.g. "green" → g|re|en)."""
    if isinstance(token, (int, np.integer)) and not isinstance(token, bool):
        if not 0 <= token < len(tokens):
            raise KeyError(f"token position {token} is out of range: the prompt has {len(tokens)} positions")
        return [int(token)]
    if not isinstance(token, str) or not token.strip():
        raise TypeError(f"a token is a position (int) or a word (str), got {token!r}")
    span = shown_span(tokens)
    for word, positions in word_spans(tokens, span):
        if word.lower() == token.strip().lower():
            return positions
    shown = " ".join(readable(tokens[p]) for p in span)
    raise KeyError(f"{token!r} is not a word of this prompt, whose tokens are: {shown}")


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
    # run with attention=True: per (layer, seed), the cross-attention map of every token (tokens × h × w, at the
    # finest attention grid) and each token's summed probability per captured denoising step (steps × tokens)
    attention_maps: dict[tuple[int, int], np.ndarray] = field(default_factory=dict)
    attention_mass: dict[tuple[int, int], np.ndarray] = field(default_factory=dict)
    # the (layer, seed) pairs whose image came out NaN/inf, with where ("latents" or "pixels"): left out of images
    non_finite: dict[tuple[int, int], str] = field(default_factory=dict)
    problem: str = ""  # one line naming them, the likely cause and its fix (empty when every image is finite)

    def copy(self) -> LensResult:
        """An independent copy (images, arrays, parameters): what a cache hands out, so that changing one
        answer never changes a later one."""
        return LensResult(
            prompt=self.prompt,
            layers=list(self.layers),
            seeds=list(self.seeds),
            images={k: im.copy() for k, im in self.images.items()},
            embeddings={k: v.copy() for k, v in self.embeddings.items()},
            tokens=Tokens(self.tokens, *_span_ends(self.tokens)),
            params=copy.deepcopy(self.params),
            snapshots={k: [(step, im.copy()) for step, im in v] for k, v in self.snapshots.items()},
            complete=self.complete,
            attention_maps={k: v.copy() for k, v in self.attention_maps.items()},
            attention_mass={k: v.copy() for k, v in self.attention_mass.items()},
            non_finite=dict(self.non_finite),
            problem=self.problem,
        )

    def attention(self, layer: int, token: int | str, seed: int | None = None, *, overlay: bool = False):
        """Where ``token`` (a position, or a word: the mean of its pieces' maps) lands in the image of ``layer``
        and ``seed``: an array of the image's size (the map brought up with bicubic interpolation, clamped at 0),
        or, with ``overlay=True``, the image with the map laid over it. Needs ``run(..., attention=True)``."""
        seed = self.seeds[0] if seed is None else seed
        if not self.attention_maps:
            raise ValueError("this result has no attention maps: run the lens with attention=True")
        if (layer, seed) not in self.attention_maps:
            raise KeyError(f"no attention map for layer {layer}, seed {seed}; the result has "
                           f"{sorted(self.attention_maps)[:12]}")  # fmt: skip
        maps = self.attention_maps[(layer, seed)][token_positions(self.tokens, token)].mean(axis=0)
        image = self.image(layer, seed)
        import torch
        import torch.nn.functional as F

        full = F.interpolate(torch.from_numpy(maps)[None, None], size=(image.height, image.width), mode="bicubic",
                             align_corners=False)[0, 0].clamp_min(0).numpy()  # fmt: skip
        return heat_overlay(image, full) if overlay else full

    def attention_grid(self, token: int | str) -> Image.Image:
        """The overlay of ``token``'s map on every image: rows = seeds, columns = layers, labelled."""
        layers = [l for l in self.layers if any((l, s) in self.attention_maps for s in self.seeds)]
        if not layers:
            raise ValueError("this result has no attention maps: run the lens with attention=True")
        rows = [[self.attention(l, token, s, overlay=True) if (l, s) in self.attention_maps else None
                 for l in layers] for s in self.seeds]  # fmt: skip
        return labelled_grid(rows, [f"seed {s}" for s in self.seeds], [f"L{l}" for l in layers],
                             title=f"{self.prompt}: where {token!r} lands")  # fmt: skip

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
            raise ValueError(
                f"this result holds no image: {self.problem}"
                if self.problem
                else "this result holds no image (the run was cancelled before any layer finished)"
            )
        rows = [[self.images.get((l, s)) for l in layers] for s in self.seeds]
        return labelled_grid(
            rows,
            [f"seed {s}" for s in self.seeds] if label else None,
            [f"L{l}" for l in layers] if label else None,
            scale=scale,
            title=self.prompt if label else None,
        )

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
        if self.attention_maps:  # every token's map and per-step mass, keyed "layer,seed" (numpy's npz)
            arrays: dict[str, Any] = {f"maps_{l},{s}": m for (l, s), m in self.attention_maps.items()}
            arrays.update({f"mass_{l},{s}": m for (l, s), m in self.attention_mass.items()})
            np.savez_compressed(folder / "attention.npz", **arrays)
        meta = {
            "prompt": self.prompt,
            "layers": self.layers,
            "seeds": self.seeds,
            "tokens": self.tokens,
            "complete": self.complete,
            "non_finite": [[layer, seed, where] for (layer, seed), where in sorted(self.non_finite.items())],
            "problem": self.problem,
            "params": self.params,
            "files": files,
        }
        (folder / "lens.json").write_text(json.dumps(meta, indent=2, default=str))
        return folder

    def __repr__(self) -> str:
        state = ("" if self.complete else ", cancelled") + (
            f", {len(self.non_finite)} non-finite" if self.non_finite else ""
        )
        return f"LensResult({self.prompt!r}, layers={self.layers}, seeds={self.seeds}{state})"


def labelled_grid(
    rows: list[list[Image.Image | None]],
    row_labels: list[str] | None,
    col_labels: list[str] | None,
    *,
    scale: int | None = None,
    target: int = 128,
    left: int = 80,
    title: str | None = None,
) -> Image.Image:
    """Paste images in rows and columns (None leaves a cell blank) with optional row and column labels and a title
    (the prompt) above. Images smaller than ``target`` pixels are enlarged by an integer factor with
    nearest-neighbour, so pixels stay crisp. Labels are 14 px, readable in a slide or a paper figure."""
    first = next(img for row in rows for img in row if img is not None)
    scale = scale or max(1, target // max(first.size))
    w, h = first.width * scale, first.height * scale
    font, small = label_font(16), label_font(14)
    left = left if row_labels else 0
    width = left + w * max(len(r) for r in rows)
    lines = _wrapped(printable(f"“{title}”"), font, width - 12) if title else []
    head = 6 + 20 * len(lines) if lines else 0
    top = head + (22 if col_labels else 0)
    canvas = Image.new("RGB", (width, top + h * len(rows)), "white")
    draw = ImageDraw.Draw(canvas)
    for number, line in enumerate(lines):
        draw.text((6, 4 + 20 * number), line, fill="black", font=font)
    for col, text in enumerate(col_labels or []):
        draw.text((left + col * w + 4, head + 3), text, fill="black", font=small)
    for r, row in enumerate(rows):
        if row_labels:
            draw.multiline_text((4, top + r * h + h // 2 - 16), printable(row_labels[r]), fill="black", font=small)
        for c, img in enumerate(row):
            if img is not None:
                canvas.paste(img.resize((w, h), Image.Resampling.NEAREST), (left + c * w, top + r * h))
    return canvas


def _wrapped(text: str, font, width: int, most: int = 3) -> list[str]:
    """``text`` in lines no wider than ``width`` pixels, broken between words, at most ``most`` lines (the last
    cut with an ellipsis): a long prompt over a one-column grid stays whole or says it was cut."""
    lines: list[str] = []
    for word in text.split():
        if lines and font.getlength(f"{lines[-1]} {word}") <= width:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    if len(lines) > most:
        lines = lines[:most]
        while lines[-1] and font.getlength(lines[-1] + "…") > width:
            lines[-1] = lines[-1][:-1]
        lines[-1] += "…"
    return lines


# viridis at five stops, as js/src/heatmap.js draws its scales: even in lightness, readable projected and in grey
VIRIDIS = np.array([[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]], dtype=np.float32)


def colourise(values: np.ndarray) -> Image.Image:
    """Values in 0..1 → an RGB image on the viridis scale."""
    position = np.clip(values, 0, 1) * (len(VIRIDIS) - 1)
    low = np.minimum(position.astype(int), len(VIRIDIS) - 2)
    frac = (position - low)[..., None]
    rgb = VIRIDIS[low] * (1 - frac) + VIRIDIS[low + 1] * frac
    return Image.fromarray(np.round(rgb).astype(np.uint8))


def heat_overlay(image: Image.Image, heat: np.ndarray, opacity: float = 0.55) -> Image.Image:
    """``heat`` (the image's size; scaled to its own maximum) over a greyed ``image``, on the viridis scale."""
    top = float(heat.max())
    colours = np.asarray(colourise(heat / top if top > 0 else heat), np.float32)
    grey = np.asarray(image.convert("L").convert("RGB"), np.float32)
    return Image.fromarray(np.uint8(np.clip((1 - opacity) * grey + opacity * colours, 0, 255)))


def label_font(size: int):
    """DejaVu Sans at ``size`` pixels where the system has it (it draws − — ✓ ✗ and accents), else Pillow's own
    font (no file needed; Pillow ≥ 10.1 scales it), whose missing glyphs :func:`printable` avoids."""
    try:
        return ImageFont.truetype("DejaVuSans.ttf", size)
    except OSError:
        pass
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # an older Pillow: its bitmap font
        return ImageFont.load_default()


def printable(text: str) -> str:
    """Dashes and minus signs as hyphens: every font draws those."""
    return text.replace("—", "-").replace("−", "-").replace("–", "-")


def encoded(image: Image.Image, fmt: str = "PNG", **kwargs) -> bytes:
    """``image`` as the bytes of an image file (PNG by default): what widgets, exports and sweeps store or send."""
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()
