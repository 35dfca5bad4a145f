"""Decoder-only language models as text encoders (the text side of FLUX.2, Z-Image, Qwen-Image, Lumina 2, ...):
their blocks and final norm are found, and one pass returns every layer before the final norm, as for CLIP and T5.
Tiny random models from configs: nothing downloads."""

from types import SimpleNamespace

import pytest
import torch
from transformers import Qwen3Config, Qwen3ForCausalLM, Qwen3Model

from difflens_widgets.adapters import encoders as enc
from difflens_widgets.toy.tokenizer import build_tokenizer

BLOCKS = 3


def tiny_qwen3(model_class=Qwen3Model):
    torch.manual_seed(0)
    config = Qwen3Config(
        vocab_size=160,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=BLOCKS,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        max_position_embeddings=64,
    )
    return model_class(config).eval()


@pytest.mark.parametrize("model_class", [Qwen3Model, Qwen3ForCausalLM])
def test_blocks_and_final_norm_of_a_language_model(model_class):
    model = tiny_qwen3(model_class)
    base = model if model_class is Qwen3Model else model.model
    assert enc.inner_model(model) is base
    assert enc.final_norm(model) is base.norm and enc.num_blocks(model) == BLOCKS
    assert list(enc.blocks(model)) == list(base.layers)


@pytest.mark.parametrize("model_class", [Qwen3Model, Qwen3ForCausalLM])
def test_one_pass_keeps_every_layer_before_the_final_norm(model_class):
    model = tiny_qwen3(model_class)
    pipe = SimpleNamespace(text_encoder=model, tokenizer=build_tokenizer(), device=torch.device("cpu"))
    spec = enc.TextEncoderSpec("text_encoder", "tokenizer", "llm", max_length=12, mask_to_encoder=True)
    run = enc.run_encoder(pipe, spec, ["a red circle left of a blue square", ""])
    assert len(run.hidden) == BLOCKS + 1 and run.hidden[0].shape == (2, 12, 32)
    base = model if model_class is Qwen3Model else model.model
    with torch.no_grad():
        reference = base(run.ids, attention_mask=run.mask, output_hidden_states=True)
    for mine, theirs in zip(run.hidden[:-1], reference.hidden_states[:-1]):
        torch.testing.assert_close(mine, theirs)
    # the last state is kept before the norm: the norm of it is the model's own output
    torch.testing.assert_close(enc.final_norm(model)(run.hidden[-1]), reference.last_hidden_state)
    assert not torch.allclose(run.hidden[-1], reference.last_hidden_state)


def test_a_skipped_block_of_a_language_model_passes_its_input_on():
    model = tiny_qwen3()
    pipe = SimpleNamespace(text_encoder=model, tokenizer=build_tokenizer(), device=torch.device("cpu"))
    spec = enc.TextEncoderSpec("text_encoder", "tokenizer", "llm", max_length=12, mask_to_encoder=True)
    run = enc.run_encoder(pipe, spec, ["a red circle", ""], skip=(2,), skip_rows=1)
    torch.testing.assert_close(run.hidden[2][0], run.hidden[1][0])  # the prompt's row: block 2 bypassed
    assert not torch.allclose(run.hidden[2][1], run.hidden[1][1])  # the empty prompt keeps the whole model


def test_a_module_without_blocks_and_norm_is_refused_by_name():
    with pytest.raises(ValueError, match="Linear has no final norm.*decoder-only language model"):
        enc.inner_model(torch.nn.Linear(2, 2))
