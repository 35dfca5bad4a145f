"""The shapes world's language: its words, the word pieces each is designed to split into, synonyms, and how a
caption is read back into what it names.

A CLIP-style text encoder takes depth to read a prompt for reasons the world's earlier, one-token-per-word language
did not have. Three of them are built in on purpose, each a property of the real CLIP tokenizer and encoder:

1. **Word pieces, crossed with frequency.** CLIP's BPE splits unfamiliar words into pieces (quokka → qu|ok|ka) and
   an encoder must assemble a word from its pieces before the word means anything. Here every colour frequency tier
   holds a one-piece name *and* a name of two or three pieces, and the (equally frequent) shapes hold both kinds
   too, so "rare" and "split" can be told apart: :data:`PIECES` is the design, and the tokenizer's BPE merges are
   learned so that each word splits exactly there (:mod:`.tokenizer`).
2. **Synonyms.** Different words for one meaning ("below" / "under"; "left of" / "to the left of"): the meaning has
   to be computed from the words, not read off one token.
3. **Relations arrive late in a causal encoder.** In "a red circle left of a blue square" the circle's tokens never
   see "left"; only the tokens after the relation (and the end and padding tokens) can carry it forward.

Concept names are plain English (a user types "a red circle left of a blue square"); which words split into
pieces is a design choice of this toy language, stated in the model card, not a claim about English.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# Designed word pieces of every multi-piece word (every other word of the language is one piece). Colours: one
# single-piece and one multi-piece name in every frequency tier (tiers in world.COLOR_TIERS); shapes (all equally
# frequent): four single-piece names, one of two pieces and one of three.
PIECES: dict[str, tuple[str, ...]] = {
    "green": ("g", "re", "en"),  # common colour, 3 pieces
    "yellow": ("yel", "low"),  # uncommon colour, 2 pieces
    "cyan": ("c", "y", "an"),  # rare colour, 3 pieces
    "brown": ("br", "own"),  # very rare colour, 2 pieces
    "triangle": ("tri", "an", "gle"),  # shape, 3 pieces
    "diamond": ("dia", "mond"),  # shape, 2 pieces
}

# Every way the language says a relation ("A <phrase> B" means A stands in that relation to B).
RELATION_PHRASES: dict[str, tuple[str, ...]] = {
    "left of": ("left of", "to the left of"),
    "right of": ("right of", "to the right of"),
    "above": ("above", "on top of"),
    "below": ("below", "under"),
}
FUNCTION_WORDS = ("a", "an", "and")


def pieces(word: str) -> tuple[str, ...]:
    """The designed pieces of ``word`` (itself alone for a one-piece word)."""
    return PIECES.get(word, (word,))


def relation_words() -> set[str]:
    return {w for phrases in RELATION_PHRASES.values() for phrase in phrases for w in phrase.split()}


def vocabulary(colors, shapes) -> list[str]:
    """Every word a caption can contain."""
    return sorted(set(FUNCTION_WORDS) | relation_words() | set(colors) | set(shapes))


def article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def noun_phrase(color: str | None, shape: str) -> str:
    words = f"{color} {shape}" if color else shape
    return f"{article(words)} {words}"


@dataclass(frozen=True)
class ParsedCaption:
    objects: tuple[tuple[str | None, str], ...]  # (color or None, shape)
    relation: str | None  # the canonical relation ("left of", "right of", "above", "below"), whatever the phrase


def caption_parser(colors, shapes):
    """A function that reads a caption of this language into a :class:`ParsedCaption` (ValueError otherwise)."""
    phrase_to_relation = {p: rel for rel, phrases in RELATION_PHRASES.items() for p in phrases}
    links = sorted(["and", *phrase_to_relation], key=len, reverse=True)  # longest phrase first
    obj = rf"(?:an? )?(?:(?P<c{{i}}>{'|'.join(colors)}) )?(?P<s{{i}}>{'|'.join(shapes)})"
    pattern = re.compile("^" + obj.format(i=1) + rf"(?: (?P<link>{'|'.join(links)}) " + obj.format(i=2) + ")?$")

    def parse(caption: str) -> ParsedCaption:
        m = pattern.match(" ".join(caption.strip().lower().split()))
        if not m:
            raise ValueError(
                f"not a shapes-world caption: {caption!r}; expected e.g. 'a red triangle above a blue "
                f"circle' (shapes: {', '.join(shapes)}; colors: {', '.join(colors)}; relations: "
                f"{', '.join(phrase_to_relation)})"
            )
        objects = [(m["c1"], m["s1"])]
        if m["s2"]:
            objects.append((m["c2"], m["s2"]))
        return ParsedCaption(tuple(objects), phrase_to_relation.get(m["link"]))

    return parse
