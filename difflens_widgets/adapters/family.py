"""The base every family adapter derives from: the text side of the lens and the denoiser side of the taps."""

from __future__ import annotations

from .denoising import DenoiserTaps
from .lens import LensAdapter


class FamilyAdapter(LensAdapter, DenoiserTaps):
    """What one pipeline family says (see :class:`~.lens.LensAdapter` and :class:`~.denoising.DenoiserTaps`)."""
