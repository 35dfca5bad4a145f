"""Moved to :mod:`difflens_widgets.toy.studies.probe_report`; the old path keeps working:
``python -m difflens_widgets.toy.probe_report`` still runs it."""

from .studies.probe_report import *  # noqa: F403 (the old import path keeps working)
from .studies.probe_report import main

if __name__ == "__main__":
    main()
