"""Text encoders as pipelines use them: CLIP (causal, final LayerNorm, optional projection), T5 (bidirectional,
final RMS norm) and decoder-only language models (Qwen, Llama, Mistral, Gemma, GLM: causal, final RMS norm ``norm``).
One :class:`TextEncoderSpec` says how a pipeline tokenizes for an encoder and which of its outputs it
conditions on; :func:`run_encoder` returns every hidden state *before* the final norm, so the lens of layer l is
always ``final_norm(h^l)`` and a pipeline's own conditioning is one of those (or the raw penultimate state).

Both transformers 4 and 5 module layouts are handled (transformers 5's ``CLIPTextModel`` has no ``text_model``).
"""

from __future__ import annotations

import functools
import inspect
import threading
import weakref
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import torch

# One lock per text-encoder module and per tokenizer: a pass installs a hook on the encoder's final norm and may patch
# its blocks, and a fast tokenizer's padding/truncation state is mutable ("Already borrowed" when two threads call
# it). So two passes over the same encoder or tokenizer (two dashboards, a notebook cell beside a background run, a
# base and a tuned pipeline sharing them) take turns. Order, everywhere: the tokenizer's lock, then the encoder's.
_LOCKS: weakref.WeakKeyDictionary[object, threading.RLock] = weakref.WeakKeyDictionary()
_LOCKS_GUARD = threading.Lock()


def object_lock(obj) -> threading.RLock:
    with _LOCKS_GUARD:
        return _LOCKS.setdefault(obj, threading.RLock())


@dataclass(frozen=True)
class TextEncoderSpec:
    """How one pipeline uses one text encoder.

    ``penultimate``: the pipeline conditions on ``hidden_states[-2]`` without the final norm (SDXL, SD3's CLIPs);
    otherwise on the final norm of the last block. ``pooled``: None, ``"pooler"`` (final-normed end-token state,
    CLIP's ``pooler_output``) or ``"projection"`` (``text_projection`` of it, CLIP's ``text_embeds``).
    ``mask_to_encoder``: the pipeline passes the attention mask to the encoder (T5 in IF and PixArt).
    ``max_length``: tokens per prompt (None: the tokenizer's ``model_max_length``).
    """

    component: str
    tokenizer: str
    kind: str  # "clip" | "t5" | "llm" (a decoder-only language model)
    max_length: int | None = None
    penultimate: bool = False
    pooled: str | None = None
    mask_to_encoder: bool = False
    sequence: bool = True  # False: the pipeline uses only this encoder's pooled output (FLUX's CLIP)
    # False: the (rendered) template already holds the start token, so the tokenizer must not add one (a chat
    # template tokenized as apply_chat_template does: FLUX.2 [dev])
    add_special_tokens: bool = True
    # the pipeline's own re-arrangement of the tokenized batch (CogView 4 left-pads each text to a multiple of 16):
    # (batch, tokenizer) -> batch with input_ids, attention_mask (what the encoder and the denoiser see), offsets and
    # own_tokens (the text's own tokens, shown to a reader)
    arrange: Callable | None = None


@dataclass
class EncoderRun:
    """One pass of one encoder over a batch of texts. ``hidden[l]`` is (batch, tokens, width), pre final norm (None
    for a layer the pass was not asked to keep)."""

    hidden: tuple[Any, ...]
    ids: torch.Tensor
    mask: torch.Tensor
    tokens: list[list[str]]
    # the positions of the user's own text (bool, batch × tokens): every real position (start and end tokens
    # included) unless the pipeline wraps prompts in a template, whose tokens are then left out
    words: torch.Tensor


def _norm_name(module) -> str | None:
    """The attribute holding a text model's final norm: ``final_layer_norm`` (CLIP, T5) or ``norm`` next to its
    ``layers`` (a decoder-only language model's base model)."""
    if hasattr(module, "final_layer_norm"):
        return "final_layer_norm"
    if hasattr(module, "norm") and isinstance(getattr(module, "layers", None), torch.nn.ModuleList):
        return "norm"
    return None


