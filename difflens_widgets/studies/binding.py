"""Where a text encoder binds a relation to its objects: at which layer do an object's words know where it goes?

    python -m difflens_widgets.studies.binding toy toy-t5          # both embedded models, one table each

To draw "a red circle left of a blue square", a denoiser must put red on the left. Its cross-attention reads the
text encoder's tokens; an image patch on the left can find "red" only if red's tokens say "I go first along the
axis" — the conjunction of the object's place in the sentence and the relation word. Neither alone is enough (in
"a blue square right of a red circle" red is named second and still goes left), so a linear probe of either feature
alone sits at or below chance: below chance when the encoder holds both apart (the exclusive-or a linear probe
cannot read), near 1 once a layer has fused them (Wang, Fan & Pan, CVPR 2026: a bidirectional T5 fuses relation
and object into one token). A causal encoder (CLIP) cannot do it for the first-named object at all: its tokens
never see the relation word.

The probe: for two-object relation prompts over the world's colours, shapes and relations, each object's state at
each encoder layer (the mean of its colour word's and of its shape word's token states, side by side), labelled
with the side it goes to (left/top or right/bottom); a logistic regression's held-out accuracy per layer
(:func:`~difflens_widgets.denoiser.probes.linear_probe`). Layer l is the residual stream after l blocks (the
encoder's final norm aside: the probe standardises its features).
"""

from __future__ import annotations

import argparse
import itertools
import random

import numpy as np
import torch

from ..denoiser.probes import linear_probe
from ..toy.world import COLORS, RELATIONS, SHAPES

GOES_FIRST = {"left of": True, "above": True, "right of": False, "below": False}  # first named goes left / on top


def relation_prompts(count: int = 1200, seed: int = 0) -> list[tuple[str, bool]]:
    """``count`` prompts "a C1 S1 REL a C2 S2" (different colours and shapes), each with whether its first-named
    object goes first along the relation's axis (left or top): drawn without repeats, the relations balanced."""
    every = [
        (f"a {c1} {s1} {relation} a {c2} {s2}", GOES_FIRST[relation])
        for (c1, c2), (s1, s2), relation in itertools.product(
            itertools.permutations(COLORS, 2), itertools.permutations(SHAPES, 2), RELATIONS
        )
    ]
    if not 10 <= count <= len(every):
        raise ValueError(f"count must be between 10 and {len(every)} (the distinct prompts), got {count}")
    return random.Random(seed).sample(every, count)


def object_states(text_encoder, tokenizer, prompts: list[str], batch: int = 256) -> np.ndarray:
    """(prompts, 2 objects, layers, 2 × width): per object and encoder layer, the mean state of its colour word's
    tokens beside that of its shape word's (word pieces averaged), from one pass of the encoder per batch."""
    out = []
    device = next(text_encoder.parameters()).device
    for start in range(0, len(prompts), batch):
        chunk = prompts[start : start + batch]
        tokens = tokenizer(chunk, padding=True, return_tensors="pt")
        with torch.no_grad():
            hidden = text_encoder(
                input_ids=tokens.input_ids.to(device),
                attention_mask=tokens.attention_mask.to(device),
                output_hidden_states=True,
            ).hidden_states[1:]  # after each block
        states = torch.stack(hidden, dim=1).float().cpu()  # (batch, layers, tokens, width)
        for row, prompt in enumerate(chunk):
            words = np.array([-1 if w is None else w for w in tokens.word_ids(row)])
            last = len(prompt.split()) - 1  # words: a C1 S1 REL... a C2 S2
            objects = [(1, 2), (last - 1, last)]
            out.append(
                torch.stack(
                    [
                        torch.cat([states[row, :, words == word].mean(dim=1) for word in pair], dim=-1)
                        for pair in objects
                    ]
                )
            )
    return torch.stack(out).numpy()


def binding_probe(text_encoder, tokenizer, count: int = 1200, seed: int = 0) -> dict:
    """Per encoder layer, the held-out accuracy of linear probes on an object's words: ``side`` — does it go first
    along the relation's axis (the conjunction the denoiser needs) — beside its two parts, ``place`` (named first?)
    and ``relation`` (does the relation word send the first-named object first?); ``chance`` the majority share of
    the held-out labels (0.5: every label is balanced)."""
    prompts = relation_prompts(count, seed)
    states = object_states(text_encoder, tokenizer, [p for p, _ in prompts])
    features = states.reshape(-1, states.shape[2], states.shape[3])  # (objects, layers, features)
    relation = np.repeat([first for _, first in prompts], 2)
    place = np.tile([True, False], len(prompts))
    labels = {"side": relation == place, "place": place, "relation": relation}  # the second object goes opposite
    accuracy, chance = {}, 0.5
    for name, label in labels.items():
        scores = [linear_probe(features[:, layer], label, seed=seed) for layer in range(features.shape[1])]
        accuracy[name] = [round(acc, 3) for acc, _ in scores]
        chance = max(chance, scores[0][1])
    return {"layers": list(range(1, features.shape[1] + 1)), **accuracy, "chance": round(chance, 3),
            "objects": len(place)}  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="+", help="embedded model names (toy, toy-t5) or pipeline folders")
    parser.add_argument("--prompts", type=int, default=1200)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    from ..core.models import load_pipeline

    for name in args.models:
        pipe = load_pipeline(name, dtype=torch.float32)
        result = binding_probe(pipe.text_encoder, pipe.tokenizer, args.prompts, args.seed)
        print(f"\n{name}: what an object's words know, per encoder layer ({result['objects']} objects, "
              f"held-out 30 %, chance {result['chance']:.2f})")  # fmt: skip
        print("| probe | " + " | ".join(map(str, result["layers"])) + " |")
        print("|---|" + "---|" * len(result["layers"]))
        for probe, what in (("place", "named first"), ("relation", "relation sends the first first"),
                            ("side", "goes first (both at once)")):  # fmt: skip
            print(f"| {what} | " + " | ".join(f"{a:.2f}" for a in result[probe]) + " |")


if __name__ == "__main__":
    main()
