"""Shared fixtures: tiny random pipelines built from configs, and counters of model calls. Nothing downloads."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DIFFUSERS_OFFLINE", "1")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # Under `pytest -n 2` each worker has a core: one torch thread per worker, and the same for the kernels and
    # subprocesses it starts (they inherit the environment). Two workers of two spinning OpenMP threads each on two
    # cores made a notebook's fine-tuning 8x slower than alone.
    os.environ["OMP_NUM_THREADS"] = "1"

import pytest
import torch

if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)

from difflens_widgets.testing import tiny_stable_diffusion


def pytest_collection_modifyitems(config, items):
    """The slow tests (notebooks, browsers, Ray, training) first: under `pytest -n 2` the long ones then start early
    and the short ones fill the gaps on both workers, instead of one long test finishing alone at the end."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    """Under `-n 2 --dist loadgroup` a worker names each `xdist_group` test `nodeid@group`, and that suffix is what
    keeps one Chromium and one Jupyter server per group on one worker. pytest 9.2 made xdist's renaming a silent
    no-op (pytest-dev/pytest-xdist#1386: the groups were spread over both workers, each starting its own browser),
    so a grouped test that lost its suffix fails at once, saying why, instead of running scattered."""
    in_loadgroup = getattr(item.config.option, "loadgroup", False)  # set on the workers of a loadgroup run only
    if in_loadgroup and item.get_closest_marker("xdist_group") and "@" not in item.nodeid:
        pytest.fail(
            f"--dist loadgroup does not group this test with pytest {pytest.__version__} and this pytest-xdist "
            "(pytest-dev/pytest-xdist#1386); install the pytest that pyproject.toml's test extra pins",
            pytrace=False,
        )


@pytest.fixture(scope="session")
def tiny_pipe():
    return tiny_stable_diffusion(seed=0, num_layers=4)


class CallCounter:
    """Counts forward calls of a module and keeps the positional/keyword inputs of each call."""

    def __init__(self, module: torch.nn.Module):
        self.calls = []
        self.handle = module.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, module, args, kwargs):
        self.calls.append((args, kwargs))

    def __len__(self):
        return len(self.calls)

    def remove(self):
        self.handle.remove()


@pytest.fixture
def count_calls():
    counters = []

    def make(module):
        counter = CallCounter(module)
        counters.append(counter)
        return counter

    yield make
    for counter in counters:
        counter.remove()
