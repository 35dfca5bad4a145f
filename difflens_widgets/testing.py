"""Tiny Stable Diffusion pipelines with random weights, built from configs (no download), as diffusers' own tests
build theirs. Used by the test suite and the benchmarks; handy for trying the API offline."""

from __future__ import annotations

import torch

from .core.models import sd_pipeline

# every word the tiny pipelines' prompts use (the CLIP tokenizer's words, the T5 tokenizer's vocabulary)
TINY_WORDS = (
    "a an and of photo cat dog red blue green circle square left right above below big small the on in xon"
).split()


def tiny_clip_tokenizer(max_length: int = 16):
    """A real CLIPTokenizer over a small word vocabulary (one token per word)."""
    from .toy.tokenizer import build_tokenizer

    return build_tokenizer(TINY_WORDS, max_length=max_length)


def tiny_stable_diffusion(seed: int = 0, num_layers: int = 4, scheduler: str = "ddim", sample_size: int = 8):
    """A StableDiffusionPipeline of a few hundred thousand random parameters: 32×32 images by default."""
    from diffusers import (
        AutoencoderKL,
        DDIMScheduler,
        EulerAncestralDiscreteScheduler,
        UNet2DConditionModel,
    )

    torch.manual_seed(seed)
    tokenizer = tiny_clip_tokenizer()
    unet = UNet2DConditionModel(
        sample_size=sample_size,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(16, 32),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=2,
        norm_num_groups=8,
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        block_out_channels=(16, 16, 16),
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        layers_per_block=1,
        norm_num_groups=8,
        sample_size=sample_size * 4,
    )
    text_encoder = tiny_clip(tokenizer, num_layers=num_layers, width=32)
    schedule = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    if scheduler == "ddim":
        sched = DDIMScheduler(**schedule, clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    elif scheduler == "euler_ancestral":
        sched = EulerAncestralDiscreteScheduler(**schedule)
    else:
        raise ValueError(f"scheduler must be 'ddim' or 'euler_ancestral', got {scheduler!r}")
    pipe = sd_pipeline(vae.eval(), unet.eval(), text_encoder.eval(), tokenizer, sched)
    return pipe


# ---------------------------------------------------------------------------------------------------------------
# Tiny pipelines of the other families (random weights; each runs in well under a second on a CPU)
# ---------------------------------------------------------------------------------------------------------------


def tiny_t5_tokenizer(max_length: int = 16):
    """A fast T5-style tokenizer (one token per word, ``</s>`` appended, ``<pad>`` = 0) built without any file."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{w: i + 3 for i, w in enumerate(TINY_WORDS)}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token="</s>", pad_token="<pad>", unk_token="<unk>", model_max_length=max_length
    )


def tiny_t5(tokenizer, num_layers: int = 3, width: int = 32):
    from transformers import T5Config, T5EncoderModel

    return T5EncoderModel(
        T5Config(
            vocab_size=len(tokenizer),
            d_model=width,
            d_kv=8,
            d_ff=2 * width,
            num_layers=num_layers,
            num_heads=4,
            dropout_rate=0.0,
            pad_token_id=0,
            eos_token_id=1,
        )
    ).eval()


def tiny_clip(tokenizer, num_layers: int = 4, width: int = 32, projection: bool = False):
    return clip_text(tokenizer, width, num_layers, heads=4, ffn=2 * width, projection=width if projection else None)


def clip_text(
    tokenizer, width: int, layers: int, heads: int, ffn: int, act: str = "quick_gelu", projection: int | None = None
):
    """A CLIP text encoder of any size with random weights (``projection``: with a text projection of that width)."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=width,
        intermediate_size=ffn,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        hidden_act=act,
        projection_dim=projection or width,
        max_position_embeddings=tokenizer.model_max_length,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(config).eval()


def _tiny_vae(latent_channels: int = 4, **extra):
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=latent_channels,
        block_out_channels=(16, 16, 16),
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        layers_per_block=1,
        norm_num_groups=8,
        sample_size=32,
        **extra,
    ).eval()


