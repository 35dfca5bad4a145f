"""How big each family's text encoder and denoiser are: parameters counted on models built on the ``meta`` device
(no weight is allocated or downloaded) from the published architectures, and the bytes they take in bf16 and fp32.

    python benchmarks/family_sizes.py             # a Markdown table (the README's)

Denoisers: diffusers' default configuration where it is the published model's (FLUX.1, FLUX.2 [dev], Chroma,
Qwen-Image, Z-Image, Lumina 2, Sana 1600M; their counts match the model cards), else the published config.json's
architecture written out below. Encoders: the published config.json's architecture of the class the pipeline loads
(a ``...ForCausalLM`` or vision-language model counts its language-model head and vision tower: they are loaded,
if never run). Printed, never asserted.
"""

from __future__ import annotations

import argparse
import warnings

import torch

GB = 1e9

# text encoders: (transformers class, config class, config) as published
QWEN3_4B = (
    "Qwen3ForCausalLM",
    "Qwen3Config",
    dict(
        vocab_size=151936,
        hidden_size=2560,
        num_hidden_layers=36,
        num_attention_heads=32,
        num_key_value_heads=8,
        head_dim=128,
        intermediate_size=9728,
        tie_word_embeddings=True,
    ),
)
QWEN3_8B = (
    "Qwen3ForCausalLM",
    "Qwen3Config",
    dict(
        vocab_size=151936,
        hidden_size=4096,
        num_hidden_layers=36,
        num_attention_heads=32,
        num_key_value_heads=8,
        head_dim=128,
        intermediate_size=12288,
        tie_word_embeddings=False,
    ),
)
MISTRAL_SMALL_3_1 = (
    "Mistral3ForConditionalGeneration",
    "Mistral3Config",
    dict(
        text_config=dict(
            model_type="mistral",
            vocab_size=131072,
            hidden_size=5120,
            num_hidden_layers=40,
            num_attention_heads=32,
            num_key_value_heads=8,
            head_dim=128,
            intermediate_size=32768,
        ),
        vision_config=dict(
            model_type="pixtral",
            hidden_size=1024,
            num_hidden_layers=24,
            num_attention_heads=16,
            intermediate_size=4096,
            patch_size=14,
            image_size=1540,
        ),
    ),
)
QWEN2_5_VL_7B = (
    "Qwen2_5_VLForConditionalGeneration",
    "Qwen2_5_VLConfig",
    dict(
        text_config=dict(
            vocab_size=152064,
            hidden_size=3584,
            num_hidden_layers=28,
            num_attention_heads=28,
            num_key_value_heads=4,
            intermediate_size=18944,
        ),
        vision_config=dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=3584),
    ),
)
GEMMA2_2B = (
    "Gemma2Model",
    "Gemma2Config",
    dict(
        vocab_size=256000,
        hidden_size=2304,
        num_hidden_layers=26,
        num_attention_heads=8,
        num_key_value_heads=4,
        head_dim=256,
        intermediate_size=9216,
    ),
)
GLM4_9B = (
    "GlmModel",
    "GlmConfig",
    dict(
        vocab_size=151552,
        hidden_size=4096,
        num_hidden_layers=40,
        num_attention_heads=32,
        num_key_value_heads=2,
        head_dim=128,
        intermediate_size=13696,
    ),
)
LLAMA3_1_8B = (
    "LlamaForCausalLM",
    "LlamaConfig",
    dict(
        vocab_size=128256,
        hidden_size=4096,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        intermediate_size=14336,
    ),
)
T5_XXL = (
    "T5EncoderModel",
    "T5Config",
    dict(
        vocab_size=32128, d_model=4096, d_ff=10240, num_layers=24, num_heads=64, d_kv=64, feed_forward_proj="gated-gelu"
    ),
)
CLIP_L = (
    "CLIPTextModelWithProjection",
    "CLIPTextConfig",
    dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12, projection_dim=768),
)
CLIP_G = (
    "CLIPTextModelWithProjection",
    "CLIPTextConfig",
    dict(
        hidden_size=1280,
        intermediate_size=5120,
        num_hidden_layers=32,
        num_attention_heads=20,
        projection_dim=1280,
        hidden_act="gelu",
    ),
)

