"""Moved to :mod:`difflens_widgets.toy.studies.handcheck`; the old path keeps working:
``python -m difflens_widgets.toy.handcheck`` still runs it."""

from .studies.handcheck import *  # noqa: F403 (the old import path keeps working)
from .studies.handcheck import main

if __name__ == "__main__":
    main()
