"""Tiny Stable Diffusion pipelines with random weights, built from configs (no download), as diffusers' own tests
build theirs. Used by the test suite and the benchmarks; handy for trying the API offline."""

from __future__ import annotations

import torch


def tiny_clip_tokenizer(max_length: int = 16):
    """A real CLIPTokenizer over a small word vocabulary (one token per word)."""
    from .toy.tokenizer import build_tokenizer

    words = ["a", "an", "and", "of", "photo", "cat", "dog", "red", "blue", "green", "circle", "square", "left",
             "right", "above", "below", "big", "small", "the", "on", "in", "xon"]
    return build_tokenizer(words, max_length=max_length)


def tiny_stable_diffusion(seed: int = 0, num_layers: int = 4, scheduler: str = "ddim", sample_size: int = 8):
    """A StableDiffusionPipeline of a few hundred thousand random parameters: 32×32 images by default."""
    from diffusers import (AutoencoderKL, DDIMScheduler, EulerAncestralDiscreteScheduler, StableDiffusionPipeline,
                           UNet2DConditionModel)
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    tokenizer = tiny_clip_tokenizer()
    unet = UNet2DConditionModel(
        sample_size=sample_size, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(16, 32),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, attention_head_dim=2, norm_num_groups=8,
    )
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(16, 16, 16),
        down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
        layers_per_block=1, norm_num_groups=8, sample_size=sample_size * 4,
    )
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=num_layers,
        num_attention_heads=4, max_position_embeddings=tokenizer.model_max_length,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    ))
    schedule = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    if scheduler == "ddim":
        sched = DDIMScheduler(**schedule, clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    elif scheduler == "euler_ancestral":
        sched = EulerAncestralDiscreteScheduler(**schedule)
    else:
        raise ValueError(f"scheduler must be 'ddim' or 'euler_ancestral', got {scheduler!r}")
    pipe = StableDiffusionPipeline(
        vae=vae.eval(), unet=unet.eval(), text_encoder=text_encoder.eval(), tokenizer=tokenizer, scheduler=sched,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe
