"""Moved to :mod:`difflens_widgets.toy.studies.report`; the old path keeps working:
``python -m difflens_widgets.toy.report`` still runs it."""

from .studies.report import *  # noqa: F403 (the old import path keeps working)
from .studies.report import main

if __name__ == "__main__":
    main()
