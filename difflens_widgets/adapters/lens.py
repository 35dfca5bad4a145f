"""What the lens needs to know about one family of pipelines: its text side (the denoiser side, for feature taps,
is :mod:`.denoising`).

An adapter answers, for its family: which text encoders the pipeline has and how it uses each
(:class:`~.encoders.TextEncoderSpec`), which one is lensed, how the per-encoder pieces are assembled into the
pipeline's conditioning arguments (``prompt_embeds``, pooled embeddings, attention masks), and how to turn latents
into a cheap preview. The engine is family-agnostic: it only calls the methods below.

Multi-encoder pipelines: one encoder is lensed; the others contribute either the **empty prompt's** conditioning,
sequence and pooled vector alike (``other_encoders="empty"``, the default: otherwise they would hand the full prompt
to the model at every layer and hide what the lensed encoder knows at that depth; the paper's FLUX notebook feeds
the empty prompt's pooled CLIP vector for this reason) or the prompt's normal conditioning (``"normal"``). The
lensed encoder's own pooled embedding is the prompt's normal one unless ``lens_pooled=True``.
"""

from __future__ import annotations

import inspect
import math
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from . import encoders as enc
from .encoders import EncoderRun, TextEncoderSpec

_SENTINEL = "\ue000prompt\ue000"  # stands for the user's text when a template is rendered once to find its parts


def denoiser_name(pipe) -> str:
    """The component a pipeline denoises with: ``unet`` (SD 1/2/XL, IF) or ``transformer`` (SD3, FLUX, PixArt)."""
    for name in ("unet", "transformer"):
        if getattr(pipe, name, None) is not None:
            return name
    raise ValueError(f"{type(pipe).__name__} has neither a unet nor a transformer to denoise with")


def denoiser_of(pipe) -> Any:  # a diffusers ModelMixin: its .config is read everywhere
    return getattr(pipe, denoiser_name(pipe))


