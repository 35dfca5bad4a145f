"""The Diffusion Lens engine: one text-encoder pass, then every (layer, seed) image denoised in batched pipeline
calls with the exact noise the pipeline itself would draw for that seed.

Why the pipeline's own ``__call__`` does the denoising: it is the reference. Handing it ``prompt_embeds`` (one row
per (layer, seed)) and one ``torch.Generator`` per row makes the last layer reproduce ``pipe(prompt,
generator=manual_seed(s))`` by construction, for any scheduler, and keeps every family's quirks inside diffusers.
"""

from __future__ import annotations

import functools
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Sequence
from contextlib import contextmanager, nullcontext
import dataclasses
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from . import memory, options
from .adapters import adapter_for
from .adapters.encoders import execution_device
from .results import LensResult, Tokens


@dataclass
class Preview:
    """Handed to the progress callback at snapshot steps: the predicted clean image of each running item."""

    step: int
    items: list[tuple[int, int]]  # (layer, seed) per image
    images: list[Image.Image]
    token: int | None = None  # per_token runs: the lensed token's position


class StopDenoising(Exception):
    """Raised from a step callback to stop a pipeline that has no interrupt flag (the chunk is dropped)."""


ProgressCallback = Callable[[int, int, "Preview | None"], "bool | None"]

# One lock per pipeline object: runs of several Lens objects (several dashboards) on the same pipeline take turns,
# since a pipeline call is not re-entrant (its scheduler and interrupt flag are shared state).
_PIPELINE_LOCKS: "weakref.WeakKeyDictionary[object, threading.Lock]" = weakref.WeakKeyDictionary()
_LOCKS_GUARD = threading.Lock()


def pipeline_lock(pipe) -> threading.Lock:
    with _LOCKS_GUARD:
        return _PIPELINE_LOCKS.setdefault(pipe, threading.Lock())


@contextmanager
def recording_predictions(scheduler, sink: list):
    """Make ``scheduler.step`` also record its predicted clean sample (``pred_original_sample``) into ``sink``.

    The wrapper keeps the original signature (``functools.wraps``) because pipelines inspect it to decide whether
    to pass ``generator`` and ``eta``. Schedulers that do not expose a clean-sample prediction record ``None``.
    """
    original = scheduler.step

    @functools.wraps(original)
    def step(*args, **kwargs):
        return_dict = kwargs.pop("return_dict", True)
        out = original(*args, return_dict=True, **kwargs)
        sink[:] = [getattr(out, "pred_original_sample", None)]
        return out if return_dict else (out.prev_sample,)

    scheduler.step = step
    try:
        yield
    finally:
        del scheduler.step


@contextmanager
def quiet_progress_bar(pipe):
    """Silence the pipeline's own tqdm bar for the duration (the lens reports progress itself)."""
    previous = dict(getattr(pipe, "_progress_bar_config", {}))
    pipe.set_progress_bar_config(disable=True)
    try:
        yield
    finally:
        pipe._progress_bar_config = previous