def tiny_sdxl(seed: int = 0):
    """StableDiffusionXLPipeline: two CLIPs (4 and 5 blocks, the second with projection), 32×32 images."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel

    torch.manual_seed(seed)
    tok = tiny_clip_tokenizer()
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(16, 32),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        transformer_layers_per_block=(1, 1),
        projection_class_embeddings_input_dim=80,
        cross_attention_dim=64,
        norm_num_groups=8,
    ).eval()
    pipe = StableDiffusionXLPipeline(
        vae=_tiny_vae(),
        text_encoder=tiny_clip(tok, 4),
        text_encoder_2=tiny_clip(tok, 5, projection=True),
        tokenizer=tok,
        tokenizer_2=tiny_clip_tokenizer(),
        unet=unet,
        scheduler=EulerDiscreteScheduler(
            beta_start=0.00085,
            beta_end=0.012,
            beta_schedule="scaled_linear",
            steps_offset=1,
            timestep_spacing="leading",
        ),
        force_zeros_for_empty_prompt=True,
        add_watermarker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_sd3(seed: int = 0, with_t5: bool = True):
    """StableDiffusion3Pipeline: CLIP-L, CLIP-G (4 blocks each) and T5 (3 blocks), 32×32 images."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline

    torch.manual_seed(seed)
    tok = tiny_clip_tokenizer()
    transformer = SD3Transformer2DModel(
        sample_size=8,
        patch_size=1,
        in_channels=4,
        num_layers=1,
        attention_head_dim=8,
        num_attention_heads=4,
        caption_projection_dim=32,
        joint_attention_dim=32,
        pooled_projection_dim=64,
        out_channels=4,
    ).eval()
    t5_tok = tiny_t5_tokenizer()
    pipe = StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=_tiny_vae(shift_factor=0.0609, scaling_factor=1.5035, use_quant_conv=False, use_post_quant_conv=False),
        text_encoder=tiny_clip(tok, 4, projection=True),
        tokenizer=tok,
        text_encoder_2=tiny_clip(tok, 4, projection=True),
        tokenizer_2=tiny_clip_tokenizer(),
        text_encoder_3=tiny_t5(t5_tok) if with_t5 else None,
        tokenizer_3=t5_tok if with_t5 else None,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _flux_vae():
    """A one-level VAE with FLUX.1's latent shift and scale, 1 latent channel (FLUX.1 and Chroma)."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        sample_size=32,
        in_channels=3,
        out_channels=3,
        block_out_channels=(4,),
        layers_per_block=1,
        latent_channels=1,
        norm_num_groups=1,
        use_quant_conv=False,
        use_post_quant_conv=False,
        shift_factor=0.0609,
        scaling_factor=1.5035,
    ).eval()


def tiny_flux(seed: int = 0):
    """FluxPipeline: CLIP (4 blocks, pooled) and T5 (3 blocks), 1-channel latents packed 2×2; pass height/width
    (e.g. 32): the pipeline's default size is 128·vae_scale_factor."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    torch.manual_seed(seed)
    tok, t5_tok = tiny_clip_tokenizer(), tiny_t5_tokenizer()
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=4,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=32,
        pooled_projection_dim=32,
        axes_dims_rope=[4, 4, 8],
    ).eval()
    pipe = FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=_flux_vae(),
        text_encoder=tiny_clip(tok, 4),
        tokenizer=tok,
        text_encoder_2=tiny_t5(t5_tok),
        tokenizer_2=t5_tok,
        transformer=transformer,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_chroma(seed: int = 0):
    """ChromaPipeline: FLUX.1's tiny transformer without CLIP (T5 of 3 blocks, its mask passed on), 1-channel latents
    packed 2×2, 32×32 images by default."""
    from diffusers import ChromaPipeline, ChromaTransformer2DModel, FlowMatchEulerDiscreteScheduler

    torch.manual_seed(seed)
    t5_tok = tiny_t5_tokenizer()
    transformer = ChromaTransformer2DModel(
        patch_size=1,
        in_channels=4,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=32,
        axes_dims_rope=[4, 4, 8],
        approximator_num_channels=16,
        approximator_hidden_dim=32,
        approximator_layers=1,
    ).eval()
    pipe = ChromaPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=_flux_vae(),
        text_encoder=tiny_t5(t5_tok),
        tokenizer=t5_tok,
        transformer=transformer,
    )
    pipe.default_sample_size = 32  # with the 1× VAE: 32×32 images (the pipeline's own: 128 latents × 8)
    pipe.set_progress_bar_config(disable=True)
    return pipe