def inner_model(encoder) -> Any:
    """The module holding the encoder's blocks and final norm: ``text_model`` (transformers 4 CLIP, any
    ``CLIPTextModelWithProjection``), the model itself (transformers 5 ``CLIPTextModel``, a language model's base
    model such as ``Qwen3Model``), T5's ``encoder``, a ``...ForCausalLM``'s ``model``, or the text half of a
    vision-language model (Qwen2.5-VL's ``model.language_model``: Qwen-Image reads text only)."""
    for name in ("text_model", "encoder", "model"):
        inner = getattr(encoder, name, None)
        if not isinstance(inner, torch.nn.Module):
            continue
        if _norm_name(inner):
            return inner
        text_half = getattr(inner, "language_model", None)
        if isinstance(text_half, torch.nn.Module) and _norm_name(text_half):
            return text_half
    if _norm_name(encoder):
        return encoder
    raise ValueError(
        f"{type(encoder).__name__} has no final norm; expected a CLIP or T5 text encoder or a decoder-only language "
        "model (a base model with `layers` and `norm`, or its ...ForCausalLM)"
    )


def final_norm(encoder) -> torch.nn.Module:
    inner = inner_model(encoder)
    return getattr(inner, _norm_name(inner) or "final_layer_norm")


def blocks(encoder) -> torch.nn.ModuleList:
    """The encoder's transformer blocks, in order (block l turns h^(l-1) into h^l)."""
    inner = inner_model(encoder)
    if hasattr(inner, "block"):  # T5Stack
        return inner.block
    if isinstance(getattr(inner, "layers", None), torch.nn.ModuleList):  # a decoder-only language model
        return inner.layers
    return inner.encoder.layers  # CLIP


def num_blocks(encoder) -> int:
    return len(blocks(encoder))


def _bypass(block: torch.nn.Module, rows: int | None = None):
    """Make ``block`` an identity on its hidden states (the residual passes through) until the returned undo is
    called; with ``rows``, only for the first ``rows`` texts of the batch (the prompts: the negative and empty
    prompts keep the whole encoder). Its other outputs (T5's position bias) are kept, so later blocks run as
    usual. ``forward`` itself is wrapped, not hooked, so transformers' own hidden-state recording sees the
    bypassed output."""
    original = block.forward

    @functools.wraps(original)
    def forward(*args, **kwargs):
        output = original(*args, **kwargs)
        hidden_in = args[0] if args else kwargs["hidden_states"]
        hidden_out = output[0] if isinstance(output, tuple) else output
        if rows is None:
            hidden = hidden_in
        else:
            bypassed = torch.arange(hidden_in.shape[0], device=hidden_in.device) < rows
            hidden = torch.where(bypassed[:, None, None], hidden_in, hidden_out)
        return (hidden,) + tuple(output[1:]) if isinstance(output, tuple) else hidden

    block.forward = forward
    return lambda: delattr(block, "forward")


def execution_device(pipe) -> torch.device:
    """Where the pipeline computes: its ``_execution_device`` under CPU offload (weights may sit on the CPU or on
    ``meta`` between calls), else its device."""
    return getattr(pipe, "_execution_device", None) or pipe.device


def max_length(pipe, spec: TextEncoderSpec) -> int:
    return spec.max_length or text_tokenizer(pipe, spec).model_max_length


def text_tokenizer(pipe, spec: TextEncoderSpec):
    """The tokenizer of ``spec``'s encoder: the pipeline's component, or the tokenizer inside it where the component
    is a multimodal processor (FLUX.2 [dev] loads Mistral's ``PixtralProcessor`` as its tokenizer)."""
    from transformers import ProcessorMixin

    component = getattr(pipe, spec.tokenizer)
    return component.tokenizer if isinstance(component, ProcessorMixin) else component


def tokenize(pipe, spec: TextEncoderSpec, texts: list[str], offsets: bool = False):
    """The pipeline's tokenization of ``texts`` (padded to the encoder's length); with ``offsets``, also each
    token's character span (``offset_mapping``, fast tokenizers), to find the user's words inside a template."""
    tokenizer = text_tokenizer(pipe, spec)
    limit = max_length(pipe, spec)
    with object_lock(tokenizer):
        batch = tokenizer(
            texts,
            padding="max_length",
            max_length=limit,
            truncation=True,
            add_special_tokens=spec.add_special_tokens,
            return_tensors="pt",
            **({"return_offsets_mapping": True} if offsets or spec.arrange else {}),
        )
    if spec.arrange is not None:
        batch = spec.arrange(batch, tokenizer)
    return tokenizer, batch, limit