def real_first(items: list[dict], length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The items' sequences (1, T, W) with their masked positions moved to the front in order and padded to
    ``length``, and masks that say so (ones, then zeros): what a transformer that reads ``mask.sum()`` leading
    tokens as the caption (Lumina 2, CogView 4) must be handed, also when a mask has holes (a per-token lens: the empty
    prompt's tokens and one of the prompt's)."""
    seqs, masks = [], []
    for item in items:
        seq, mask = item["prompt_embeds"], item["prompt_attention_mask"]
        real = mask[0].bool().to(seq.device)
        kept = seq[:, real]
        seqs.append(torch.nn.functional.pad(kept, (0, 0, 0, length - kept.shape[1])))
        masks.append((torch.arange(length, device=mask.device) < kept.shape[1]).to(mask.dtype)[None])
    return torch.cat(seqs), torch.cat(masks)


@dataclass
class Part:
    """One encoder's share of a conditioning: sequence (1, T, W), pooled (1, P) and attention mask (1, T)."""

    seq: torch.Tensor | None
    pooled: torch.Tensor | None
    mask: torch.Tensor | None

    def tensor(self, name: str) -> torch.Tensor:
        """``seq`` or ``pooled``, where the family's design says this encoder gives it (a clear error if not)."""
        value = getattr(self, name)
        if value is None:
            raise ValueError(f"this text encoder gives no {name} embedding")
        return value


@dataclass
class EncodedPrompts:
    """One pass of every text encoder over ``texts``; the last text is always the empty prompt."""

    texts: list[str]
    runs: dict[str, EncoderRun]
    lensed: str

    @property
    def hidden_states(self) -> tuple[Any, ...]:
        """The lensed encoder's hidden states by layer (None where a run did not need one)."""
        return self.runs[self.lensed].hidden

    @property
    def device(self) -> torch.device:
        return next(h for h in self.hidden_states if h is not None).device

    @property
    def token_ids(self) -> torch.Tensor:
        return self.runs[self.lensed].ids

    @property
    def mask(self) -> torch.Tensor:
        return self.runs[self.lensed].mask

    @property
    def tokens(self) -> list[list[str]]:
        return self.runs[self.lensed].tokens

    @property
    def words(self) -> torch.Tensor:
        """Positions of the user's own text per text (bool): every real position unless a template wraps it."""
        return self.runs[self.lensed].words

    def shown(self, index: int) -> tuple[int, int]:
        """(first, end): the span of text ``index``'s positions a reader is shown (its words, its start and end
        tokens; never padding or a template's tokens)."""
        positions = self.words[index].nonzero().flatten().tolist()
        return (positions[0], positions[-1] + 1) if positions else (0, 0)

    @property
    def empty_index(self) -> int:
        return len(self.texts) - 1

    @property
    def num_layers(self) -> int:
        return len(self.hidden_states) - 1


class LensAdapter:
    """Base class; a family sets ``family``/``description`` and implements ``matches``, ``encoder_specs`` and
    ``assemble`` (plus ``call_kwargs``/``decode_preview`` where it differs from a latent-diffusion UNet)."""

    family: str = ""
    description: str = ""
    pipeline_classes: tuple[str, ...] = ()  # diffusers class names of this family (read before loading weights)
    cuda_dtype: torch.dtype = torch.float16  # the precision the family's weights are published and run in
    vae_in_fp32: bool = False  # its VAE overflows in fp16 (NaN → black images): keep it in fp32 under fp16
    uses_negative_embeddings: bool = True  # False: the family has no classifier-free guidance branch (FLUX)
    masks_padding: bool = False  # True: the denoiser never sees padding positions (attention mask passed to it)
    wraps_negative: bool = True  # False: the pipeline hands its negative prompt to the encoder bare (Lumina 2, Sana)

    def __init__(self, pipe, encoder: str | None = None):
        self.pipe = pipe
        self.specs = tuple(s for s in self.encoder_specs() if getattr(pipe, s.component, None) is not None)
        names = [s.component for s in self.specs]
        encoder = encoder or self.default_encoder()
        if encoder not in names:
            raise ValueError(
                f"encoder {encoder!r} is not a text encoder of this {self.family} pipeline; choose one of {names}"
            )
        self.spec = next(s for s in self.specs if s.component == encoder)

    # ---- what a family says -----------------------------------------------------------------------------------
    def guides(self, guidance_scale: float) -> bool:
        """Whether the pipeline runs a classifier-free guidance branch at this scale (diffusers: above 1; a family
        without the branch: never; Z-Image, whose formula is pos + g·(pos − neg): above 0)."""
        return guidance_scale > 1.0 and self.uses_negative_embeddings

    def guidance_kwargs(self, guidance_scale: float) -> dict:
        """The pipeline arguments that set its guidance to ``guidance_scale`` (diffusers' ``guidance_scale``;
        Qwen-Image calls classifier-free guidance ``true_cfg_scale``)."""
        return {"guidance_scale": guidance_scale}

    @classmethod
    def matches(cls, pipe) -> bool:
        return type(pipe).__name__ in cls.pipeline_classes

    def encoder_specs(self) -> tuple[TextEncoderSpec, ...]:
        raise NotImplementedError

    def default_encoder(self) -> str:
        return next(s.component for s in self.specs if s.sequence)

    def assemble(self, parts: dict[str, Part]) -> dict[str, torch.Tensor]:
        """The pipeline's conditioning arguments (positive side) from each encoder's part."""
        raise NotImplementedError

    @property
    def stops_by_flag(self) -> bool:
        """True when the pipeline has diffusers' ``callback_on_step_end`` (setting ``pipe._interrupt`` there stops
        the loop); older pipelines (PixArt, DeepFloyd IF) only have a per-step ``callback`` and are stopped by an
        exception raised from it (engine.StopDenoising). Read from the signature: PixArt's ``**kwargs`` would
        silently swallow an argument it does not know."""
        return "callback_on_step_end" in inspect.signature(type(self.pipe).__call__).parameters

    def step_callback_kwargs(self, on_step_end) -> dict:
        """Pipeline arguments that call ``on_step_end(pipe, step, timestep, {"latents": ...})`` after every step."""
        if self.stops_by_flag:
            return {"callback_on_step_end": on_step_end, "callback_on_step_end_tensor_inputs": ["latents"]}

        def callback(step, timestep, latents):
            on_step_end(self.pipe, step, timestep, {"latents": latents})

        return {"callback": callback, "callback_steps": 1}

    def preprocess(self, texts: list[str]) -> list[str]:
        """The pipeline's own text clean-up before tokenizing (identity for CLIP pipelines)."""
        return list(texts)

    def wrap(self, text: str) -> str:
        """The text as the pipeline hands it to the lensed encoder's tokenizer: a chat template or an instruction
        around the user's words (identity for CLIP and T5 pipelines)."""
        return text

    def templated(
        self, cleaned: list[str], bare: range = range(0)
    ) -> tuple[list[str], list[tuple[int, int] | None] | None]:
        """Texts (already :meth:`preprocess`-ed) wrapped as the pipeline does, with the character span of the user's
        text in each (None when nothing is wrapped; a text's None: left ``bare``, as a pipeline that does not wrap
        its negative prompt): a template's tokens are the family's business, never a word to show."""
        wrapped = [text if i in bare else self.wrap(text) for i, text in enumerate(cleaned)]
        if wrapped == cleaned:
            return cleaned, None
        prefix, found, suffix = self.wrap(_SENTINEL).partition(_SENTINEL)
        spans: list[tuple[int, int] | None] = []
        for i, (full, text) in enumerate(zip(wrapped, cleaned)):
            if i in bare:
                spans.append(None)
                continue
            if found and full == prefix + text + suffix:
                start = len(prefix)
            elif text and text in full:
                start = full.find(text)
            else:
                raise ValueError(f"the {self.family} template changed the prompt {text!r}: it is not in {full!r}")
            spans.append((start, start + len(text)))
        return wrapped, spans

    def kept_positions(self, length: int, bare: bool = False) -> list[int] | None:
        """Which of a text's ``length`` encoder positions the pipeline hands its denoiser, in order (None: all;
        Qwen-Image drops its instruction's prefix, Sana keeps the first and the last ``max_sequence_length − 1``).
        ``bare``: a text the pipeline does not wrap (a negative prompt, for some families)."""
        return None

    def call_kwargs(self) -> dict:
        """Extra arguments for the pipeline call (e.g. turning off resolution binning)."""
        return {}

    # ---- geometry ---------------------------------------------------------------------------------------------
    @property
    def text_encoder(self):
        return getattr(self.pipe, self.spec.component)

    @property
    def denoiser(self) -> Any:
        """The UNet or transformer that the pipeline denoises with (a diffusers model: its ``config`` is read)."""
        return denoiser_of(self.pipe)

    @property
    def tunable_components(self) -> list[str]:
        """What a fine-tune (DreamBooth, LoRA) can change: every text encoder, then the denoiser."""
        return [s.component for s in self.specs] + [denoiser_name(self.pipe)]

    @property
    def text_width(self) -> int:
        """The lensed encoder's hidden width: its final norm's, which every layout has (CLIP's, T5's ``d_model``, a
        vision-language model's text half, whose width its top-level config does not hold)."""
        norm: Any = enc.final_norm(self.text_encoder)
        return int(norm.weight.shape[0])

    @property
    def encoder_name(self) -> str:
        return self.spec.component

    @property
    def num_layers(self) -> int:
        """L: blocks of the lensed encoder; lens layers are 0..L."""
        return enc.num_blocks(self.text_encoder)

    @property
    def own_layer(self) -> int:
        """The layer whose lens (with ``own_final_norm``) is the pipeline's own conditioning."""
        return self.num_layers - 1 if self.spec.penultimate else self.num_layers

    @property
    def own_final_norm(self) -> bool:
        return not self.spec.penultimate

    @property
    def size_multiple(self) -> int:
        return math.lcm(8, int(getattr(self.pipe, "vae_scale_factor", 8)))

    def check_size(self, height: int, width: int) -> None:
        """Refuse a size (already a multiple of :attr:`size_multiple`) the pipeline would not draw as asked (none
        here; HiDream redraws every size at its own area)."""

    def default_size(self) -> tuple[int, int]:
        """What the pipeline draws when no size is given: its ``default_sample_size`` (SDXL, SD3, FLUX) or its
        denoiser's ``sample_size``, times the VAE factor (1 in pixel space)."""
        denoiser = self.denoiser
        sample = getattr(self.pipe, "default_sample_size", None) or denoiser.config.sample_size
        side = int(sample) * int(getattr(self.pipe, "vae_scale_factor", 1))
        return side, side

    def signature(self) -> dict:
        """What must match for two pipelines to be compared layer by layer (see tuning.check_compatible)."""
        denoiser = self.denoiser
        return {
            "pipeline family": self.family,
            "lensed encoder": self.spec.component,
            "text-encoder layers": self.num_layers,
            "text-encoder width": self.text_width,
            "denoiser input channels": int(denoiser.config.in_channels),
            "denoiser sample size": getattr(denoiser.config, "sample_size", None),
            "denoiser conditioning width": (
                getattr(denoiser.config, "cross_attention_dim", None)
                or getattr(denoiser.config, "joint_attention_dim", None)
                or getattr(denoiser.config, "caption_channels", None)
                or getattr(denoiser.config, "cap_feat_dim", None)
            ),
        }

    # ---- text side --------------------------------------------------------------------------------------------
    def layers_read(self, layer: int) -> set[int]:
        """The hidden states the lens of ``layer`` reads (FLUX.2 stacks three, HiDream all up to it)."""
        return {layer}

    def needed_layers(self, spec: TextEncoderSpec, layers: list[int] | None) -> set[int] | None:
        """The hidden states of ``spec``'s encoder a run at ``layers`` reads (None: every one): the lensed encoder's
        at those layers and at its own (the negative and the empty prompt), any other encoder's own."""
        if layers is None:
            return None
        if spec is not self.spec:
            return self.layers_of_own_conditioning(spec)
        pooled = {enc.num_blocks(self.text_encoder)} if spec.pooled else set()  # its normal pooled vector
        return set().union(*(self.layers_read(l) for l in [*layers, self.own_layer])) | pooled

    def layers_of_own_conditioning(self, spec: TextEncoderSpec) -> set[int]:
        """The hidden states the pipeline's own conditioning takes from ``spec``'s encoder (HiDream: all)."""
        last = enc.num_blocks(getattr(self.pipe, spec.component))
        return {last - 1 if spec.penultimate else last} | ({last} if spec.pooled else set())

    def encode(
        self,
        texts: list[str],
        skip: tuple[int, ...] = (),
        prompts: int | None = None,
        layers: list[int] | None = None,
    ) -> EncodedPrompts:
        """Every encoder once over ``texts`` + the empty prompt; ``skip`` bypasses blocks of the lensed one for
        the first ``prompts`` texts only (the negative and empty prompts keep their normal conditioning). With
        ``layers``, only the hidden states a run at those layers reads are kept (:meth:`needed_layers`)."""
        texts = self.preprocess(texts) + [""]
        rows = len(texts) - 1 if prompts is None else prompts
        negatives = range(0) if self.wraps_negative else range(rows, len(texts) - 1)
        wrapped, spans = self.templated(texts, bare=negatives)
        for text, full in zip(texts[:-1], wrapped):
            dropped = enc.truncated(self.pipe, self.spec, full)
            if dropped:
                self.warn_truncated(text, enc.max_length(self.pipe, self.spec), dropped)
        length = enc.max_length(self.pipe, self.spec)
        kept = [self.kept_positions(length, bare=i in negatives) for i in range(len(texts))]
        runs = {
            s.component: enc.run_encoder(
                self.pipe,
                s,
                wrapped,
                skip if s is self.spec else (),
                rows,
                spans if s is self.spec else None,
                [k if k is not None else list(range(length)) for k in kept]
                if s is self.spec and any(k is not None for k in kept)
                else None,
                self.needed_layers(s, layers),
            )
            for s in self.specs
        }
        return EncodedPrompts(texts, runs, self.spec.component)

    def count_tokens(self, text: str) -> int:
        """Tokens of ``text`` a reader is shown in the lensed encoder (start, pieces, end; no padding, no template
        token): the tokenizer alone."""
        wrapped, spans = self.templated(self.preprocess([text]))
        _, batch, _ = enc.tokenize(self.pipe, self.spec, wrapped, offsets=spans is not None)
        if "attention_mask" not in batch:
            pad = getattr(enc.text_tokenizer(self.pipe, self.spec), "pad_token_id", None)
            return len([t for t in batch["input_ids"][0].tolist() if t != pad])
        return int(enc.word_positions(batch, spans)[0].sum())

    @property
    def max_tokens_per_text(self) -> int:
        """Positions per text in the lensed encoder's pass (every text is padded to it)."""
        return enc.max_length(self.pipe, self.spec)

    def lens(self, hidden: torch.Tensor, final_norm: bool = True) -> torch.Tensor:
        if not final_norm:
            return hidden
        with torch.no_grad():
            return enc.final_norm(self.text_encoder)(hidden)

    def lens_layer(self, hidden: tuple[torch.Tensor, ...], layer: int, rows: slice, final_norm: bool) -> torch.Tensor:
        """The lensed encoder's sequence at ``layer`` for texts ``rows``, shaped as the pipeline's conditioning:
        ``final_norm(h^l)`` (or ``h^l``). A family that reads several layers at once (FLUX.2) says here what
        reading "at layer l" means."""
        return self.lens(hidden[layer][rows], final_norm)

    def lens_vectors(self, seq: torch.Tensor) -> torch.Tensor:
        """What layer l says, (texts, tokens, width), from :meth:`lens_layer`'s conditioning-shaped tensor (the
        same, unless a family stacks several layers before the tokens: HiDream)."""
        return seq

    def check_lens_pooled(self) -> None:
        if self.spec.pooled is None:
            givers = [s.component for s in self.specs if s.pooled]
            raise ValueError(
                f"{self.spec.component} gives no pooled embedding in a {self.family} pipeline; "
                f"lens_pooled needs the lensed encoder to be one of {givers or 'none'}"
            )

    def lens_pooled(self, hidden: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """The lensed encoder's pooled embedding computed from layer l's state instead of the last block's."""
        self.check_lens_pooled()
        return enc.pooled(self.text_encoder, self.spec, hidden, ids)

    @property
    def pooled_is_lensed(self) -> bool:
        """True when the lensed encoder feeds the pipeline only through its pooled output (FLUX's CLIP)."""
        return not self.spec.sequence

    def normal_part(self, encoded: EncodedPrompts, component: str, index: int) -> Part:
        """What the pipeline itself would take from ``component`` for text ``index``."""
        spec = next(s for s in self.specs if s.component == component)
        run = encoded.runs[component]
        rows = slice(index, index + 1)
        encoder = getattr(self.pipe, component)
        if spec is self.spec:
            seq = self.lens_layer(run.hidden, self.own_layer, rows, self.own_final_norm)
        elif spec.penultimate:
            seq = run.hidden[-2][rows]
        else:
            with torch.no_grad():
                seq = enc.final_norm(encoder)(run.hidden[-1][rows])
        pooled = enc.pooled(encoder, spec, run.hidden[-1][rows], run.ids[rows]) if spec.pooled else None
        return Part(seq, pooled, run.mask[rows].to(seq.device))

    def conditioning(
        self, encoded: EncodedPrompts, index: int, seq: torch.Tensor, *, pooled=None, mask=None, other: str = "empty"
    ) -> dict[str, torch.Tensor]:
        """The pipeline's arguments for text ``index`` with the lensed encoder's sequence replaced by ``seq`` (and
        its pooled by ``pooled`` / mask by ``mask`` when given); other encoders per ``other``."""
        parts = {}
        for spec in self.specs:
            own = self.normal_part(encoded, spec.component, index)
            if spec is self.spec:
                parts[spec.component] = Part(
                    seq, own.pooled if pooled is None else pooled, own.mask if mask is None else mask
                )
            elif other == "empty":  # pooled vector too, or it would hand the whole prompt to the model (FLUX)
                parts[spec.component] = self.normal_part(encoded, spec.component, encoded.empty_index)
            else:
                parts[spec.component] = own
        return self.assemble(parts)

    def unconditional(self, encoded: EncodedPrompts, index: int, negative_given: bool) -> dict[str, torch.Tensor]:
        """The normal conditioning of the negative text ``index`` (what the pipeline's own CFG branch sees)."""
        return self.assemble({s.component: self.normal_part(encoded, s.component, index) for s in self.specs})

    def pipeline_kwargs(self, conds: list[dict], unconds: list[dict] | None) -> dict:
        kwargs = {key: torch.cat([c[key] for c in conds]) for key in conds[0]}
        if unconds is not None and self.uses_negative_embeddings:
            kwargs.update({f"negative_{key}": torch.cat([u[key] for u in unconds]) for key in unconds[0]})
        return kwargs

    # ---- image side -------------------------------------------------------------------------------------------
    latent_output_type = "latent"  # the output_type that stops the pipeline before decoding (the memory probe)

    def decode_preview(self, latents: torch.Tensor, height: int, width: int) -> np.ndarray:
        """A latent-diffusion preview: the VAE decode of (predicted clean) latents, as the pipeline's
        ``output_type="np"`` pixels (N × H × W × C in 0..1; the engine checks them finite before showing any)."""
        vae = self.pipe.vae
        with torch.no_grad():
            latents = latents.to(vae.dtype) / vae.config.scaling_factor + (getattr(vae.config, "shift_factor", 0) or 0)
            images = vae.decode(latents, return_dict=False)[0]
        return self.pipe.image_processor.postprocess(images, output_type="np")

    def final_images(self, pixels: np.ndarray) -> list[Image.Image]:
        """The pipeline's ``output_type="np"`` images as its ``output_type="pil"`` would give them (diffusers' own
        conversion; a family that stamps its PIL images, DeepFloyd IF's watermark, does it here too)."""
        return self.pipe.numpy_to_pil(pixels)

    @staticmethod
    def warn_truncated(prompt: str, kept: int, dropped: list[str], shown: int = 12) -> None:
        """One short line: the prompt and the cut part are abbreviated (a 1,000-word prompt must not print a
        page), and tokens the vocabulary does not know are named as such rather than as the end token."""
        head = prompt if len(prompt) <= 60 else prompt[:60] + "…"
        cut = " ".join(dropped[:shown]) + (f" … ({len(dropped)} tokens in all)" if len(dropped) > shown else "")
        warnings.warn(
            f"prompt {head!r} is longer than the text encoder's limit of {kept} tokens; this part was cut: {cut!r}",
            UserWarning,
            stacklevel=4,
        )
