import torch
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from difflens_widgets.adapters.stable_diffusion import clip_final_norm


def test_final_norm_found_in_both_module_layouts():
    config = CLIPTextConfig(
        vocab_size=50,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=8,
        projection_dim=8,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
    )
    model = CLIPTextModel(config)  # recent transformers 5: final_layer_norm on the model; earlier: text_model
    flat = getattr(model, "text_model", model)  # the module that holds final_layer_norm directly
    nested = CLIPTextModelWithProjection(config)  # text_model.final_layer_norm (the transformers 4 layout too)
    assert isinstance(clip_final_norm(model), torch.nn.LayerNorm)
    assert clip_final_norm(flat) is flat.final_layer_norm
    assert clip_final_norm(nested) is nested.text_model.final_layer_norm

    class Legacy(torch.nn.Module):  # the transformers 4 CLIPTextModel layout
        def __init__(self):
            super().__init__()
            self.text_model = flat

    assert clip_final_norm(Legacy()) is clip_final_norm(flat)
