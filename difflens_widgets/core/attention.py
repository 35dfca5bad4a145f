"""Where each word lands: the denoiser's text cross-attention, captured for every lensed image (DAAM's maps, per lens
layer).

DAAM (Tang et al., ACL 2023) aggregates a word's cross-attention probabilities over denoising steps, heads and
attention layers into one map per word. Here that happens for every (lens layer, seed) image of one batched run:

- **what is captured**: the softmax probabilities of the image queries over the text keys, conditional branch only
  (the classifier-free guidance batch's second half), in every cross-attention site the family has (a U-Net's
  ``attn2``, PixArt's cross-attention, the text part of SD3's and FLUX's joint attention, IF's added key/values).
  The probabilities are recomputed from the very query and key the attention kernel receives (its
  ``scaled_dot_product_attention`` call is observed, not replaced), so the images are bit-identical with and
  without capture.
- **aggregation** (DAAM's defaults, each selectable): summed over the chosen denoising steps, averaged over heads
  and over attention sites. Maps are accumulated on the fly at each site's own resolution (never the attention
  tensor of a step kept), then brought to the finest site's grid (bilinear) and summed; a map is shown at image size
  with **bicubic** interpolation, clamped at 0 (:meth:`LensResult.attention`).
- **memory**: one head at a time, the image queries against every key of that head; the extra peak per image is
  the (queries × keys) logits of one head plus the accumulators (tokens × the finest grid, per image).

Sites are installed for the run and removed in ``finally``, like every other hook of the lens.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..adapters.denoising import TextInCall

GUIDANCE_LAYOUTS = ("batch", "batch-conditional-first", "calls")
_local = threading.local()  # the capture active in this thread, and the site being called
_patch_guard = threading.Lock()
_patch_users = 0
_original_sdpa: Any = None


@dataclass(frozen=True)
class AttentionSettings:
    """Which parts are aggregated: denoising steps (0-based indices; None: every step), attention sites by the side
    of their query grid (e.g. 8 and 4 on the toy model; None: every site), heads (None: the mean of every head)."""

    steps: tuple[int, ...] | None = None
    resolutions: tuple[int, ...] | None = None
    heads: tuple[int, ...] | None = None

    def summary(self) -> str:
        """One line for a run's description, e.g. 'steps 0,5, sites all, heads mean' (steps 0-based, as given)."""

        def listed(values: tuple[int, ...] | None, every: str) -> str:
            return every if values is None else ",".join(map(str, values))

        return (
            f"steps {listed(self.steps, 'all')}, "
            f"sites {listed(self.resolutions, 'all')}, heads {listed(self.heads, 'mean')}"
        )


@dataclass(frozen=True)
class Site:
    """One cross-attention module and where its text keys and image queries sit in its attention call: ``text``
    (keys all text, queries all image: a U-Net's attn2, PixArt), ``text_first`` / ``image_first`` (joint attention:
    queries and keys both [text; image] or [image; text]: FLUX, SD3), ``added_kv`` (keys [text; image], queries
    image: DeepFloyd IF)."""

    name: str
    module: torch.nn.Module
    layout: str


@dataclass
class _Item:
    per_resolution: dict = field(default_factory=dict)  # (h, w) → tensor (tokens, h, w): the running sum
    mass: dict = field(default_factory=dict)  # step → tensor (tokens,): the summed probability per token
    calls: dict = field(default_factory=dict)  # step → sites recorded