# a Qwen-style chat template (Qwen3's, reduced to one turn): the prompt between role markers, thinking switchable
CHAT_TEMPLATE = (
    "{%- for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + "
    "'<|im_end|>\\n' }}{%- endfor %}{%- if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}{{ '<think>\\n\\n</think>\\n\\n' }}"
    "{%- endif %}{%- endif %}"
)


def tiny_chat_tokenizer(max_length: int = 64, bos: bool = False):
    """A byte-level BPE tokenizer as language models have (``Ġ`` word starts, words the vocabulary lacks split into
    pieces), trained in a moment on the tiny words, with Qwen's special tokens and a chat template: no file.
    ``bos``: every text starts with ``<bos>``, as Gemma's and Llama's tokenizers add one."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>", "<bos>"]
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator([" ".join([*TINY_WORDS, "user", "assistant"]), "\n\n"], trainer)
    if bos:
        start = ("<bos>", backend.token_to_id("<bos>"))
        backend.post_processor = processors.TemplateProcessing(
            single="<bos> $A", pair="<bos> $A <bos> $B", special_tokens=[start]
        )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<|endoftext|>",
        eos_token="<|im_end|>",
        model_max_length=max_length,
        **({"bos_token": "<bos>"} if bos else {}),
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def _small_language_model(tokenizer, num_layers: int, width: int, positions: int) -> dict:
    """The config arguments every tiny decoder-only language model here shares: the tokenizer's vocabulary, two
    query heads of 8 over one key/value head, an FFN twice the width."""
    return dict(
        vocab_size=len(tokenizer),
        hidden_size=width,
        intermediate_size=2 * width,
        num_hidden_layers=num_layers,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=8,
        max_position_embeddings=positions,
        pad_token_id=tokenizer.pad_token_id,
    )


def tiny_qwen3(tokenizer, num_layers: int = 4, width: int = 16):
    """A Qwen3ForCausalLM of a few thousand parameters per layer (as FLUX.2 [klein] and Z-Image load theirs)."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    config = Qwen3Config(
        **_small_language_model(tokenizer, num_layers, width, positions=512),
    )
    return Qwen3ForCausalLM(config).eval()


