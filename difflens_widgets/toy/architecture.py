"""Configs of the toy models' parts, each a standard diffusers / transformers class so the toys run through exactly
the code paths of the families they miniaturise:

- ``toy``: a miniature Stable Diffusion 1.x (AutoencoderKL, UNet2DConditionModel, causal CLIPTextModel with its final
  layer norm, CLIPTokenizer, DDIM);
- ``toy-t5``: a miniature PixArt-α (the same AutoencoderKL, a PixArtTransformer2DModel with 2-D sin-cos position
  embeddings, a bidirectional T5EncoderModel with relative positions and a final RMS norm, the world's tokenizer,
  DDIM), the paper's other kind of encoder (DeepFloyd IF's and PixArt's T5) on the same latents and data.
"""

from __future__ import annotations

from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, PixArtTransformer2DModel, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer, T5Config, T5EncoderModel

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


# The T5 toy: as wide as the CLIP toy's encoder and as deep, so the two encoders differ in attention (bidirectional,
# relative positions, gated FFN, RMS norm) and not in size.
T5_KV_WIDTH = 32
T5_HEADS = 4
T5_BUCKETS = 32  # relative-position buckets: every offset of a caption (≤ 24 pieces) is told apart up to 8 exactly
T5_MAX_DISTANCE = 32

# The DiT of the T5 toy: 2×2 patches of the 16×16×4 latents (64 tokens, each 8×8 pixels of the image), every block
# attending to the text; its width keeps the lens over all layers within seconds on a 2-core CPU.
DIT_LAYERS = 8
DIT_HEADS = 6
DIT_HEAD_WIDTH = 32
# PixArt-α's block: adaLN-single timestep conditioning (no per-block norm affine), biased attention, tanh-GELU FFN
PIXART_ALPHA_BLOCK = dict(
    attention_bias=True,
    activation_fn="gelu-approximate",
    num_embeds_ada_norm=1000,
    norm_type="ada_norm_single",
    norm_elementwise_affine=False,
    norm_eps=1e-6,
)


def build_t5_encoder(tokenizer: CLIPTokenizer) -> T5EncoderModel:
    """A bidirectional T5 encoder of the CLIP toy's width and depth, reading the world's tokenizer."""
    config = T5Config(
        vocab_size=len(tokenizer),
        d_model=TEXT_WIDTH,
        d_kv=T5_KV_WIDTH,
        d_ff=4 * TEXT_WIDTH,
        num_layers=TEXT_LAYERS,
        num_heads=T5_HEADS,
        relative_attention_num_buckets=T5_BUCKETS,
        relative_attention_max_distance=T5_MAX_DISTANCE,
        feed_forward_proj="gated-gelu",
        dropout_rate=0.0,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id,
        is_encoder_decoder=False,
        use_cache=False,
    )
    return T5EncoderModel(config)


def build_dit(
    latent_size: int = IMAGE_SIZE // 4,
    layers: int = DIT_LAYERS,
    heads: int = DIT_HEADS,
    head_width: int = DIT_HEAD_WIDTH,
) -> PixArtTransformer2DModel:
    """PixArt-α's transformer in miniature: adaLN-single timestep conditioning, cross-attention to the text in
    every block, 2-D sin-cos position embeddings, ε prediction only (out_channels = latent channels, so the
    pipeline keeps the whole output)."""
    return PixArtTransformer2DModel(
        sample_size=latent_size,
        num_layers=layers,
        patch_size=2,
        attention_head_dim=head_width,
        num_attention_heads=heads,
        caption_channels=TEXT_WIDTH,
        in_channels=LATENT_CHANNELS,
        out_channels=LATENT_CHANNELS,
        cross_attention_dim=heads * head_width,
        **PIXART_ALPHA_BLOCK,
    )


def train_scheduler() -> DDPMScheduler:
    return DDPMScheduler(**SCHEDULE, prediction_type="epsilon")


def inference_scheduler() -> DDIMScheduler:
    return DDIMScheduler(
        **SCHEDULE, clip_sample=False, set_alpha_to_one=False, steps_offset=1, prediction_type="epsilon"
    )
