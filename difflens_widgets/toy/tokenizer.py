"""A CLIP tokenizer whose vocabulary is the shapes world's words, one token per word.

The toy model must go through exactly the same code path as Stable Diffusion, so its tokenizer is a real
``CLIPTokenizer``. Its merges are *learned* with the `tokenizers` BPE trainer rather than written by hand:
hand-made word-by-word merges compete by rank across words and split words apart (the pilot saw "green" become
g/re/e/n).
"""

from __future__ import annotations

import json

from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import CLIPTokenizer

from .world import vocabulary

MAX_LENGTH = 16
SPECIAL_TOKENS = ["<|startoftext|>", "<|endoftext|>"]


def build_tokenizer(words: list[str] | None = None, max_length: int = MAX_LENGTH) -> CLIPTokenizer:
    """A CLIPTokenizer that maps every word of ``words`` (default: the world's vocabulary) to one token."""
    words = sorted(words or vocabulary())
    alphabet = sorted({ch for w in words for ch in w})
    bpe = Tokenizer(models.BPE(end_of_word_suffix="</w>"))
    bpe.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.BpeTrainer(vocab_size=100_000, min_frequency=1, end_of_word_suffix="</w>",
                                  initial_alphabet=alphabet, show_progress=False)
    bpe.train_from_iterator([" ".join(words)] * 4, trainer)
    spec = json.loads(bpe.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in spec["merges"]]
    # CLIP's BPE starts from single characters with and without the end-of-word suffix.
    tokens = alphabet + [c + "</w>" for c in alphabet] + ["".join(m) for m in merges]
    vocab = {tok: i for i, tok in enumerate(dict.fromkeys(tokens + SPECIAL_TOKENS))}
    tokenizer = CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=max_length)
    for word in words:
        ids = tokenizer(word, add_special_tokens=False).input_ids
        if len(ids) != 1:
            raise RuntimeError(f"toy tokenizer split {word!r} into {tokenizer.convert_ids_to_tokens(ids)}")
    return tokenizer
