"""Lens during fine-tuning: a small object a training loop calls every N steps.

    tracker = dl.LensTracker("a xon triangle", every=50,
                             pairs=[("a xon triangle", "xon", "a triangle", "triangle")])
    for step in range(steps):
        ...                                   # one optimisation step
        tracker(pipe, step)                   # records at step 0, 50, 100, ... (and when force=True)
    tracker.grid()                            # rows = layers, columns = training steps
    dl.TrainingView(tracker)                  # the same, interactive, with a slider over steps

Each record holds the lens image of every tracked layer (one fixed seed, so only the weights change between
records) and, for every word pair, the cosine similarity per layer (:func:`similarity.token_similarity`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from ..core import validate as options
from ..core.results import labelled_grid

WordPair = tuple[str, str, str, str]  # (prompt_a, word_a, prompt_b, word_b)


@dataclass
class TrackedStep:
    step: int
    images: dict[int, Image.Image]  # layer → lens image
    similarities: dict[str, list[float]] = field(default_factory=dict)  # pair name → cos per tracked layer


def pair_name(pair: WordPair) -> str:
    return f"{pair[1]}~{pair[3]}"


class LensTracker:
    """Records lens images and word-pair similarities of a model while it trains (see the module docstring)."""

    def __init__(
        self,
        prompt: str,
        *,
        layers: options.LayerSpec = None,
        seed: int = 0,
        every: int = 50,
        num_inference_steps: int = 20,
        guidance_scale: float = 7.5,
        pairs: Sequence[WordPair] = (),
    ):
        self.prompt = options.parse_prompts(prompt)[0]
        self.layer_spec = layers
        self.seed = options.parse_seeds(seed)[0]
        self.every = options.check_positive_int("every", every)
        self.num_inference_steps = options.check_steps(num_inference_steps)
        self.guidance_scale = options.check_guidance(guidance_scale)
        self.pairs = [self._check_pair(p) for p in pairs]
        self.history: list[TrackedStep] = []
        self.layers: list[int] = []
        self._listeners: list[Callable[[TrackedStep], None]] = []

    @staticmethod
    def _check_pair(pair) -> WordPair:
        if not (isinstance(pair, (tuple, list)) and len(pair) == 4 and all(isinstance(x, str) for x in pair)):
            raise ValueError(f"a word pair is (prompt_a, word_a, prompt_b, word_b), four strings; got {pair!r}")
        return tuple(pair)

    def on_record(self, listener: Callable[[TrackedStep], None]) -> None:
        """Call ``listener(record)`` after every record (the TrainingView uses it to update live)."""
        self._listeners.append(listener)

    @property
    def steps(self) -> list[int]:
        return [r.step for r in self.history]

    def __call__(self, pipe, step: int, *, force: bool = False) -> bool:
        """Record at ``step`` if it is a multiple of ``every`` (or ``force``); True when a record was made.

        The models are switched to eval mode for the record and back to their previous mode afterwards, and no
        gradient is kept, so the call can sit inside a training loop.
        """
        if not force and step % self.every != 0:
            return False
        from ..core.engine import Lens
        from .similarity import token_similarity

        modules = [m for m in pipe.components.values() if hasattr(m, "training") and hasattr(m, "eval")]
        modes = [m.training for m in modules]
        try:
            for m in modules:
                m.eval()
            lens = Lens(pipe, cache_size=1)
            result = lens.run(
                self.prompt,
                layers=self.layer_spec,
                seeds=(self.seed,),
                num_inference_steps=self.num_inference_steps,
                guidance_scale=self.guidance_scale,
                use_cache=False,
            )
            sims = {
                pair_name(p): np.round(
                    token_similarity(lens, *p, layers=result.layers).values.astype(float), 6
                ).tolist()
                for p in self.pairs
            }
        finally:
            for m, mode in zip(modules, modes):
                m.train(mode)
        self.layers = result.layers
        record = TrackedStep(int(step), {l: result.image(l) for l in result.layers}, sims)
        self.history = [r for r in self.history if r.step != record.step] + [record]
        self.history.sort(key=lambda r: r.step)
        for listener in self._listeners:
            listener(record)
        return True

    def similarity_table(self, name: str | None = None) -> np.ndarray:
        """cos per (training step, layer) of one word pair (default: the first), shape (records × layers)."""
        if not self.pairs:
            raise ValueError("this tracker follows no word pair; pass pairs=[(prompt_a, word_a, prompt_b, word_b)]")
        name = name or pair_name(self.pairs[0])
        known = [pair_name(p) for p in self.pairs]
        if name not in known:
            raise KeyError(f"no pair named {name!r}; pairs: {known}")
        return np.array([r.similarities[name] for r in self.history])

    def grid(self) -> Image.Image:
        """Rows = layers, columns = recorded training steps, labelled."""
        if not self.history:
            raise ValueError("nothing recorded yet: call the tracker from the training loop first")
        rows = [[record.images[layer] for record in self.history] for layer in self.layers]
        return labelled_grid(
            rows,
            [f"L{l}" for l in self.layers],
            [f"step {r.step}" for r in self.history],
            target=96,
            left=40,
            title=self.prompt,
        )

    def save(self, folder: str | Path) -> Path:
        """``step{S:05d}_layer{L:02d}.png`` per image, ``evolution.png`` (the grid) and ``tracker.json``."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        for record in self.history:
            for layer, img in record.images.items():
                img.save(folder / f"step{record.step:05d}_layer{layer:02d}.png")
        if self.history:
            self.grid().save(folder / "evolution.png")
        meta = {
            "prompt": self.prompt,
            "layers": self.layers,
            "seed": self.seed,
            "every": self.every,
            "num_inference_steps": self.num_inference_steps,
            "guidance_scale": self.guidance_scale,
            "pairs": [list(p) for p in self.pairs],
            "records": [{"step": r.step, "similarities": r.similarities} for r in self.history],
        }
        (folder / "tracker.json").write_text(json.dumps(meta, indent=2))
        return folder
