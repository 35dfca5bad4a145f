"""Stable Diffusion 1.x / 2.x (and anything built like it, the toy model included): one CLIP text encoder whose
``final_layer_norm`` output is the UNet's ``encoder_hidden_states``.

Layer numbering: ``hidden_states[0]`` is the token (+ position) embedding, ``hidden_states[l]`` the output of
block l, L = number of blocks (12 for SD 1.x, 23 for SD 2.x's OpenCLIP-H as diffusers ships it). The lens
embedding of layer l is ``final_layer_norm(hidden_states[l])``, padding positions included, so layer L *is* the
pipeline's own conditioning.
"""

from __future__ import annotations

from .encoders import TextEncoderSpec
from .encoders import final_norm as clip_final_norm  # both CLIP module layouts (transformers 4 and 5)
from .family import FamilyAdapter
from .lens import Part


class StableDiffusionAdapter(FamilyAdapter):
    family = "stable-diffusion"
    description = "Stable Diffusion 1.x/2.x (one CLIP text encoder)"
    pipeline_classes = ("StableDiffusionPipeline",)
    vae_in_fp32 = True  # SD VAEs can overflow in fp16 at large sizes; decoding in fp32 costs little

    @classmethod
    def matches(cls, pipe) -> bool:
        names = getattr(pipe, "components", {})
        return (
            {"text_encoder", "tokenizer", "unet", "vae", "scheduler"} <= set(names)
            and "text_encoder_2" not in names
            and hasattr(pipe, "encode_prompt")
            and type(getattr(pipe, "text_encoder", None)).__name__.startswith("CLIPText")
        )

    def encoder_specs(self):
        mask = bool(getattr(self.pipe.text_encoder.config, "use_attention_mask", False))
        return (TextEncoderSpec("text_encoder", "tokenizer", "clip", mask_to_encoder=mask),)

    def assemble(self, parts: dict[str, Part]) -> dict:
        return {"prompt_embeds": parts["text_encoder"].seq}


__all__ = ["StableDiffusionAdapter", "clip_final_norm"]
