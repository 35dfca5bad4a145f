"""TrainingView: the lens during fine-tuning, as a widget (layer × training-step grid, a slider over steps, and the
word-pair similarity per layer and step). Fed by a :class:`~difflens_widgets.tracker.LensTracker`; it updates live
when the tracker records from a training loop running in the same kernel."""

from __future__ import annotations

import traitlets as t

from ..analyses.tracker import LensTracker
from .assets import BundledWidget, png_bytes


class TrainingView(BundledWidget):
    """``TrainingView(tracker)``: shows what ``tracker`` recorded so far, and every later record."""

    view = t.Unicode("training").tag(sync=True)  # tells the shared front-end bundle which view to draw
    prompt = t.Unicode("").tag(sync=True)
    steps = t.List(t.Int()).tag(sync=True)
    layers = t.List(t.Int()).tag(sync=True)
    frames = t.List().tag(sync=True)  # {"step", "layer", "png": bytes}
    similarity = t.Dict().tag(sync=True)  # pair name → {"steps", "layers", "values": layers × steps}
    selected_step = t.Int(0).tag(sync=True)

    def __init__(self, tracker: LensTracker, **kwargs):
        if not isinstance(tracker, LensTracker):
            raise TypeError(f"TrainingView needs a LensTracker, not {type(tracker).__name__}")
        super().__init__(**kwargs)
        self.tracker = tracker
        self.prompt = tracker.prompt
        self._frames: list[dict] = []
        for record in tracker.history:
            self._frames += self._frames_of(record)
        self._refresh()
        tracker.on_record(self._on_record)

    @staticmethod
    def _frames_of(record) -> list[dict]:
        return [{"step": record.step, "layer": l, "png": png_bytes(img)} for l, img in sorted(record.images.items())]

    def _on_record(self, record) -> None:
        self._frames = [f for f in self._frames if f["step"] != record.step] + self._frames_of(record)
        self._refresh()

    def _refresh(self) -> None:
        tracker = self.tracker
        self.steps, self.layers = tracker.steps, list(tracker.layers)
        self.frames = list(self._frames)
        self.similarity = {
            name: {
                "steps": tracker.steps,
                "layers": list(tracker.layers),
                "values": tracker.similarity_table(name).T.round(4).tolist(),
            }
            for name in (r for r in (tracker.history[-1].similarities if tracker.history else {}))
        }
        if tracker.steps:
            self.selected_step = tracker.steps[-1]