# denoisers whose diffusers default is not the published architecture: (class, config), from config.json
COGVIEW4_6B = (
    "CogView4Transformer2DModel",
    dict(
        patch_size=2,
        in_channels=16,
        out_channels=16,
        num_layers=28,
        attention_head_dim=128,
        num_attention_heads=32,
        text_embed_dim=4096,
        time_embed_dim=512,
        condition_dim=256,
        pos_embed_max_size=128,
        sample_size=128,
    ),
)
HIDREAM_I1 = (
    "HiDreamImageTransformer2DModel",
    dict(
        patch_size=2,
        in_channels=16,
        out_channels=16,
        num_layers=16,
        num_single_layers=32,
        attention_head_dim=128,
        num_attention_heads=20,
        caption_channels=[4096, 4096],
        text_emb_dim=2048,
        num_routed_experts=4,
        num_activated_experts=2,
        axes_dims_rope=(64, 32, 32),
        max_resolution=(128, 128),
        llama_layers=list(range(32)) + [31] * 16,
    ),
)

FAMILIES = [  # family, pipeline's model, text encoders (lensed first), denoiser (class, config or None: default)
    ("FLUX.1 [dev]", "black-forest-labs/FLUX.1-dev", [T5_XXL, CLIP_L], ("FluxTransformer2DModel", None)),
    ("Chroma", "lodestones/Chroma1-HD", [T5_XXL], ("ChromaTransformer2DModel", None)),
    ("FLUX.2 [dev]", "black-forest-labs/FLUX.2-dev", [MISTRAL_SMALL_3_1], ("Flux2Transformer2DModel", None)),
    ("FLUX.2 [klein] 4B", "black-forest-labs/FLUX.2-klein-4B", [QWEN3_4B], None),
    ("FLUX.2 [klein] 9B", "black-forest-labs/FLUX.2-klein-9B", [QWEN3_8B], None),
    ("Z-Image", "Tongyi-MAI/Z-Image-Turbo", [QWEN3_4B], ("ZImageTransformer2DModel", None)),
    ("Qwen-Image", "Qwen/Qwen-Image", [QWEN2_5_VL_7B], ("QwenImageTransformer2DModel", None)),
    ("Lumina 2", "Alpha-VLLM/Lumina-Image-2.0", [GEMMA2_2B], ("Lumina2Transformer2DModel", None)),
    ("Sana 1600M", "Efficient-Large-Model/Sana_1600M_1024px_diffusers", [GEMMA2_2B], ("SanaTransformer2DModel", None)),
    ("CogView 4", "THUDM/CogView4-6B", [GLM4_9B], COGVIEW4_6B),
    ("HiDream-I1", "HiDream-ai/HiDream-I1-Full", [LLAMA3_1_8B, T5_XXL, CLIP_L, CLIP_G], HIDREAM_I1),
]


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def encoder_parameters(spec) -> int:
    import transformers

    model_class, config_class, config = spec
    with torch.device("meta"):
        return count(getattr(transformers, model_class)(getattr(transformers, config_class)(**config)))


def denoiser_parameters(spec) -> int | None:
    import diffusers

    if spec is None:
        return None
    model_class, config = spec
    with torch.device("meta"):
        return count(getattr(diffusers, model_class)(**(config or {})))


def sizes(parameters: int | None) -> str:
    if parameters is None:
        return "— | — | —"
    return f"{parameters / GB:.1f} B | {2 * parameters / GB:.1f} GB | {4 * parameters / GB:.1f} GB"


def main() -> None:
    argparse.ArgumentParser(description=__doc__.split("\n\n")[0]).parse_args()
    warnings.filterwarnings("ignore")
    print("| family | model | text encoders: parameters | bf16 | fp32 | denoiser: parameters | bf16 | fp32 |")
    print("|---|---|---|---|---|---|---|---|")
    for family, model, encoders, denoiser in FAMILIES:
        text = sum(encoder_parameters(spec) for spec in encoders)
        print(f"| {family} | `{model}` | {sizes(text)} | {sizes(denoiser_parameters(denoiser))} |")


if __name__ == "__main__":
    main()
