"""``%load_ext difflens``: this module only forwards to :mod:`difflens_widgets.magics`, imported lazily so that
loading the extension does not import torch."""


def load_ipython_extension(ipython) -> None:
    from difflens_widgets.magics import load_ipython_extension as load

    load(ipython)


def unload_ipython_extension(ipython) -> None:
    from difflens_widgets.magics import unload_ipython_extension as unload

    unload(ipython)