class Lens:
    """Runs Diffusion Lens on one pipeline. Results are kept in a bounded LRU cache (``cache_size`` runs).

    ``encoder`` picks the text encoder to lens in a multi-encoder pipeline (e.g. ``"text_encoder"`` or
    ``"text_encoder_2"`` for SDXL); the default is the family's main sequence encoder (see the README's table).
    ``compile=True`` compiles the denoiser with ``torch.compile`` (once, in place) and keeps every chunk the same
    shape (the last one padded) so it compiles once per chunk size: worth it on a GPU for long or repeated runs.
    """

    def __init__(self, pipe, *, encoder: str | None = None, cache_size: int = 16, compile: bool = False):
        if isinstance(pipe, str):
            from .models import load_pipeline

            pipe = load_pipeline(pipe)
        self.pipe = pipe
        self.adapter = adapter_for(pipe, encoder)
        if isinstance(cache_size, bool) or not isinstance(cache_size, int) or cache_size < 0:
            raise ValueError(f"cache_size must be an integer ≥ 0 (0 = no cache), got {cache_size!r}")
        self.cache_size = cache_size
        self._cache: OrderedDict[tuple, LensResult] = OrderedDict()
        self._runs: set[threading.Event] = set()  # one cancel flag per run started and not yet finished
        self._runs_guard = threading.Lock()
        self.compile = bool(compile)
        if self.compile:
            compile_denoiser(self.adapter.denoiser)

    @classmethod
    def of(cls, model) -> "Lens":
        """``model`` itself if it is a Lens, else a Lens over it (a pipeline, "toy", a folder or a hub id): the
        one place where the API's "pipeline, name or Lens" arguments are coerced."""
        return model if isinstance(model, cls) else cls(model)

    @property
    def num_layers(self) -> int:
        """L: lens layers are 0..L (0 = token embeddings, L = the lensed encoder's last block)."""
        return self.adapter.num_layers

    @property
    def device(self) -> torch.device:
        return execution_device(self.pipe)

    def cancel(self) -> None:
        """Stop the runs in progress (and those waiting for the pipeline) between two denoiser calls; each returns
        what finished (``complete=False``). A run started after this call is not affected."""
        with self._runs_guard:
            for flag in self._runs:
                flag.set()

    def clear_cache(self) -> None:
        """Forget cached results (call after changing the pipeline's weights in place, e.g. loading a LoRA)."""
        self._cache.clear()

    def embed(self, prompt: str, layers: options.LayerSpec = None, *, final_norm: bool | None = None
              ) -> tuple[dict[int, np.ndarray], list[str]]:
        """The text side of the lens alone (no diffusion): ``({layer: lens embedding (tokens × width)}, tokens)``.

        One text-encoder pass; the embedding of layer l is exactly what ``run`` would condition on at layer l.
        """
        prompts = options.parse_prompts(prompt)
        if len(prompts) != 1:
            raise ValueError("embed takes one prompt")
        layer_list = options.parse_layers(layers, self.num_layers)
        final_norm = options.check_flag("final_norm", final_norm, allow_none=True)
        norm = self.adapter.own_final_norm if final_norm is None else final_norm
        encoded = self.adapter.encode(prompts)
        vectors = {l: self.adapter.lens(encoded.hidden_states[l][:1], norm)[0].float().cpu().numpy()
                   for l in layer_list}
        return vectors, Tokens(encoded.tokens[0], int(encoded.mask[0].sum()))

    # ------------------------------------------------------------------------------------------------------------
    def run(
        self,
        prompt: str | Sequence[str],
        layers: options.LayerSpec = None,
        seeds: options.SeedSpec = (0,),
        num_inference_steps: int = 20,
        guidance_scale: float = 7.5,
        negative_prompt: str | None = None,
        height: int | None = None,
        width: int | None = None,
        *,
        final_norm: bool | None = None,
        lens_negative: bool = False,
        tokens: str = "all",
        per_token: bool = False,
        skip_layers: Sequence[int] | int | None = None,
        other_encoders: str = "empty",
        lens_pooled: bool = False,
        text_from=None,
        snapshot_every: int | None = None,
        max_batch: int | None = None,
        sequential: bool = False,
        progress: ProgressCallback | None = None,
        use_cache: bool = True,
        dry_run: bool = False,
    ) -> LensResult | list[LensResult] | dict:
        """Lens ``prompt`` at ``layers`` for every seed in ``seeds``.

        Args:
            prompt: a string (→ one LensResult) or a list of strings (→ a list, one text-encoder pass for all).
            layers: ``hidden_states`` indices: None (all of 0..L), an int, a list, a range, or a string such as
                ``"0:12:2"`` (a Python slice over 0..L) or ``"0,4,8"``.
            seeds: the image for seed s starts from the noise ``pipe(prompt, generator=manual_seed(s))`` draws,
                the same for every layer.
            guidance_scale: ≤ 1 turns classifier-free guidance off (FLUX: the distilled guidance value).
            negative_prompt: the unconditional branch's text (default: what the pipeline uses), kept at its normal
                conditioning unless ``lens_negative`` lenses it at the same layer as the prompt.
            final_norm: apply the lensed encoder's final norm (default: as the pipeline does, i.e. True except for
                encoders whose pipeline conditions on a raw penultimate state, SDXL's and SD3's CLIPs). False on
                a final-norm family is the paper's ablation (App. A.3).
            tokens: which positions are lensed: ``"all"`` (default), ``"prompt"`` (start, prompt and end tokens;
                padding from the empty prompt's normal conditioning) or ``"padding"`` (the reverse).
            per_token: one result per real token (→ a list): at layer l the conditioning is the *empty prompt's*
                lens embedding at layer l with only that token's position replaced by the prompt's.
            skip_layers: blocks (1..L) of the lensed encoder to bypass (h^l = h^(l-1)) for the prompt; a
                knock-out experiment. The negative and empty prompts keep the whole encoder, so the unconditional
                branch (and the neutral context of ``tokens`` / ``per_token``) stays the normal one.
            other_encoders: multi-encoder pipelines: the encoders not lensed give the empty prompt's (default;
                their pooled vectors too, e.g. FLUX's CLIP when T5 is lensed) or the prompt's normal conditioning.
            lens_pooled: also lens the pooled embedding (when the lensed encoder gives one).
            text_from: a pipeline (or Lens) whose text encoder provides the lens embeddings, driving this
                pipeline's denoiser (cross-model lens); shapes must match.
            snapshot_every: also keep a preview of the predicted clean image every k denoising steps.
            max_batch: images per pipeline call (default: measured on CUDA, estimated on CPU; see
                :mod:`difflens_widgets.memory`). A call that runs out of memory is halved and retried.
            sequential: reference mode, one pipeline call per layer (for tests and benchmarks).
            progress: called as ``progress(done, total, preview)`` after every denoiser call (``preview`` is a
                :class:`Preview` at snapshot steps, else None); returning True cancels the run.
            dry_run: only check the arguments and return the resolved parameters (a dict), raising what ``run``
                would raise; no denoising. The dashboard and the command line refuse bad input with it.
        """
        prompts = options.parse_prompts(prompt)
        source = self._text_source(text_from)
        layer_list = options.parse_layers(layers, source.num_layers)
        seed_list = options.parse_seeds(seeds)
        steps = options.check_steps(num_inference_steps)
        guidance = options.check_guidance(guidance_scale)
        if negative_prompt is not None and not isinstance(negative_prompt, str):
            raise TypeError(f"negative_prompt must be a string or None, not {type(negative_prompt).__name__}")
        default_h, default_w = self.adapter.default_size()
        height = options.check_size("height", default_h if height is None else height, self.adapter.size_multiple)
        width = options.check_size("width", default_w if width is None else width, self.adapter.size_multiple)
        snapshot_every = options.check_positive_int("snapshot_every", snapshot_every)
        max_batch = options.check_positive_int("max_batch", max_batch)
        final_norm = options.check_flag("final_norm", final_norm, allow_none=True)
        for flag, value in (("lens_negative", lens_negative), ("per_token", per_token), ("lens_pooled", lens_pooled),
                            ("sequential", sequential), ("use_cache", use_cache)):
            options.check_flag(flag, value)
        progress = options.check_callback("progress", progress)
        options.check_work(len(layer_list) * len(seed_list) * len(prompts))
        token_range = options.check_choice("tokens", tokens, options.TOKEN_RANGES)
        other = options.check_choice("other_encoders", other_encoders, options.OTHER_ENCODERS)
        skip = options.parse_skip_layers(skip_layers, source.num_layers)
        if per_token and (len(prompts) != 1 or token_range != "all"):
            raise ValueError("per_token takes one prompt and tokens='all' (it defines its own context)")
        if token_range == "padding" and self.adapter.masks_padding:
            raise ValueError(f"tokens='padding' is meaningless for {self.adapter.family}: its denoiser masks "
                             "padding positions out of attention")
        if lens_pooled:
            source.check_lens_pooled()
        if source is not self.adapter:
            self._check_cross_model(source)

        params = dict(
            layers=layer_list, seeds=seed_list, num_inference_steps=steps, guidance_scale=guidance,
            negative_prompt=negative_prompt, height=height, width=width,
            final_norm=source.own_final_norm if final_norm is None else bool(final_norm),
            lens_negative=bool(lens_negative), tokens=token_range, per_token=bool(per_token), skip_layers=skip,
            other_encoders=other, lens_pooled=bool(lens_pooled) or source.pooled_is_lensed,
            encoder=source.encoder_name,
            text_from=None if source is self.adapter else _name_of(source.pipe) or f"pipeline@{id(source.pipe):x}",
            snapshot_every=snapshot_every,
            scheduler=type(self.pipe.scheduler).__name__, scheduler_config=dict(self.pipe.scheduler.config),
            pipeline=type(self.pipe).__name__, model=_name_of(self.pipe),
            family=self.adapter.family, num_layers=source.num_layers, sequential=bool(sequential),
        )
        if options.check_flag("dry_run", dry_run):
            return params
        keys = [self._cache_key(p, params) for p in prompts]
        if use_cache and not per_token and all(k in self._cache for k in keys):
            results = [self._cache_get(k) for k in keys]
            return results[0] if isinstance(prompt, str) else results

        cancelled = threading.Event()  # registered before waiting for the pipeline: a cancel() then still counts
        with self._runs_guard:
            self._runs.add(cancelled)
        try:
            with pipeline_lock(self.pipe):
                results = self._run_locked(prompts, keys, params, source, max_batch, progress, use_cache,
                                           cancelled)
        finally:
            with self._runs_guard:
                self._runs.discard(cancelled)
        return results[0] if isinstance(prompt, str) and not per_token else results

    def _text_source(self, text_from):
        if text_from is None:
            return self.adapter
        if isinstance(text_from, Lens):
            return text_from.adapter
        return adapter_for(text_from, self.adapter.encoder_name if hasattr(text_from, self.adapter.encoder_name)
                           else None)

    def _check_cross_model(self, source) -> None:
        """Lens embeddings of ``source`` must have the shape this pipeline's lensed encoder gives (cheap: text only)."""
        theirs = source.encode([]).hidden_states[0].shape[1:]
        ours = self.adapter.encode([]).hidden_states[0].shape[1:]
        if theirs != ours or source.spec.pooled != self.adapter.spec.pooled:
            raise ValueError(
                f"cross-model lens needs matching conditioning shapes: the text model's ({_label(source.pipe)}) "
                f"{source.encoder_name} gives {tuple(theirs)} (tokens × width) but this pipeline's "
                f"({_label(self.pipe)}) {self.adapter.encoder_name} gives {tuple(ours)}"
            )

    def _run_locked(self, prompts, keys, params, source, max_batch, progress, use_cache, cancelled
                    ) -> list[LensResult]:
        do_cfg = params["guidance_scale"] > 1.0 and self.adapter.uses_negative_embeddings
        negative = params["negative_prompt"]
        texts = prompts + ([negative or ""] if do_cfg else [])
        skip, count = params["skip_layers"], len(prompts)  # knock-outs apply to the prompts, not the negative
        encoded = self.adapter.encode(texts, skip if source is self.adapter else (), prompts=count)
        lensed = encoded if source is self.adapter else source.encode(texts, skip, prompts=count)  # the one pass
        plan = _Plan(self, source, encoded, lensed, dict(params, negative_index=len(prompts)), do_cfg)
        results = []
        for index, text in enumerate(prompts):
            variants = plan.per_token(index) if params["per_token"] else [(None, plan.conditions(index))]
            count = int(lensed.mask[index].sum()) if params["per_token"] else 1  # one pass per real token
            for number, (variant, (cond, uncond, embeddings)) in enumerate(variants):
                token = None if variant is None else variant[0]
                result = self._denoise_all(text, index, cond, uncond, embeddings, lensed, params, max_batch,
                                           share_progress(progress, number, count, token), variant, cancelled)
                if result.complete and use_cache and variant is None:
                    self._cache_put(keys[index], result)
                results.append(result)
                if not result.complete:
                    return results
        return results

    # ------------------------------------------------------------------------------------------------------------
    def _denoise_all(self, text, index, cond, uncond, embeddings, lensed, params, max_batch, progress, variant,
                     cancelled: threading.Event) -> LensResult:
        layers, seeds, steps = params["layers"], params["seeds"], params["num_inference_steps"]
        queue = [(l, s) for l in layers for s in seeds]
        if params["sequential"]:
            max_batch = len(seeds)  # one call per layer (halved within the layer on out-of-memory)
        plan = memory.ChunkPlan.for_run(self.device, params["height"], params["width"], len(queue), max_batch,
                                        getattr(self.adapter.denoiser, "dtype", None))
        images, snapshots = {}, {}
        state = {"done": 0, "total": steps * memory.chunk_count(len(queue), plan.size), "cancelled": False,
                 "stop_after_chunk": False, "flag": cancelled}
        started = time.perf_counter()
        with quiet_progress_bar(self.pipe):
            while queue and not state["cancelled"]:
                chunk = _take(queue, plan.size, per_layer=params["sequential"])
                done_before = state["done"]
                plan.before_chunk()
                try:
                    chunk_images = self._denoise_chunk(self._padded(chunk, plan.size), cond, uncond, params,
                                                       snapshots, state, progress)[:len(chunk)]
                except Exception as err:  # noqa: BLE001 - only out-of-memory is retried, the rest re-raised
                    if not memory.is_out_of_memory(err):
                        raise
                    cause = MemoryError(f"{type(err).__name__}: {err}")
                    del err  # its traceback holds the failed chunk's tensors
                    memory.release_cached(self.device)
                    plan.after_out_of_memory(len(chunk), cause)
                    for item in chunk:
                        snapshots.pop(item, None)
                    state["done"] = done_before
                    state["total"] = done_before + steps * memory.chunk_count(len(queue), plan.size)
                    continue
                if state["cancelled"]:
                    break
                del queue[:len(chunk)]
                images.update(zip(chunk, chunk_images))
                state["cancelled"] = state["stop_after_chunk"] and bool(queue)  # a stop at the last step
                plan.after_chunk(len(chunk))
                state["total"] = state["done"] + steps * memory.chunk_count(len(queue), plan.size)
        extra = {} if variant is None else {"token_position": variant[0], "token": variant[1]}
        params = dict(params, prompt=text, negative_prompt=params["negative_prompt"] or "",
                      seconds=round(time.perf_counter() - started, 3), images_per_call=plan.sizes_used,
                      memory_events=plan.events, real_tokens=int(lensed.mask[index].sum()), **extra)
        return LensResult(
            prompt=text, layers=layers, seeds=seeds, images=images,
            embeddings={l: embeddings[l][0].float().cpu().numpy() for l in layers},
            tokens=lensed.tokens[index], params=params, snapshots=snapshots, complete=not state["cancelled"],
        )

    def _padded(self, chunk: list, size: int) -> list:
        """With ``compile=True`` every call has the same batch (the last chunk repeats its last item), so the
        compiled denoiser is not recompiled for a short last chunk."""
        if not self.compile or len(chunk) >= size:
            return chunk
        return chunk + [chunk[-1]] * (size - len(chunk))

    def _denoise_chunk(self, chunk, cond, uncond, params, snapshots, state, progress) -> list[Image.Image]:
        """One pipeline call for the (layer, seed) pairs in ``chunk`` (repeated pairs are padding)."""
        steps, every = params["num_inference_steps"], params["snapshot_every"]
        kwargs = self.adapter.pipeline_kwargs([cond[l] for l, _ in chunk],
                                              None if uncond is None else [uncond[l] for l, _ in chunk])
        generators = [torch.Generator(self.device).manual_seed(s) for _, s in chunk]
        predicted: list = [None]

        def on_step_end(pipe, i, t, tensors):
            state["done"] += 1
            preview = None
            if every and ((i + 1) % every == 0 or i + 1 == steps):
                latents = predicted[0] if predicted[0] is not None else tensors["latents"]
                previews = self.adapter.decode_preview(latents, params["height"], params["width"])
                unique = dict(zip(chunk, previews))  # padding repeats an item: keep one preview of it
                for item, img in unique.items():
                    snapshots.setdefault(item, []).append((i + 1, img))
                preview = Preview(i + 1, list(unique), list(unique.values()))
            stop = progress(state["done"], state["total"], preview) if progress else False
            if (stop or state["flag"].is_set()) and i + 1 == steps:  # the chunk is done: keep it, stop after
                state["stop_after_chunk"] = True
            elif stop or state["flag"].is_set():
                state["cancelled"] = True
                pipe._interrupt = True
                if not self.adapter.stops_by_flag:  # an older pipeline with no interrupt flag
                    raise StopDenoising
            return tensors

        callbacks = self.adapter.step_callback_kwargs(on_step_end)
        recorder = recording_predictions(self.pipe.scheduler, predicted) if every else nullcontext()
        try:
            with recorder:
                out = self.pipe(
                    **kwargs, **self.adapter.call_kwargs(), **callbacks,
                    num_inference_steps=steps, guidance_scale=params["guidance_scale"],
                    height=params["height"], width=params["width"], generator=generators, output_type="pil",
                )
        except StopDenoising:
            return []
        return out.images

    # ------------------------------------------------------------------------------------------------------------
    @staticmethod
    def _cache_key(prompt: str, params: dict) -> tuple:
        frozen = tuple(sorted((k, repr(v)) for k, v in params.items()))
        return (prompt, frozen)

    def _cache_get(self, key: tuple) -> LensResult:
        self._cache.move_to_end(key)
        return self._cache[key].copy()

    def _cache_put(self, key: tuple, result: LensResult) -> None:
        if self.cache_size == 0:
            return
        self._cache[key] = result.copy()
        self._cache.move_to_end(key)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)


