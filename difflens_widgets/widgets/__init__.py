"""Notebook widgets (anywidget). Imported lazily by ``difflens_widgets.LensDashboard`` / ``TrainingView`` so the
engine never needs them."""

from .dashboard import LensDashboard
from .training import TrainingView


def __getattr__(name: str):
    if name == "SweepView":  # needs pandas and pyarrow (the [scale] extra): imported when asked for
        from .sweep_view import SweepView

        return SweepView
    if name in ("DenoiserView", "lens_and_denoiser"):
        from . import denoiser_view

        return getattr(denoiser_view, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["DenoiserView", "LensDashboard", "SweepView", "TrainingView", "lens_and_denoiser"]
