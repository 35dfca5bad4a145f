"""difflens-widgets: see how a text-to-image model reads a prompt, layer by layer (Diffusion Lens,
Toker et al., ACL 2024).

    import difflens_widgets as dl
    res = dl.Lens(dl.load_pipeline("toy")).run("a red circle left of a blue square")
    res.grid()
"""

from .engine import Lens, Preview
from .models import load_pipeline
from .results import LensResult

__version__ = "0.1.0"
__all__ = ["Lens", "LensDashboard", "LensResult", "Preview", "load_pipeline", "__version__"]


def __getattr__(name: str):
    # The dashboard pulls in anywidget; import it only when asked for, so the engine stays widget-free.
    if name == "LensDashboard":
        from .widgets import LensDashboard

        return LensDashboard
    raise AttributeError(f"module 'difflens_widgets' has no attribute {name!r}")