def share_progress(progress, number: int, count: int, token: int | None = None) -> ProgressCallback | None:
    """Progress of the ``number``-th of ``count`` equal passes reported as one run's (per-token passes, raw then
    tuned, the panels of a comparison); previews tagged with ``token``, the pass's token position, when given."""
    if progress is None or (count == 1 and token is None):
        return progress

    def report(done, total, preview):
        if preview is not None and token is not None:
            preview = dataclasses.replace(preview, token=token)
        return progress(number * total + done, count * total, preview)

    return report


def _take(queue: list, size: int, per_layer: bool) -> list:
    """The next chunk: up to ``size`` items from the front; with ``per_layer`` never past the first item's layer."""
    chunk = queue[:size]
    if per_layer:
        chunk = [item for item in chunk if item[0] == queue[0][0]]
    return chunk


def compile_denoiser(module: torch.nn.Module) -> None:
    """``torch.compile`` the denoiser in place, once (a second Lens on the same pipeline reuses it)."""
    if getattr(module, "_difflens_compiled", False):
        return
    module.compile(fullgraph=False, dynamic=False)
    module._difflens_compiled = True


def _name_of(pipe) -> str | None:
    return getattr(pipe.config, "_name_or_path", None) or None


def _label(pipe) -> str:
    return _name_of(pipe) or type(pipe).__name__


