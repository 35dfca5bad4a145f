"""Configs of the toy model's parts: a miniature Stable Diffusion (AutoencoderKL, UNet2DConditionModel, causal
CLIPTextModel with its final layer norm, CLIPTokenizer, DDIM), so it runs through exactly the code path of SD 1.x."""

from __future__ import annotations

from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

IMAGE_SIZE = 64
LATENT_CHANNELS = 4
TEXT_WIDTH = 128
TEXT_LAYERS = 8  # deep enough to watch concepts emerge over several layers

# Noise schedule of Stable Diffusion 1.x.
SCHEDULE = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")


def build_vae() -> AutoencoderKL:
    """64×64×3 ↔ 16×16×4 (three blocks, two downsamplings)."""
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=LATENT_CHANNELS,
        sample_size=IMAGE_SIZE,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(32, 64, 64),
        layers_per_block=1,
        norm_num_groups=16,
    )


UNET_CHANNELS = (64, 128, 192)
# No attention at the 16×16 level (a convolution block: half the step time of attending there), cross-attention at
# 8×8 and 4×4, where a few tokens see the whole image: placing objects to satisfy "above" / "left of" is a global
# decision, and the capacity that pays for relations sits at these coarse levels.
UNET_DOWN = ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D")
UNET_UP = ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D")


def build_unet(latent_size: int = IMAGE_SIZE // 4, channels: tuple[int, ...] = UNET_CHANNELS) -> UNet2DConditionModel:
    """The denoiser: three levels (16×16, 8×8, 4×4), text cross-attention at the two coarse ones."""
    if len(channels) != len(UNET_DOWN):
        raise ValueError(f"the toy UNet has {len(UNET_DOWN)} levels; got {len(channels)} channel widths {channels}")
    return UNet2DConditionModel(
        sample_size=latent_size,
        in_channels=LATENT_CHANNELS,
        out_channels=LATENT_CHANNELS,
        down_block_types=UNET_DOWN,
        up_block_types=UNET_UP,
        block_out_channels=tuple(channels),
        layers_per_block=1,
        cross_attention_dim=TEXT_WIDTH,
        attention_head_dim=8,
        norm_num_groups=32,
    )


def build_text_encoder(tokenizer: CLIPTokenizer) -> CLIPTextModel:
    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=TEXT_WIDTH,
        intermediate_size=4 * TEXT_WIDTH,
        num_hidden_layers=TEXT_LAYERS,
        num_attention_heads=4,
        max_position_embeddings=tokenizer.model_max_length,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        projection_dim=TEXT_WIDTH,
    )
    return CLIPTextModel(config)


def train_scheduler() -> DDPMScheduler:
    return DDPMScheduler(**SCHEDULE, prediction_type="epsilon")


def inference_scheduler() -> DDIMScheduler:
    return DDIMScheduler(
        **SCHEDULE, clip_sample=False, set_alpha_to_one=False, steps_offset=1, prediction_type="epsilon"
    )