class AttentionCapture:
    """Accumulates every chunk item's maps while the pipeline runs (see the module docstring)."""

    def __init__(
        self,
        sites: list[Site],
        settings: AttentionSettings,
        text: slice | list[slice],
        aspect: float,
        guidance: str = "batch",
    ):
        """``guidance``: where the conditional branch is when classifier-free guidance is on: ``"batch"`` (the
        second half of one batch, diffusers' [unconditional; conditional]), ``"batch-conditional-first"`` (the
        first half) or ``"calls"`` (the first of two denoiser calls per step: FLUX.2, Qwen-Image)."""
        if guidance not in GUIDANCE_LAYOUTS:
            raise ValueError(f"guidance layout must be one of {GUIDANCE_LAYOUTS}, got {guidance!r}")
        self.sites, self.settings, self.text, self.aspect = sites, settings, text, aspect
        self.guidance = guidance
        self._call = 0  # denoiser calls begun in this step (a call begins when its first site is entered)
        self.items: dict[tuple[int, int], _Item] = {}
        self._chunk: list[tuple[int, int]] = []
        self._cfg = False
        self._text = TextInCall(0)
        self._step = 0
        self._handles: list = []
        self._grids_seen: set[int] = set()  # query-grid sides of the sites called in the first step
        self._kept = False  # whether any site's map was kept in the first step

    # ---- the pipeline call ---------------------------------------------------------------------------------------
    def begin_call(self, chunk: list[tuple[int, int]], cfg: bool, text: TextInCall | int) -> None:
        """A new pipeline call for ``chunk``'s (layer, seed) items (padding repeats the last one), with guidance or
        not, whose text sits in the attention as ``text`` says (an int: that many positions, uncut)."""
        self._chunk, self._cfg, self._step = list(chunk), cfg, 0
        self._text = text if isinstance(text, TextInCall) else TextInCall(int(text))

    def step_done(self) -> None:
        """After each denoiser step; after the first, refuses a selection of sites that kept nothing (before any
        more work is done, rather than a finished run without maps)."""
        if self._step == 0 and self._grids_seen and not self._kept:
            raise ValueError(
                f"attention_resolutions {list(self.settings.resolutions or [])} match no attention site of this "
                f"run: its sites have query grids of side {', '.join(map(str, sorted(self._grids_seen)))}"
            )
        self._step += 1
        self._call = 0

    # ---- installation --------------------------------------------------------------------------------------------
    def __enter__(self) -> AttentionCapture:
        _patch_sdpa()
        for site in self.sites:
            self._handles.append(site.module.register_forward_pre_hook(self._enter_site(site)))
            self._handles.append(site.module.register_forward_hook(self._leave_site))
        _local.capture = self
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        _local.capture = None
        _local.site = None
        _unpatch_sdpa()

    def _enter_site(self, site: Site):
        def hook(module, args):
            _local.site = site
            if site is self.sites[0]:
                self._call += 1

        return hook

    @staticmethod
    def _leave_site(module, args, output):
        _local.site = None

    # ---- one attention call --------------------------------------------------------------------------------------
    def record(self, site: Site, query: torch.Tensor, key: torch.Tensor, attn_mask, scale) -> None:
        if self.settings.steps is not None and self._step not in self.settings.steps:
            return
        if self._cfg and self.guidance == "calls" and self._call > 1:
            return  # the unconditional call of this step
        batch, heads, n_query, dim = query.shape
        n_key = key.shape[2]
        text_len, image = self._text.length, self._text.image_tokens
        if site.layout == "text":
            queries, keys = slice(0, n_query), slice(0, n_key)
        elif site.layout == "added_kv":
            queries, keys = slice(0, n_query), slice(0, text_len)
        elif site.layout == "text_first":
            queries, keys = slice(text_len, n_query if image is None else text_len + image), slice(0, text_len)
        elif site.layout == "image_first":
            start = n_query - text_len if self._text.start is None else self._text.start
            queries, keys = slice(0, start if image is None else image), slice(start, start + text_len)
        else:  # pragma: no cover - a family declares one of the layouts above
            raise ValueError(f"unknown attention layout {site.layout!r}")
        n_image = queries.stop - queries.start
        grid = self._grid(n_image)
        if grid is not None and self._step == 0:
            self._grids_seen.add(grid[0])
        if grid is None or (self.settings.resolutions is not None and grid[0] not in self.settings.resolutions):
            return
        self._kept = True
        rows = _conditional_rows(batch, self._cfg, self.guidance)
        chosen = range(heads) if self.settings.heads is None else [h for h in self.settings.heads if h < heads]
        if not chosen:
            raise ValueError(f"attention_heads {self.settings.heads} name no head of this denoiser ({heads} heads)")
        scale = 1 / math.sqrt(dim) if scale is None else scale
        with torch.no_grad():
            heads_probs = [self._head(query, key, attn_mask, rows, h, queries, keys, scale) for h in chosen]
            probs = torch.stack(heads_probs).mean(0)  # (items, image queries, text keys), averaged over heads
        # the lensed encoder's positions in the text sequence (where the text holds them twice: both copies' share)
        slices = self.text if isinstance(self.text, list) else [self.text]
        lensed = torch.stack([probs[..., s] for s in slices]).sum(0)
        maps = lensed.transpose(1, 2).reshape(lensed.shape[0], lensed.shape[2], *grid).cpu()
        for index, item in enumerate(self._chunk[: maps.shape[0]]):
            if index > 0 and item == self._chunk[index - 1]:
                continue  # compile padding repeats the last item: counted once
            state = self.items.setdefault(item, _Item())
            total = state.per_resolution.get(grid)
            state.per_resolution[grid] = maps[index] if total is None else total + maps[index]
            mass, before = maps[index].sum(dim=(1, 2)), state.mass.get(self._step)
            state.mass[self._step] = mass if before is None else before + mass
            state.calls[self._step] = state.calls.get(self._step, 0) + 1

    @staticmethod
    def _head(query, key, attn_mask, rows, head: int, queries: slice, keys: slice, scale: float) -> torch.Tensor:
        """One head's probabilities of the image queries over the text keys (softmax over every key): one head at
        a time, so the extra memory is one head's (queries × keys) logits."""
        logits = query[rows, head, queries].float() @ key[rows, head].float().transpose(-1, -2) * scale
        if attn_mask is not None:
            logits = logits + _mask_for(attn_mask, rows, head, queries, logits)
        return logits.softmax(dim=-1)[..., keys]

    def _grid(self, n_image: int) -> tuple[int, int] | None:
        """(h, w) of ``n_image`` query positions laid out at the image's aspect ratio (height / width)."""
        h = max(1, round(math.sqrt(n_image * self.aspect)))
        w = n_image // h
        return (h, w) if h * w == n_image else None

    # ---- results -------------------------------------------------------------------------------------------------
    def result(self, positions: int | None = None) -> tuple[dict, dict]:
        """({(layer, seed): maps (tokens, h, w) at the finest site's grid}, {(layer, seed): mass (steps, tokens)}):
        summed over steps, averaged over sites (and heads), one row per lensed-encoder position (``positions`` of
        them): a position the denoiser was not handed (padding a family cuts, Qwen-Image, Lumina 2) drew none."""
        maps, masses = {}, {}
        for item, state in self.items.items():
            if not state.per_resolution:
                continue
            finest = max(state.per_resolution, key=lambda g: g[0] * g[1])
            total = sum(
                F.interpolate(m[None], size=finest, mode="bilinear", align_corners=False)[0] if g != finest else m
                for g, m in state.per_resolution.items()
            )
            sites_per_step = max(state.calls.values())
            maps[item] = self._placed((total / sites_per_step).numpy().astype(np.float32), 0, positions)
            steps = sorted(state.mass)
            mass = np.stack([(state.mass[s] / state.calls[s]).numpy() for s in steps]).astype(np.float32)
            masses[item] = self._placed(mass, 1, positions)
        return maps, masses

    def _placed(self, array: np.ndarray, axis: int, length: int | None) -> np.ndarray:
        """``array``, whose ``axis`` runs over the text the denoiser attended to, with that axis running over the
        lensed encoder's ``length`` positions instead (zeros where the denoiser had no text)."""
        positions = self._text.positions
        if length is None or (positions is None and array.shape[axis] >= length):
            return array
        shape = list(array.shape)
        shape[axis] = length
        placed = np.zeros(shape, dtype=array.dtype)
        rows = positions if positions is not None else list(range(array.shape[axis]))
        index: list = [slice(None)] * array.ndim
        index[axis] = rows
        placed[tuple(index)] = np.take(array, range(len(rows)), axis=axis)  # past them: the family's own padding
        return placed


def _conditional_rows(batch: int, cfg: bool, guidance: str = "batch") -> slice:
    """The conditional half of a classifier-free guidance batch ([unconditional; conditional], or the reverse), or
    all of it (no guidance, or guidance in calls of its own)."""
    if not cfg or batch % 2 or guidance == "calls":
        return slice(0, batch)
    return slice(0, batch // 2) if guidance == "batch-conditional-first" else slice(batch // 2, batch)


def _mask_for(mask: torch.Tensor, rows: slice, head: int, queries: slice, like: torch.Tensor) -> torch.Tensor:
    """The attention mask's additive part for these rows, head and queries, broadcast to ``like``."""
    if mask.dtype == torch.bool:
        mask = torch.zeros(mask.shape, dtype=like.dtype, device=mask.device).masked_fill(~mask, float("-inf"))
    while mask.ndim < 4:
        mask = mask.unsqueeze(1)
    mask = mask[rows] if mask.shape[0] > 1 else mask
    mask = mask[:, head if mask.shape[1] > 1 else 0]
    mask = mask[:, queries] if mask.shape[1] > 1 else mask
    return mask.to(like.dtype).expand_as(like)


def _observing_sdpa(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, **kwargs):
    """torch's scaled_dot_product_attention, observed: its output is computed first and returned untouched."""
    out = _original_sdpa(query, key, value, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal,
                         scale=scale, **kwargs)  # fmt: skip
    capture, site = getattr(_local, "capture", None), getattr(_local, "site", None)
    if capture is not None and site is not None and query.ndim == 4:
        capture.record(site, query, key, attn_mask, scale)
    return out


def _patch_sdpa() -> None:
    global _patch_users, _original_sdpa
    with _patch_guard:
        if _patch_users == 0:
            _original_sdpa = F.scaled_dot_product_attention
            setattr(F, "scaled_dot_product_attention", _observing_sdpa)  # noqa: B010 (torch's own attribute)
        _patch_users += 1


def _unpatch_sdpa() -> None:
    global _patch_users
    with _patch_guard:
        _patch_users -= 1
        if _patch_users == 0:
            setattr(F, "scaled_dot_product_attention", _original_sdpa)  # noqa: B010