class _Plan:
    """Builds the conditioning of every (prompt, layer): lens embedding of the source encoder, token range or
    per-token splicing, then the target pipeline's own assembly (other encoders, pooled, masks)."""

    def __init__(self, lens: Lens, source, encoded, lensed, params, do_cfg: bool):
        self.target, self.source = lens.adapter, source
        self.encoded, self.lensed, self.params, self.do_cfg = encoded, lensed, params, do_cfg
        self.norm = params["final_norm"]
        self.hidden = lensed.hidden_states
        self.empty = lensed.empty_index

    def lens_at(self, layer: int, row: int) -> torch.Tensor:
        return self.source.lens(self.hidden[layer][row:row + 1], self.norm)

    def normal_seq(self, row: int) -> torch.Tensor:
        return self.source.normal_part(self.lensed, self.source.encoder_name, row).seq

    def pooled_at(self, layer: int, row: int):
        if not self.params["lens_pooled"]:
            return None
        return self.source.lens_pooled(self.hidden[layer][row:row + 1], self.lensed.token_ids[row:row + 1])

    def _cond(self, index: int, seq, layer: int, mask=None) -> dict:
        return self.target.conditioning(self.encoded, index, seq, pooled=self.pooled_at(layer, index), mask=mask,
                                        other=self.params["other_encoders"])

    def _uncond(self, layers) -> dict | None:
        if not self.do_cfg:
            return None
        neg = self.params["negative_index"]
        if self.params["lens_negative"]:
            return {l: self.target.conditioning(self.encoded, neg, self.lens_at(l, neg),
                                                pooled=self.pooled_at(l, neg), other="normal") for l in layers}
        normal = self.target.unconditional(self.encoded, neg, self.params["negative_prompt"] is not None)
        return {l: normal for l in layers}

    def conditions(self, index: int):
        layers, token_range = self.params["layers"], self.params["tokens"]
        embeddings = {l: self.lens_at(l, index) for l in layers}
        sequences = dict(embeddings)
        if token_range != "all":
            real = self.lensed.mask[index].bool().to(self.hidden[0].device)
            keep = real if token_range == "prompt" else ~real
            neutral = self.normal_seq(self.empty)
            sequences = {l: torch.where(keep[None, :, None], e, neutral) for l, e in embeddings.items()}
        cond = {l: self._cond(index, sequences[l], l) for l in layers}
        return cond, self._uncond(layers), embeddings

    def per_token(self, index: int):
        """One (variant, conditions) per real position of prompt ``index``."""
        layers = self.params["layers"]
        mask = self.lensed.mask[index]
        positions = [p for p in range(mask.shape[0]) if mask[p]]
        if not positions:
            raise ValueError("per_token needs a prompt with at least one token")
        empty_mask = self.lensed.mask[self.empty:self.empty + 1].to(self.hidden[0].device)
        embeddings = {l: self.lens_at(l, index) for l in layers}
        neutral = {l: self.lens_at(l, self.empty) for l in layers}
        uncond = self._uncond(layers)
        for p in positions:
            cond = {}
            for l in layers:
                seq = neutral[l].clone()
                seq[:, p] = embeddings[l][:, p]
                token_mask = empty_mask.clone()
                token_mask[:, p] = 1
                cond[l] = self._cond(index, seq, l, mask=token_mask)
            yield (p, self.lensed.tokens[index][p]), (cond, uncond, embeddings)
