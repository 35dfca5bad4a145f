"""Sweeps: many prompts × layers × seeds into a resumable dataset (:mod:`.dataset`), the report drawn from that
dataset alone (:mod:`.report`), and the scorers that judge each image (:mod:`.scorers`)."""

from .dataset import (
    PromptWorker,
    SweepSpec,
    SweepSummary,
    load_manifest,
    load_rows,
    normalise_prompts,
    prepare,
    read_prompts,
    sweep,
)

__all__ = [
    "PromptWorker",
    "SweepSpec",
    "SweepSummary",
    "load_manifest",
    "load_rows",
    "normalise_prompts",
    "prepare",
    "read_prompts",
    "sweep",
]
