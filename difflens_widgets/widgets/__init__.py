"""Notebook widgets (anywidget). Imported lazily by ``difflens_widgets.LensDashboard`` / ``TrainingView`` so the
engine never needs them."""

from .dashboard import LensDashboard
from .training import TrainingView

__all__ = ["LensDashboard", "TrainingView"]