def chat_prompt(tokenizer, text: str, system: str | None = None, answer: bool = True, **template_options) -> str:
    """``text`` as one user turn of the tokenizer's (or processor's) chat template, after a ``system`` message if
    given (content as a list of typed parts then, as multimodal templates take it), ready for the assistant's answer
    unless ``answer`` is False (the way FLUX.2 and Z-Image hand a prompt to their language model;
    ``template_options`` such as ``enable_thinking``)."""
    messages: list[dict[str, Any]]
    if system is None:
        messages = [{"role": "user", "content": text}]
    else:
        messages = [
            {"role": "system", "content": [{"type": "text", "text": system}]},
            {"role": "user", "content": [{"type": "text", "text": text}]},
        ]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=answer, **template_options)


def word_positions(batch, spans: list[tuple[int, int] | None] | None) -> torch.Tensor:
    """Which positions hold the user's own text: those whose characters overlap ``spans[i]`` (the user's text inside
    the i-th templated text), or every real position when nothing is templated (``spans`` None, or a text's span
    None: a negative prompt that the pipeline does not wrap)."""
    # the text's own tokens: every real position, unless the pipeline's arrangement added pads it hands on too
    real = (batch["own_tokens"] if "own_tokens" in batch else batch["attention_mask"]).bool()
    if spans is None:
        return real
    offsets = batch["offset_mapping"]
    bare = torch.tensor([span is None for span in spans])[:, None]
    starts = torch.tensor([span[0] if span else 0 for span in spans])[:, None]
    ends = torch.tensor([span[1] if span else 0 for span in spans])[:, None]
    return real & (bare | ((offsets[..., 0] < ends) & (offsets[..., 1] > starts)))


def word_pieces(pipe, spec: TextEncoderSpec, word: str) -> list[str]:
    """How the pipeline's tokenizer splits ``word`` (under the tokenizer's lock)."""
    tokenizer = text_tokenizer(pipe, spec)
    with object_lock(tokenizer):
        return tokenizer.tokenize(word)


def run_encoder(
    pipe,
    spec: TextEncoderSpec,
    texts: list[str],
    skip: tuple[int, ...] = (),
    skip_rows: int | None = None,
    spans: list[tuple[int, int] | None] | None = None,
    kept: list[list[int]] | None = None,
    layers: set[int] | None = None,
) -> EncoderRun:
    """Tokenize ``texts`` exactly as the pipeline does and run the encoder once, keeping every hidden state before
    the final norm — or only ``layers`` of them (the others None: a 40-layer encoder read at two layers keeps two).
    ``skip`` holds block numbers (1..L) whose output is replaced by their input, for the first ``skip_rows`` texts
    (None: all). ``spans``: where the user's text sits in each (templated) text. ``kept``: the positions of each text
    the pipeline hands on (Qwen-Image and Sana drop most of their instruction's), so that every position the
    engine sees (tokens, words, attention maps) is one the denoiser sees."""
    encoder = getattr(pipe, spec.component)
    tokenizer, batch, _ = tokenize(pipe, spec, texts, offsets=spans is not None)
    device = execution_device(pipe)
    mask = batch.attention_mask.to(device)
    captured: list[torch.Tensor] = []
    owner = threading.get_ident()
    stack_of_blocks = blocks(encoder)
    count = len(stack_of_blocks)
    states: dict[int, torch.Tensor] = {}

    def capture(module, args):  # only this pass's call: another thread may apply the norm meanwhile (a lens)
        if threading.get_ident() == owner:
            captured.append(args[0])

    def keep_state(number: int):
        def hook(module, args, kwargs, output=None):
            if threading.get_ident() != owner:
                return
            if number == 0:  # the first block's input: the embeddings
                states[0] = args[0] if args else kwargs["hidden_states"]
            else:
                states[number] = output[0] if isinstance(output, tuple) else output

        return hook

    with object_lock(encoder), ExitStack() as stack, torch.no_grad():
        norm_hook = final_norm(encoder).register_forward_pre_hook(capture)
        stack.callback(norm_hook.remove)
        for number in skip:
            stack.callback(_bypass(stack_of_blocks[number - 1], skip_rows))
        for number in sorted(layers or ()):
            if number == 0:
                handle = stack_of_blocks[0].register_forward_pre_hook(keep_state(0), with_kwargs=True)
            elif number < count:
                handle = stack_of_blocks[number - 1].register_forward_hook(keep_state(number), with_kwargs=True)
            else:
                continue  # the last layer is the final norm's input, captured anyway
            stack.callback(handle.remove)
        out = encoder(
            batch.input_ids.to(device),
            attention_mask=mask if spec.mask_to_encoder else None,
            output_hidden_states=layers is None,
            **(_language_model_kwargs(encoder) if spec.kind == "llm" else {}),
        )
    if layers is None:
        hidden: list[torch.Tensor | None] = list(out.hidden_states)
    else:
        hidden = [states.get(number) for number in range(count + 1)]
    if captured:  # T5 and language models report their last state after the final norm, CLIP before: keep pre-norm
        hidden[-1] = captured[-1] if layers is None or count in layers else None
    tokens = [tokenizer.convert_ids_to_tokens(ids) for ids in batch.input_ids.tolist()]
    run = EncoderRun(tuple(hidden), batch.input_ids, batch.attention_mask, tokens, word_positions(batch, spans))
    return run if kept is None else _gathered(run, kept)


