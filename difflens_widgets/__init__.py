"""difflens-widgets: see how a text-to-image model reads a prompt, layer by layer (Diffusion Lens,
Toker et al., ACL 2024).

    import difflens_widgets as dl
    res = dl.Lens(dl.load_pipeline("toy")).run("a red circle left of a blue square")
    res.grid()

Names are imported on first use (PEP 562), so ``import difflens_widgets`` and ``difflens --help`` do not import
torch or diffusers, and submodules (``dl.similarity``, ``dl.memory``, ...) are reachable as attributes.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

# public name → the submodule that defines it
_EXPORTS = {
    "Lens": "engine", "Preview": "engine", "load_pipeline": "models", "LensResult": "results",
    "LensTracker": "tracker", "Comparison": "tuning", "compare": "tuning", "load_tuned": "tuning",
    "run_panels": "panels", "Panel": "panels", "sweep": "sweeps", "probe": "probes", "ProbeResult": "probes",
    # anywidget only when asked for: the engine stays widget-free
    "LensDashboard": "widgets", "TrainingView": "widgets", "SweepView": "widgets",
    "DenoiserView": "widgets", "lens_and_denoiser": "widgets",
}
_SUBMODULES = ("adapters", "cli", "denoiser", "engine", "exports", "lens_options", "magics", "memory", "models",
               "options", "panels", "probes", "results", "scorers", "similarity", "sweep_report", "sweeps", "testing",
               "toy", "tracker", "tuning", "widgets")
__all__ = sorted(_EXPORTS) + ["__version__"]

if TYPE_CHECKING:  # for type checkers and IDEs; at run time the names resolve lazily below
    from .engine import Lens, Preview
    from .models import load_pipeline
    from .panels import Panel, run_panels
    from .probes import ProbeResult, probe
    from .sweeps import sweep
    from .results import LensResult
    from .tracker import LensTracker
    from .tuning import Comparison, compare, load_tuned
    from .widgets import DenoiserView, LensDashboard, SweepView, TrainingView, lens_and_denoiser


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    elif name in _SUBMODULES:
        value = importlib.import_module(f".{name}", __name__)
    else:
        raise AttributeError(f"module 'difflens_widgets' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS) | set(_SUBMODULES))
