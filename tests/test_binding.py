"""The binding probe: where a text encoder's object words learn which side they go to. A hand-built encoder whose
second layer writes the answer into every word must score ~1 there and chance on its bag-of-words first layer."""

from types import SimpleNamespace

import pytest
import torch

from difflens_widgets.studies import binding
from difflens_widgets.toy.tokenizer import build_tokenizer
from difflens_widgets.toy.world import COLORS, SHAPES

pytest.importorskip("sklearn")


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer()


class FusingEncoder(torch.nn.Module):
    """Layer 1: a random embedding per token (a bag of words, with no place in the sentence); layer 2: layer 1 plus,
    in every token, +1 or -1 on one extra axis for "this word's object goes first along the axis" — the conjunction
    of its place (before or after the relation word) and the relation word, computed here by hand."""

    def __init__(self, tokenizer, width: int = 16):
        super().__init__()
        self.embedding = torch.nn.Embedding(len(tokenizer), width)
        self.sends_first = {tokenizer.convert_tokens_to_ids(w + "</w>"): w in ("left", "above") for w in
                            ("left", "right", "above", "below")}  # fmt: skip

    def forward(self, input_ids, attention_mask, output_hidden_states):
        bag = self.embedding(input_ids)
        side = torch.zeros(input_ids.shape)
        for row, ids in enumerate(input_ids.tolist()):
            at, first = next((i, self.sends_first[t]) for i, t in enumerate(ids) if t in self.sends_first)
            side[row] = torch.tensor([1.0 if (i < at) == first else -1.0 for i in range(len(ids))])
        return SimpleNamespace(hidden_states=(bag, bag, bag + 3 * side[..., None]))


def test_a_fused_layer_is_read_and_a_bag_of_words_is_not(tokenizer):
    torch.manual_seed(0)
    result = binding.binding_probe(FusingEncoder(tokenizer), tokenizer, count=400)
    assert result["layers"] == [1, 2] and result["objects"] == 800 and result["chance"] <= 0.55
    assert result["side"][0] < 0.62 and result["side"][1] > 0.95  # the bag of words cannot say; the fused layer can
    assert result["relation"][0] < 0.62 and result["place"][0] < 0.62  # a bag of words knows neither part


def test_relation_prompts_are_distinct_and_balanced():
    prompts = binding.relation_prompts(400, seed=1)
    assert len({p for p, _ in prompts}) == 400
    assert 0.4 < sum(first for _, first in prompts) / 400 < 0.6
    words = prompts[0][0].split()
    assert words[1] in COLORS and words[2] in SHAPES and words[-2] in COLORS and words[-1] in SHAPES
    assert binding.relation_prompts(400, seed=1) == prompts  # seeded


def test_a_count_outside_the_prompts_there_are_is_refused():
    with pytest.raises(ValueError, match="count must be between 10 and 8640"):
        binding.relation_prompts(5)
