"""The one front-end bundle every view draws with (built from ``js/`` into ``static/``), and how images cross to it:
PNG bytes, sent as binary buffers (never base64 text)."""

from __future__ import annotations

from pathlib import Path

import anywidget

from ..core.results import encoded

STATIC = Path(__file__).parent / "static"


def png_bytes(image) -> bytes:
    return encoded(image, "PNG", optimize=False)


class BundledWidget(anywidget.AnyWidget):
    """A view of the shared bundle (its ``view`` trait, where present, says which one to draw)."""

    _esm = STATIC / "widget.js"
    _css = STATIC / "widget.css"
