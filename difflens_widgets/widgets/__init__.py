"""Notebook widgets (anywidget). Imported lazily by ``difflens_widgets.LensDashboard`` so the engine never needs
them."""

from .dashboard import LensDashboard

__all__ = ["LensDashboard"]
