"""The toy model's tokenizer: a real ``CLIPTokenizer`` whose BPE merges are learned on the world's captions.

The toy model goes through exactly the code path of Stable Diffusion, so its tokenizer is a real CLIP BPE tokenizer
(byte-pair merges applied within each word, ``</w>`` marking a word's last piece). Its merges are *learned*, BPE
style (Sennrich et al.): on a corpus of words with counts, repeatedly merge the most frequent adjacent pair of
symbols. The corpus is the world's captions with each word segmented into its designed pieces
(:data:`.language.PIECES`), and a merge never joins two pieces — as CLIP's BPE never merges across a space — so each
word splits exactly where the design says, and the check at the end proves it with the tokenizer itself. (Merges
written by hand compete by rank across words and split words apart: an earlier pilot saw "green" become g/re/e/n.)

Every letter a–z and digit, bare and word-final, is in the vocabulary, so any word a user types (a DreamBooth word
such as "xon") splits into real pieces instead of turning into the unknown token.
"""

from __future__ import annotations

import collections
import string

from transformers import CLIPTokenizer

from . import language

MAX_LENGTH = 24  # the longest caption ("a green triangle to the left of a yellow diamond") is 16 pieces + 2
SPECIAL_TOKENS = ["<|startoftext|>", "<|endoftext|>"]
ALPHABET = string.ascii_lowercase + string.digits


def _segment(word: str, design: dict[str, tuple[str, ...]]) -> list[list[str]]:
    """``word`` as its pieces, each a list of symbols; the word's last symbol carries ``</w>``."""
    pieces = [list(piece) for piece in design.get(word, (word,))]
    pieces[-1][-1] += "</w>"
    return pieces


def learn_merges(word_counts: dict[str, int], design: dict[str, tuple[str, ...]]) -> list[tuple[str, str]]:
    """BPE merges learned on ``word_counts`` (word → frequency), never joining two of a word's designed pieces:
    the most frequent pair inside a piece is merged first (ties broken alphabetically, so the result is the same on
    every machine), until every piece is one symbol. A pair that sits across a piece boundary anywhere in the corpus
    is never merged, since the merge would apply there too."""
    corpus = [(_segment(word, design), count) for word, count in sorted(word_counts.items())]
    merges = []
    while True:
        counts: collections.Counter = collections.Counter()
        crossing = set()
        for pieces, count in corpus:
            for piece in pieces:
                counts.update({pair: count for pair in zip(piece, piece[1:])} if len(piece) > 1 else {})
            crossing.update((p[-1], q[0]) for p, q in zip(pieces, pieces[1:]))
        candidates = [(-n, pair) for pair, n in counts.items() if pair not in crossing]
        if not candidates:
            return merges
        best = min(candidates)[1]
        merges.append(best)
        for pieces, _ in corpus:
            for k, piece in enumerate(pieces):
                merged, i = [], 0
                while i < len(piece):
                    if i + 1 < len(piece) and (piece[i], piece[i + 1]) == best:
                        merged.append(piece[i] + piece[i + 1])
                        i += 2
                    else:
                        merged.append(piece[i])
                        i += 1
                pieces[k] = merged


def caption_word_counts(samples: int = 20_000, seed: int = 0) -> dict[str, int]:
    """How often each word of the language occurs in ``samples`` training captions of the world (the BPE corpus),
    with every word of the vocabulary counted at least once."""
    from .world import World, vocabulary

    world = World(seed)
    counts = collections.Counter({word: 1 for word in vocabulary()})
    for _ in range(samples):
        counts.update(world.sample().caption.split())
    return dict(counts)


def build_tokenizer(
    words: list[str] | None = None, max_length: int = MAX_LENGTH, design: dict[str, tuple[str, ...]] | None = None
) -> CLIPTokenizer:
    """A CLIPTokenizer whose merges are learned on the world's captions (``words``: a plain word list instead, each
    word one piece unless ``design`` splits it), checked to split every word exactly as designed."""
    design = language.PIECES if design is None and words is None else (design or {})
    counts = caption_word_counts() if words is None else {word: 1 for word in words}
    merges = learn_merges(counts, design)
    tokens = list(ALPHABET) + [c + "</w>" for c in ALPHABET] + ["".join(m) for m in merges]
    vocab = {tok: i for i, tok in enumerate(dict.fromkeys(tokens + SPECIAL_TOKENS))}
    tokenizer = CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=max_length)
    for word in counts:
        expected = list(design.get(word, (word,)))
        expected[-1] += "</w>"
        got = tokenizer.convert_ids_to_tokens(tokenizer(word, add_special_tokens=False).input_ids)
        if got != expected:
            raise RuntimeError(f"toy tokenizer split {word!r} into {got}, designed {expected}")
    return tokenizer