def tiny_qwen2_5_vl(tokenizer, num_layers: int = 4, width: int = 16):
    """A Qwen2_5_VLForConditionalGeneration with a one-block vision tower (never run: Qwen-Image reads text only)
    and a language model of a few thousand parameters per layer."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    text = dict(
        vocab_size=len(tokenizer),
        hidden_size=width,
        intermediate_size=2 * width,
        num_hidden_layers=num_layers,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=1024,
        rope_scaling={"type": "default", "mrope_section": [1, 1, 2]},
    )
    vision = dict(
        depth=1, hidden_size=16, intermediate_size=16, num_heads=2, out_hidden_size=width, fullatt_block_indexes=[0]
    )
    ids = dict(pad_token_id=tokenizer.pad_token_id, bos_token_id=None, eos_token_id=tokenizer.eos_token_id)
    config = Qwen2_5_VLConfig(text_config={**text, **ids}, vision_config=vision, **ids)
    return Qwen2_5_VLForConditionalGeneration(config).eval()


def tiny_qwen_image(seed: int = 0):
    """QwenImagePipeline: a 4-layer Qwen2.5-VL of width 16, two transformer blocks, a one-level video VAE (4
    latent channels, 2× down) and 32×32 images by default. The pipeline drops its instruction's prefix tokens: as
    many as this tokenizer makes of it (the real tokenizer makes 34)."""
    from diffusers import (
        AutoencoderKLQwenImage,
        FlowMatchEulerDiscreteScheduler,
        QwenImagePipeline,
        QwenImageTransformer2DModel,
    )

    torch.manual_seed(seed)
    tokenizer = tiny_chat_tokenizer(max_length=1024)
    transformer = QwenImageTransformer2DModel(
        patch_size=2,
        in_channels=16,
        out_channels=4,
        num_layers=2,
        attention_head_dim=8,
        num_attention_heads=2,
        joint_attention_dim=16,
        guidance_embeds=False,
        axes_dims_rope=(2, 2, 4),
    ).eval()
    vae = AutoencoderKLQwenImage(
        base_dim=8,
        z_dim=4,
        dim_mult=[1, 2],
        num_res_blocks=1,
        temperal_downsample=[False],
        latents_mean=[0.1, -0.2, 0.3, 0.0],
        latents_std=[1.5, 2.0, 0.8, 1.2],
    ).eval()
    pipe = QwenImagePipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=vae,
        text_encoder=tiny_qwen2_5_vl(tokenizer),
        tokenizer=tokenizer,
        transformer=transformer,
    )
    prefix = pipe.prompt_template_encode.partition("{}")[0]
    pipe.prompt_template_encode_start_idx = len(tokenizer(prefix).input_ids)
    pipe.default_sample_size = 16  # latent side before the 2× VAE: 32×32 images (the pipeline's own: 1024²)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _flux2_image_side(guidance_embeds: bool):
    """FLUX.2's tiny transformer (one double and one single block, a 3 × 16-wide text input) and VAE (4 latent
    channels, 2× down, patchified 2×2 by the pipeline)."""
    from diffusers import AutoencoderKLFlux2, Flux2Transformer2DModel

    transformer = Flux2Transformer2DModel(
        patch_size=1,
        in_channels=16,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=8,
        num_attention_heads=2,
        joint_attention_dim=3 * 16,
        timestep_guidance_channels=32,
        axes_dims_rope=(2, 2, 2, 2),
        guidance_embeds=guidance_embeds,
    ).eval()
    vae = AutoencoderKLFlux2(
        block_out_channels=(8, 8),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=4,
        sample_size=32,
        use_quant_conv=False,
        use_post_quant_conv=False,
    ).eval()
    return transformer, vae


def tiny_flux2_klein(seed: int = 0, distilled: bool = False):
    """Flux2KleinPipeline: a 36-layer Qwen3 of width 16 (the pipeline reads layers 9, 18, 27), one double and one
    single transformer block, 4 latent channels patchified 2×2; 32×32 images by default. ``distilled``: no
    guidance branch, as the step-distilled [klein] models."""
    from diffusers import FlowMatchEulerDiscreteScheduler, Flux2KleinPipeline

    torch.manual_seed(seed)
    tokenizer = tiny_chat_tokenizer(max_length=512)
    transformer, vae = _flux2_image_side(guidance_embeds=False)
    pipe = Flux2KleinPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=vae,
        text_encoder=tiny_qwen3(tokenizer, num_layers=36),
        tokenizer=tokenizer,
        transformer=transformer,
        is_distilled=distilled,
    )
    pipe.default_sample_size = 16  # latent side before the 2× VAE: 32×32 images (the pipeline's own: 128)
    pipe.set_progress_bar_config(disable=True)
    return pipe


# Mistral's chat template, reduced: the start token, the system message, the user turn; content as typed parts
MISTRAL_CHAT_TEMPLATE = (
    "{{ bos_token }}{%- for message in messages %}{%- if message['role'] == 'system' %}"
    "{{ '[SYSTEM_PROMPT]' + message['content'][0]['text'] + '[/SYSTEM_PROMPT]' }}"
    "{%- elif message['role'] == 'user' %}{{ '[INST]' + message['content'][0]['text'] + '[/INST]' }}"
    "{%- endif %}{%- endfor %}"
)


def tiny_mistral3(tokenizer, num_layers: int = 40, width: int = 16):
    """A Mistral3ForConditionalGeneration with a one-layer vision tower (never run: FLUX.2 reads text only) and a
    language model of a few thousand parameters per layer."""
    from transformers import Mistral3Config, Mistral3ForConditionalGeneration

    text = dict(model_type="mistral", **_small_language_model(tokenizer, num_layers, width, positions=1024))
    vision = dict(
        model_type="pixtral", hidden_size=16, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2,
        head_dim=8, image_size=32, patch_size=16,
    )  # fmt: skip
    config = Mistral3Config(
        text_config=text, vision_config=vision, image_token_index=tokenizer.pad_token_id, spatial_merge_size=1
    )
    return Mistral3ForConditionalGeneration(config).eval()


def tiny_flux2(seed: int = 0):
    """Flux2Pipeline (FLUX.2 [dev]): a 40-layer Mistral 3 of width 16 (the pipeline reads layers 10, 20, 30) after
    the pipeline's system message, FLUX.2's tiny transformer with guidance as an input; 32×32 images by default. Its
    tokenizer is a plain tokenizer with Mistral's (reduced) chat template, where the real model loads a processor:
    the pipeline only asks it for the chat template."""
    from diffusers import FlowMatchEulerDiscreteScheduler, Flux2Pipeline

    torch.manual_seed(seed)
    tokenizer = tiny_chat_tokenizer(max_length=512, bos=True)
    tokenizer.chat_template = MISTRAL_CHAT_TEMPLATE
    transformer, vae = _flux2_image_side(guidance_embeds=True)
    pipe = Flux2Pipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=vae,
        text_encoder=tiny_mistral3(tokenizer),
        tokenizer=tokenizer,
        transformer=transformer,
    )
    pipe.default_sample_size = 16  # latent side before the 2× VAE: 32×32 images (the pipeline's own: 128)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_z_image(seed: int = 0):
    """ZImagePipeline: a 4-layer Qwen3 of width 16 read at its penultimate layer, two single-stream transformer
    layers. The lens and the denoiser taps draw 32² by default (``default_sample_size``); the pipeline's own call
    still defaults to 1024², so pass it height/width (e.g. 32)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, ZImagePipeline, ZImageTransformer2DModel

    torch.manual_seed(seed)
    tokenizer = tiny_chat_tokenizer(max_length=512)
    transformer = ZImageTransformer2DModel(
        all_patch_size=(2,),
        all_f_patch_size=(1,),
        in_channels=4,
        dim=32,
        n_layers=2,
        n_refiner_layers=1,
        n_heads=2,
        n_kv_heads=2,
        cap_feat_dim=16,
        axes_dims=[8, 4, 4],
        axes_lens=[512, 32, 32],
    ).eval()
    vae = _tiny_vae(latent_channels=4, scaling_factor=0.3611, shift_factor=0.1159)
    pipe = ZImagePipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=vae,
        text_encoder=tiny_qwen3(tokenizer, num_layers=4),
        tokenizer=tokenizer,
        transformer=transformer,
    )
    pipe.default_sample_size = 8  # latent side before the 4× VAE: 32×32 images for the lens and the taps
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_gemma2(tokenizer, num_layers: int = 4, width: int = 16):
    """A Gemma2Model of a few thousand parameters per layer (as Lumina 2 and Sana load theirs)."""
    from transformers import Gemma2Config, Gemma2Model

    config = Gemma2Config(
        **_small_language_model(tokenizer, num_layers, width, positions=1024),
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
    )
    return Gemma2Model(config).eval()


