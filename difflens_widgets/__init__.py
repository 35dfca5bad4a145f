"""difflens-widgets: see how a text-to-image model reads a prompt, layer by layer (Diffusion Lens,
Toker et al., ACL 2024).

    import difflens_widgets as dl
    res = dl.Lens(dl.load_pipeline("toy")).run("a red circle left of a blue square")
    res.grid()

Names are imported on first use (PEP 562), so ``import difflens_widgets`` and ``difflens --help`` do not import
torch or diffusers, and modules (``dl.similarity``, ``dl.sweeps``, ``dl.probes``, ...) are reachable as attributes.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

# public name → the module that defines it
_EXPORTS = {
    "Lens": "core.engine",
    "Preview": "core.engine",
    "LensRun": "core.run",
    "load_pipeline": "core.models",
    "LensResult": "core.results",
    "LensTracker": "analyses.tracker",
    "Comparison": "analyses.tuning",
    "compare": "analyses.tuning",
    "load_tuned": "analyses.tuning",
    "run_panels": "analyses.panels",
    "Panel": "analyses.panels",
    "sweep": "sweeps.dataset",
    "probe": "denoiser.probes",
    "ProbeResult": "denoiser.probes",
    # anywidget only when asked for: the engine stays widget-free
    "LensDashboard": "widgets",
    "TrainingView": "widgets",
    "SweepView": "widgets",
    "DenoiserView": "widgets",
    "lens_and_denoiser": "widgets",
}
# attribute → module: the packages by role, and the short names the README uses (dl.similarity, dl.probes, ...)
_SUBMODULES = {
    "core": "core",
    "adapters": "adapters",
    "analyses": "analyses",
    "denoiser": "denoiser",
    "sweeps": "sweeps",
    "widgets": "widgets",
    "toy": "toy",
    "cli": "cli",
    "magics": "magics",
    "testing": "testing",
    "engine": "core.engine",
    "results": "core.results",
    "memory": "core.memory",
    "models": "core.models",
    "options": "core.options",
    "validate": "core.validate",
    "lens_options": "core.options",
    "run": "core.run",
    "panels": "analyses.panels",
    "similarity": "analyses.similarity",
    "tuning": "analyses.tuning",
    "tracker": "analyses.tracker",
    "exports": "analyses.exports",
    "probes": "denoiser.probes",
    "sweep_report": "sweeps.report",
    "scorers": "sweeps.scorers",
}
__all__ = sorted(_EXPORTS) + ["__version__"]

if TYPE_CHECKING:  # for type checkers and IDEs; at run time the names resolve lazily below
    from .analyses.panels import Panel, run_panels
    from .analyses.tracker import LensTracker
    from .analyses.tuning import Comparison, compare, load_tuned
    from .core.engine import Lens, Preview
    from .core.models import load_pipeline
    from .core.results import LensResult
    from .core.run import LensRun
    from .denoiser.probes import ProbeResult, probe
    from .sweeps.dataset import sweep
    from .widgets import DenoiserView, LensDashboard, SweepView, TrainingView, lens_and_denoiser


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    elif name in _SUBMODULES:
        value = importlib.import_module(f".{_SUBMODULES[name]}", __name__)
    else:
        raise AttributeError(f"module 'difflens_widgets' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS) | set(_SUBMODULES))
