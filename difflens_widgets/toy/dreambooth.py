"""Moved to :mod:`difflens_widgets.toy.studies.dreambooth`; the old path keeps working:
``python -m difflens_widgets.toy.dreambooth`` still runs it."""

from .studies.dreambooth import *  # noqa: F403 (the old import path keeps working)
from .studies.dreambooth import main

if __name__ == "__main__":
    main()
