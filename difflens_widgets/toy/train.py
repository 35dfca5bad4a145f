"""Moved to :mod:`difflens_widgets.toy.studies.train`; the old path keeps working:
``python -m difflens_widgets.toy.train`` still runs it."""

from .studies.train import *  # noqa: F403 (the old import path keeps working)
from .studies.train import main

if __name__ == "__main__":
    main()