def _gathered(run: EncoderRun, kept: list[list[int]]) -> EncoderRun:
    """``run`` with only the ``kept`` positions of each text, in that order (as many for every text)."""
    index = torch.tensor(kept)

    def gather(tensor: torch.Tensor) -> torch.Tensor:
        rows = index.to(tensor.device)
        return torch.gather(
            tensor, 1, rows.view(*rows.shape, *[1] * (tensor.ndim - 2)).expand(*rows.shape, *tensor.shape[2:])
        )

    return EncoderRun(
        tuple(None if h is None else gather(h) for h in run.hidden),
        gather(run.ids),
        gather(run.mask),
        [[tokens[p] for p in positions] for tokens, positions in zip(run.tokens, kept)],
        gather(run.words),
    )


def _language_model_kwargs(encoder) -> dict:
    """A language model read for its hidden states: no key/value cache, and (a ``...ForCausalLM``) next-token
    logits for one position only, not a (tokens × vocabulary) tensor nobody reads."""
    parameters = inspect.signature(encoder.forward).parameters
    return {"use_cache": False, **({"logits_to_keep": 1} if "logits_to_keep" in parameters else {})}


def truncated(pipe, spec: TextEncoderSpec, text: str) -> list[str]:
    """The tokens of ``text`` that do not fit (empty when it fits)."""
    tokenizer, limit = text_tokenizer(pipe, spec), max_length(pipe, spec)
    with object_lock(tokenizer):
        full = tokenizer(text, add_special_tokens=spec.add_special_tokens).input_ids
    if len(full) <= limit:
        return []
    unknown = getattr(tokenizer, "unk_token_id", None)
    return [
        "<unknown>" if i == unknown else t
        for i, t in zip(full[limit - 1 : -1], tokenizer.convert_ids_to_tokens(full[limit - 1 : -1]))
    ]


def end_positions(encoder, ids: torch.Tensor) -> torch.Tensor:
    """Where CLIP pools: the end-of-text token (argmax of ids for the legacy eos id 2, as transformers does)."""
    eos = encoder.config.eos_token_id
    if eos == 2:
        return ids.argmax(dim=-1)
    return (ids == eos).int().argmax(dim=-1)


def pooled(encoder, spec: TextEncoderSpec, hidden: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """The pooled embedding from a (pre-norm) hidden state: final norm at the end token, projected if the pipeline
    uses ``text_embeds``. Applied to the last block's state this is exactly what the pipeline computes."""
    with torch.no_grad():
        normed = final_norm(encoder)(hidden)
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        vector = normed[rows, end_positions(encoder, ids.to(hidden.device))]
        if spec.pooled == "projection":
            vector = encoder.text_projection(vector)
    return vector
