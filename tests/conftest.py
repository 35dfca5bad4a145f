"""Shared fixtures: tiny random pipelines built from configs, and counters of model calls. Nothing downloads."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DIFFUSERS_OFFLINE", "1")

import pytest
import torch

from difflens_widgets.testing import tiny_stable_diffusion


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