def tiny_lumina2(seed: int = 0):
    """Lumina2Pipeline: a 4-layer Gemma 2 of width 16 read at its penultimate layer, two joint transformer layers
    (and one refiner per side), 32×32 images by default."""
    from diffusers import FlowMatchEulerDiscreteScheduler, Lumina2Pipeline, Lumina2Transformer2DModel

    torch.manual_seed(seed)
    tokenizer = tiny_chat_tokenizer(max_length=256, bos=True)
    transformer = Lumina2Transformer2DModel(
        sample_size=8,
        patch_size=2,
        in_channels=4,
        hidden_size=16,
        num_layers=2,
        num_refiner_layers=1,
        num_attention_heads=2,
        num_kv_heads=2,
        multiple_of=4,
        axes_dim_rope=(4, 2, 2),
        axes_lens=(256, 32, 32),
        cap_feat_dim=16,
    ).eval()
    pipe = Lumina2Pipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=_tiny_vae(scaling_factor=0.3611, shift_factor=0.1159),
        text_encoder=tiny_gemma2(tokenizer),
        tokenizer=tokenizer,
    )
    pipe.vae_scale_factor = 4  # the pipeline assumes 8; this VAE's 3 levels make 4 (latents 8×8 for 32×32 images)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_sana(seed: int = 0):
    """SanaPipeline: a 4-layer Gemma 2 of width 16 behind the pipeline's own instruction, two linear-attention
    blocks with cross-attention, a two-level deep-compression autoencoder, 32×32 images by default."""
    from diffusers import AutoencoderDC, DPMSolverMultistepScheduler, SanaPipeline, SanaTransformer2DModel

    torch.manual_seed(seed)
    tokenizer = tiny_chat_tokenizer(max_length=1024, bos=True)
    transformer = SanaTransformer2DModel(
        in_channels=4,
        out_channels=4,
        num_attention_heads=2,
        attention_head_dim=8,
        num_layers=2,
        num_cross_attention_heads=2,
        cross_attention_head_dim=8,
        cross_attention_dim=16,
        caption_channels=16,
        sample_size=16,
        patch_size=1,
    ).eval()
    vae = AutoencoderDC(
        in_channels=3,
        latent_channels=4,
        attention_head_dim=2,
        encoder_block_types=("ResBlock", "ResBlock"),
        decoder_block_types=("ResBlock", "ResBlock"),
        encoder_block_out_channels=(8, 8),
        decoder_block_out_channels=(8, 8),
        encoder_layers_per_block=(1, 1),
        decoder_layers_per_block=(1, 1),
        encoder_qkv_multiscales=((), ()),
        decoder_qkv_multiscales=((), ()),
        scaling_factor=0.41407,
    ).eval()
    scheduler = DPMSolverMultistepScheduler(use_flow_sigmas=True, prediction_type="flow_prediction", flow_shift=3.0)
    pipe = SanaPipeline(
        tokenizer=tokenizer, text_encoder=tiny_gemma2(tokenizer), vae=vae, transformer=transformer, scheduler=scheduler
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_cogview4(seed: int = 0):
    """CogView4Pipeline: a 4-layer GLM-4 of width 16 read at its penultimate layer, two joint transformer blocks,
    32×32 images by default."""
    from diffusers import CogView4Pipeline, CogView4Transformer2DModel, FlowMatchEulerDiscreteScheduler
    from transformers import GlmConfig, GlmModel

    torch.manual_seed(seed)
    tokenizer = tiny_chat_tokenizer(max_length=1024, bos=True)
    config = GlmConfig(**_small_language_model(tokenizer, num_layers=4, width=16, positions=1024))
    transformer = CogView4Transformer2DModel(
        patch_size=2,
        in_channels=4,
        out_channels=4,
        num_layers=2,
        attention_head_dim=8,
        num_attention_heads=2,
        text_embed_dim=16,
        time_embed_dim=8,
        condition_dim=4,
        sample_size=8,
        rope_axes_dim=(4, 4),
    ).eval()
    scheduler = FlowMatchEulerDiscreteScheduler(base_shift=0.25, max_shift=0.75, base_image_seq_len=256)
    pipe = CogView4Pipeline(
        tokenizer=tokenizer,
        text_encoder=GlmModel(config).eval(),
        vae=_tiny_vae(),
        transformer=transformer,
        scheduler=scheduler,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_llama(tokenizer, num_layers: int = 4, width: int = 16):
    """A LlamaForCausalLM of a few thousand parameters per layer (as HiDream loads Llama 3.1)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        **_small_language_model(tokenizer, num_layers, width, positions=256),
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
    )
    return LlamaForCausalLM(config).eval()


def tiny_hidream(seed: int = 0):
    """HiDreamImagePipeline: two CLIPs (pooled), T5 (3 blocks) and a 4-layer Llama whose layers 1, 2 and 4 feed the
    transformer's three blocks (one double-stream, two single-stream, two experts each); 32×32 images, the only size
    this pipeline draws at its default area."""
    from diffusers import FlowMatchEulerDiscreteScheduler, HiDreamImagePipeline, HiDreamImageTransformer2DModel

    torch.manual_seed(seed)
    clip_l, clip_g = tiny_clip_tokenizer(max_length=128), tiny_clip_tokenizer(max_length=128)
    t5 = tiny_t5_tokenizer(max_length=128)
    llama = tiny_chat_tokenizer(max_length=128, bos=True)
    transformer = HiDreamImageTransformer2DModel(
        patch_size=2,
        in_channels=4,
        out_channels=4,
        num_layers=1,
        num_single_layers=2,
        attention_head_dim=8,
        num_attention_heads=2,
        caption_channels=[32, 16],  # T5's width, Llama's
        text_emb_dim=2 * 32,  # the two CLIPs' projections
        num_routed_experts=2,
        num_activated_experts=1,
        axes_dims_rope=(2, 2, 4),
        max_resolution=(32, 32),
        llama_layers=[0, 1, 3],
    ).eval()
    pipe = HiDreamImagePipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=_tiny_vae(scaling_factor=0.3611, shift_factor=0.1159),
        text_encoder=tiny_clip(clip_l, 2, projection=True),
        tokenizer=clip_l,
        text_encoder_2=tiny_clip(clip_g, 2, projection=True),
        tokenizer_2=clip_g,
        text_encoder_3=tiny_t5(t5),
        tokenizer_3=t5,
        text_encoder_4=tiny_llama(llama),
        tokenizer_4=llama,
        transformer=transformer,
    )
    pipe.default_sample_size = 8  # its area: (8 × the 4× VAE)² = 32² (the pipeline's own: 1024²)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_pixart(seed: int = 0):
    """PixArtAlphaPipeline: T5 (3 blocks) with attention mask, 32×32 images."""
    from diffusers import DDIMScheduler, PixArtAlphaPipeline, PixArtTransformer2DModel

    from .toy.architecture import PIXART_ALPHA_BLOCK

    torch.manual_seed(seed)
    t5_tok = tiny_t5_tokenizer()
    transformer = PixArtTransformer2DModel(
        sample_size=8,
        num_layers=2,
        patch_size=2,
        attention_head_dim=8,
        num_attention_heads=3,
        caption_channels=32,
        in_channels=4,
        cross_attention_dim=24,
        out_channels=8,
        **PIXART_ALPHA_BLOCK,
    ).eval()
    pipe = PixArtAlphaPipeline(
        tokenizer=t5_tok,
        text_encoder=tiny_t5(t5_tok),
        vae=_tiny_vae(),
        transformer=transformer,
        scheduler=DDIMScheduler(),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_deepfloyd_if(seed: int = 0):
    """IFPipeline (stage I): T5 (3 blocks), pixel-space UNet with learned variance, 32×32 images."""
    from diffusers import DDPMScheduler, IFPipeline, UNet2DConditionModel

    torch.manual_seed(seed)
    t5_tok = tiny_t5_tokenizer()
    unet = UNet2DConditionModel(
        sample_size=32,
        layers_per_block=1,
        block_out_channels=(32, 64),
        down_block_types=("ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"),
        mid_block_type="UNetMidBlock2DSimpleCrossAttn",
        up_block_types=("SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"),
        in_channels=3,
        out_channels=6,
        cross_attention_dim=32,
        encoder_hid_dim=32,
        attention_head_dim=8,
        addition_embed_type="text",
        addition_embed_type_num_heads=2,
        cross_attention_norm="group_norm",
        resnet_time_scale_shift="scale_shift",
        act_fn="gelu",
        norm_num_groups=8,
    ).eval()
    scheduler = DDPMScheduler(
        num_train_timesteps=1000,
        beta_schedule="squaredcos_cap_v2",
        beta_start=0.0001,
        beta_end=0.02,
        thresholding=True,
        dynamic_thresholding_ratio=0.95,
        sample_max_value=1.0,
        prediction_type="epsilon",
        variance_type="learned_range",
    )
    pipe = IFPipeline(
        tokenizer=t5_tok,
        text_encoder=tiny_t5(t5_tok),
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        watermarker=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


TINY_FAMILIES = {
    "stable-diffusion": tiny_stable_diffusion,
    "stable-diffusion-xl": tiny_sdxl,
    "stable-diffusion-3": tiny_sd3,
    "flux": tiny_flux,
    "chroma": tiny_chroma,
    "flux2-klein": tiny_flux2_klein,
    "flux2": tiny_flux2,
    "qwen-image": tiny_qwen_image,
    "lumina2": tiny_lumina2,
    "sana": tiny_sana,
    "cogview4": tiny_cogview4,
    "hidream": tiny_hidream,
    "pixart": tiny_pixart,
    "deepfloyd-if": tiny_deepfloyd_if,
}


# ---------------------------------------------------------------------------------------------------------------
# Real-size architectures with random weights, for benchmarks: timing and memory do not depend on weight values,
# and nothing is downloaded. Built directly on ``device`` (random init of billions of parameters on a CPU is slow).
# ---------------------------------------------------------------------------------------------------------------
def _sd_vae(sample_size: int, latent_channels: int = 4, **extra):
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        block_out_channels=(128, 256, 512, 512),
        layers_per_block=2,
        latent_channels=latent_channels,
        sample_size=sample_size,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        **extra,
    ).eval()


def sd15_architecture(device="cpu", dtype=torch.float32):
    """Stable Diffusion 1.5: UNet (859 M), VAE, CLIP ViT-L/14 text encoder (12 blocks), PNDM; 512² images."""
    from diffusers import PNDMScheduler, UNet2DConditionModel

    tokenizer = tiny_clip_tokenizer(max_length=77)
    with torch.device(device):
        unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768, attention_head_dim=8).eval()
        vae = _sd_vae(512)
        text_encoder = clip_text(tokenizer, 768, 12, 12, 3072, "quick_gelu")
    scheduler = PNDMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", skip_prk_steps=True, steps_offset=1
    )
    pipe = sd_pipeline(vae, unet, text_encoder, tokenizer, scheduler)
    return pipe.to(device=device, dtype=dtype)


def sdxl_architecture(device="cpu", dtype=torch.float32):
    """SDXL base: UNet (2.6 B), CLIP ViT-L (12 blocks) + OpenCLIP bigG (32 blocks, projection), VAE; 1024²."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel

    tokenizer = tiny_clip_tokenizer(max_length=77)
    with torch.device(device):
        unet = UNet2DConditionModel(
            sample_size=128,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            block_out_channels=(320, 640, 1280),
            layers_per_block=2,
            transformer_layers_per_block=(1, 2, 10),
            attention_head_dim=(5, 10, 20),
            cross_attention_dim=2048,
            use_linear_projection=True,
            addition_embed_type="text_time",
            addition_time_embed_dim=256,
            projection_class_embeddings_input_dim=2816,
        ).eval()
        vae = _sd_vae(1024, scaling_factor=0.13025, force_upcast=True)
        text_encoder = clip_text(tokenizer, 768, 12, 12, 3072, "quick_gelu")
        text_encoder_2 = clip_text(tokenizer, 1280, 32, 20, 5120, "gelu", projection=1280)
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1, timestep_spacing="leading"
    )
    pipe = StableDiffusionXLPipeline(
        vae=vae,
        unet=unet,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer,
        scheduler=scheduler,
    )
    return pipe.to(device=device, dtype=dtype)


def flux_architecture(device="cpu", dtype=torch.float32):
    """FLUX.1-dev: transformer (12 B: 19 double + 38 single blocks), T5-XXL (24 blocks, 4.7 B), CLIP-L; 1024²."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import T5Config, T5EncoderModel

    tokenizer = tiny_clip_tokenizer(max_length=77)
    tokenizer_2 = tiny_t5_tokenizer(max_length=512)
    with torch.device(device):
        transformer = FluxTransformer2DModel(
            patch_size=1,
            in_channels=64,
            num_layers=19,
            num_single_layers=38,
            attention_head_dim=128,
            num_attention_heads=24,
            joint_attention_dim=4096,
            pooled_projection_dim=768,
            guidance_embeds=True,
            axes_dims_rope=(16, 56, 56),
        ).eval()
        text_encoder = clip_text(tokenizer, 768, 12, 12, 3072, "quick_gelu")
        text_encoder_2 = T5EncoderModel(
            T5Config(
                vocab_size=32128,
                d_model=4096,
                d_kv=64,
                d_ff=10240,
                num_layers=24,
                num_heads=64,
                feed_forward_proj="gated-gelu",
                dropout_rate=0.0,
                pad_token_id=0,
                eos_token_id=1,
            )
        ).eval()
        vae = _sd_vae(
            1024,
            latent_channels=16,
            scaling_factor=0.3611,
            shift_factor=0.1159,
            use_quant_conv=False,
            use_post_quant_conv=False,
        )
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15)
    pipe = FluxPipeline(
        scheduler=scheduler,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        text_encoder_2=text_encoder_2,
        tokenizer_2=tokenizer_2,
        transformer=transformer,
    )
    return pipe.to(device=device, dtype=dtype)


REAL_SIZE = {"sd15": sd15_architecture, "sdxl": sdxl_architecture, "flux": flux_architecture}


def tiny_clip_scorer(seed: int = 0):
    """A ClipScorer on a random CLIP of a few thousand parameters (32×32 images, the tiny word vocabulary):
    exercises the CLIP scoring path with no download."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    from .sweeps.scorers import ClipScorer

    tokenizer = tiny_clip_tokenizer()
    torch.manual_seed(seed)
    config = CLIPConfig(
        text_config=dict(
            vocab_size=tokenizer.vocab_size,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            max_position_embeddings=16,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        ),
        vision_config=dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=32,
            patch_size=8,
        ),
        projection_dim=16,
    )
    processor = CLIPProcessor(
        image_processor=CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
        tokenizer=tokenizer,
    )
    return ClipScorer(model=CLIPModel(config), processor=processor, device="cpu")
