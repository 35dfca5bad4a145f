"""difflens-widgets: see how a text-to-image model reads a prompt, layer by layer (Diffusion Lens,
Toker et al., ACL 2024).

    import difflens_widgets as dl
    res = dl.Lens(dl.load_pipeline("toy")).run("a red circle left of a blue square")
    res.grid()
"""

from .engine import Lens, Preview
from .models import load_pipeline
from .results import LensResult
from .tracker import LensTracker
from .tuning import Comparison, compare, load_tuned

__version__ = "0.1.0"
__all__ = ["Comparison", "Lens", "LensDashboard", "LensResult", "LensTracker", "Preview", "TrainingView", "compare",
           "load_pipeline", "load_tuned", "__version__"]


def __getattr__(name: str):
    # The dashboard pulls in anywidget; import it only when asked for, so the engine stays widget-free.
    if name in ("LensDashboard", "TrainingView"):
        from . import widgets

        return getattr(widgets, name)
    raise AttributeError(f"module 'difflens_widgets' has no attribute {name!r}")
