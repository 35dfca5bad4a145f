"""Scorers for sweeps: each turns one lens image and its prompt row into columns of the sweep's rows.

- ``annotator``: the toy world's annotator (:func:`toy.annotate.judge`): ``objects``, ``colors``, ``both`` and, for
  relation captions, ``relation`` (booleans; empty for prompts that are not shapes-world captions).
- ``clip``: CLIP similarity, the paper's automatic annotation: ``clip_prompt`` = cos(image, prompt) and, when the
  row names its objects, ``clip_objects`` = the smallest cos(image, object phrase) (every object must be there).
  The model comes from the local Hugging Face cache (``clip:<id or folder>``, default
  ``openai/clip-vit-base-patch32``), never from the network unless the sweep allows downloads. Missing weights are
  reported once and the sweep goes on without these columns.
- any callable ``scorer(image, prompt_row) -> {column: value}``.
"""

from __future__ import annotations

from collections.abc import Callable

DEFAULT_CLIP = "openai/clip-vit-base-patch32"
Scorer = Callable[[object, dict], dict]


def annotator_scorer(image, row: dict) -> dict:
    from ..toy.annotate import judge, parse_caption

    try:
        parse_caption(row["prompt"])
    except ValueError:
        return {}
    checks = judge(image, row["prompt"])
    return {
        "objects": checks["objects"],
        "colors": checks["colors"],
        "both": checks["both"],
        "relation": checks.get("relation"),
    }


class ClipScorer:
    """cos(image, text) with a CLIP model: ``ClipScorer(model_id)``, or ``ClipScorer(model=..., processor=...)``
    for a model already built (tests use a tiny random one)."""

    def __init__(
        self, name: str = DEFAULT_CLIP, *, model=None, processor=None, download: bool = False, device: str | None = None
    ):
        import torch

        if model is None:
            from transformers import CLIPModel, CLIPProcessor

            model = CLIPModel.from_pretrained(name, local_files_only=not download)
            processor = CLIPProcessor.from_pretrained(name, local_files_only=not download)
        self.model, self.processor = model.eval(), processor
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model.to(self.device)

    def similarities(self, image, texts: list[str]) -> list[float]:
        import torch

        inputs = self.processor(text=texts, images=image, return_tensors="pt", padding=True, truncation=True)
        inputs = {k: v.to(self.device) for k, v in inputs.items()}
        with torch.no_grad():
            image_features = self.model.get_image_features(pixel_values=inputs["pixel_values"])
            text_features = self.model.get_text_features(
                input_ids=inputs["input_ids"], attention_mask=inputs.get("attention_mask")
            )
        image_features = _features(image_features)
        text_features = _features(text_features)
        image_features = image_features / image_features.norm(dim=-1, keepdim=True)
        text_features = text_features / text_features.norm(dim=-1, keepdim=True)
        return (text_features @ image_features[0]).float().cpu().tolist()

    def __call__(self, image, row: dict) -> dict:
        objects = list(row.get("objects") or [])
        sims = self.similarities(image, [row["prompt"], *objects])
        out = {"clip_prompt": round(sims[0], 5)}
        if objects:
            out["clip_objects"] = round(min(sims[1:]), 5)
        return out


def _features(output):
    """transformers 5 returns a model output from get_*_features; 4.x a tensor."""
    return output if hasattr(output, "norm") else output.pooler_output


SCORER_NAMES = "annotator, clip, clip:<model id or folder>, auto, none"


def check_scorer_names(specs: list) -> None:
    """Refuse an unknown scorer name before anything runs or is written (making a scorer may load a model)."""
    for spec in specs:
        name = str(spec)
        if not callable(spec) and name not in ("auto", "none", "annotator", "clip") and not name.startswith("clip:"):
            raise ValueError(f"unknown scorer {name!r}: use {SCORER_NAMES}, or a function (image, row) -> dict")


def make_scorers(specs: list, pipe, download: bool = False) -> tuple[list[Scorer], list[str]]:
    """Scorers from their names (or callables); the notes say which could not be made and why."""
    from ..core.models import is_toy

    scorers, notes = [], []
    for spec in specs:
        if callable(spec):
            scorers.append(spec)
            continue
        name = str(spec)
        if name == "auto":
            name = "annotator" if is_toy(pipe) else "clip"
        if name == "none":
            continue
        if name == "annotator":
            scorers.append(annotator_scorer)
        elif name == "clip" or name.startswith("clip:"):
            model_id = name.partition(":")[2] or DEFAULT_CLIP
            try:
                scorers.append(ClipScorer(model_id, download=download))
            except (OSError, ValueError) as err:
                notes.append(
                    f"CLIP scorer {model_id!r} unavailable ({type(err).__name__}: {str(err).splitlines()[0]}); "
                    "the sweep goes on without clip_* scores — put the model in the Hugging Face cache, or "
                    "pass --scorer clip:<folder>, or allow --download"
                )
        else:
            check_scorer_names([name])
    return scorers, notes
