"""The Diffusion Lens engine: one text-encoder pass, then every (layer, seed) image denoised in batched pipeline
calls with the exact noise the pipeline itself would draw for that seed.

Why the pipeline's own ``__call__`` does the denoising: it is the reference. Handing it ``prompt_embeds`` (one row
per (layer, seed)) and one ``torch.Generator`` per row makes the last layer reproduce ``pipe(prompt,
generator=manual_seed(s))`` by construction, for any scheduler, and keeps every family's quirks inside diffusers.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image

from ..adapters import adapter_for
from ..adapters.encoders import execution_device
from . import finite, lifecycle, memory, validate
from .attention import AttentionCapture, AttentionSettings, Site
from .conditioning import Conditioner
from .results import LensResult, Tokens
from .run import LensRun


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
_PIPELINE_LOCKS: weakref.WeakKeyDictionary[object, threading.Lock] = weakref.WeakKeyDictionary()
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
        return out if return_dict else out.to_tuple()  # as the scheduler's own tuple (PixArt reads [1] at 1 step)

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
        if isinstance(pipe, (str, os.PathLike)):
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
        lifecycle.track_lens(self)  # a run still going at interpreter exit is cancelled cleanly

    @classmethod
    def of(cls, model) -> Lens:
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

    @property
    def running(self) -> int:
        """Runs of this Lens started (or waiting for the pipeline) and not finished."""
        with self._runs_guard:
            return len(self._runs)

    def cancel(self) -> None:
        """Stop the runs in progress (and those waiting for the pipeline) between two denoiser calls; each returns
        what finished (``complete=False``). A run started after this call is not affected."""
        with self._runs_guard:
            for flag in self._runs:
                flag.set()

    def clear_cache(self) -> None:
        """Forget cached results (call after changing the pipeline's weights in place, e.g. loading a LoRA)."""
        self._cache.clear()

    def embed(
        self, prompt: str, layers: validate.LayerSpec = None, *, final_norm: bool | None = None
    ) -> tuple[dict[int, np.ndarray], list[str]]:
        """The text side of the lens alone (no diffusion): ``({layer: lens embedding (tokens × width)}, tokens)``.

        One text-encoder pass; the embedding of layer l is exactly what ``run`` would condition on at layer l.
        """
        prompts = validate.parse_prompts(prompt)
        if len(prompts) != 1:
            raise ValueError("embed takes one prompt")
        layer_list = validate.parse_layers(layers, self.num_layers)
        final_norm = validate.check_flag("final_norm", final_norm, allow_none=True)
        norm = self.adapter.own_final_norm if final_norm is None else final_norm
        encoded = self.adapter.encode(prompts, layers=layer_list)
        vectors = {
            l: self.adapter.lens_vectors(self.adapter.lens_layer(encoded.hidden_states, l, slice(0, 1), norm))[0]
            .float()
            .cpu()
            .numpy()
            for l in layer_list
        }
        return vectors, Tokens.shown_in(encoded, 0)

    # ------------------------------------------------------------------------------------------------------------
    def run(
        self,
        prompt: str | Sequence[str],
        *args,
        progress: ProgressCallback | None = None,
        dry_run: bool = False,
        **options,
    ) -> LensResult | list[LensResult] | dict:
        """Lens ``prompt`` at ``layers`` for every seed in ``seeds``: :meth:`resolve`, then :meth:`execute`.

        The arguments are :meth:`resolve`'s — ``layers``, ``seeds``, ``num_inference_steps``, ``guidance_scale``,
        ``negative_prompt``, ``height``, ``width`` (also by position, in that order) and every lens option — and:

        Args:
            progress: called as ``progress(done, total, preview)`` after every denoiser call (``preview`` is a
                :class:`Preview` at snapshot steps, else None); returning True cancels the run.
            dry_run: only check the arguments and return the resolved parameters (a dict; :meth:`resolve` gives
                them as a :class:`LensRun`) and the memory the run will hold (``"memory"``, see
                :func:`~difflens_widgets.core.memory.needs`); no text encoding, no denoising.
        """
        run = self.resolve(prompt, *args, **options)
        if validate.check_flag("dry_run", dry_run):
            return {**run.params(), **self.pipeline_facts(), "memory": self.memory_needs(run)}
        return self.execute(run, progress)

    def resolve(
        self,
        prompt: str | Sequence[str],
        layers: validate.LayerSpec = None,
        seeds: validate.SeedSpec = (0,),
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
        use_cache: bool = True,
        attention: bool = False,
        attention_steps=None,
        attention_resolutions=None,
        attention_heads=None,
    ) -> LensRun:
        """Check every argument and decide every default, once: the :class:`LensRun` that :meth:`execute` runs.

        Args:
            prompt: a string (→ one LensResult) or a list of strings (→ a list, one text-encoder pass for all).
            layers: ``hidden_states`` indices: None (all of 0..L), an int, a list, a range, or a string such as
                ``"0:12:2"`` (a Python slice over 0..L) or ``"0,4,8"``.
            seeds: the image for seed s starts from the noise ``pipe(prompt, generator=manual_seed(s))`` draws,
                the same for every layer.
            guidance_scale: ≤ 1 turns classifier-free guidance off (FLUX: the distilled guidance value; Z-Image:
                only 0 does, its formula being pos + g·(pos − neg)).
            negative_prompt: the unconditional branch's text (default: what the pipeline uses), kept at its normal
                conditioning unless ``lens_negative`` lenses it at the same layer as the prompt.
            height, width: the image size (default: the pipeline's own).
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
                :mod:`difflens_widgets.core.memory`). A call that runs out of memory is halved and retried.
            sequential: reference mode, one pipeline call per layer (for tests and benchmarks).
            use_cache: answer a run already made from the cache (each answer an independent copy).
            attention: also capture where each token lands: the denoiser's text cross-attention per image,
                DAAM's way (see :mod:`difflens_widgets.core.attention`), read with :meth:`LensResult.attention`.
            attention_steps: the denoising steps summed (0-based, e.g. "0:10"; default every step).
            attention_resolutions: the attention sites kept, by the side of their query grid (default all).
            attention_heads: the heads averaged (default all).
        """
        prompts = validate.parse_prompts(prompt)
        source = self._text_source(text_from)
        layer_list = validate.parse_layers(layers, source.num_layers)
        seed_list = validate.parse_seeds(seeds)
        steps = validate.check_steps(num_inference_steps)
        guidance = validate.check_guidance(guidance_scale)
        if negative_prompt is not None and not isinstance(negative_prompt, str):
            raise TypeError(f"negative_prompt must be a string or None, not {type(negative_prompt).__name__}")
        default_h, default_w = self.adapter.default_size()
        height = validate.check_size("height", default_h if height is None else height, self.adapter.size_multiple)
        width = validate.check_size("width", default_w if width is None else width, self.adapter.size_multiple)
        self.adapter.check_size(height, width)
        snapshot_every = validate.check_positive_int("snapshot_every", snapshot_every)
        max_batch = validate.check_positive_int("max_batch", max_batch)
        final_norm = validate.check_flag("final_norm", final_norm, allow_none=True)
        for flag, value in (
            ("lens_negative", lens_negative),
            ("per_token", per_token),
            ("lens_pooled", lens_pooled),
            ("sequential", sequential),
            ("use_cache", use_cache),
        ):
            validate.check_flag(flag, value)
        token_range = validate.check_choice("tokens", tokens, validate.TOKEN_RANGES)
        other = validate.check_choice("other_encoders", other_encoders, validate.OTHER_ENCODERS)
        skip = validate.parse_skip_layers(skip_layers, source.num_layers)
        if per_token and (len(prompts) != 1 or token_range != "all"):
            raise ValueError("per_token takes one prompt and tokens='all' (it defines its own context)")
        passes = source.count_tokens(prompts[0]) if per_token else 1  # per_token: one pass per real token
        images = len(layer_list) * len(seed_list) * len(prompts) * passes
        validate.check_work(
            images, height, width, "layers × seeds × tokens" if per_token else "layers × seeds × prompts"
        )
        if token_range == "padding" and self.adapter.masks_padding:
            raise ValueError(
                f"tokens='padding' is meaningless for {self.adapter.family}: its denoiser masks "
                "padding positions out of attention"
            )
        if lens_pooled:
            source.check_lens_pooled()
        if source is not self.adapter:
            self._check_cross_model(source)
        norm = source.own_final_norm if final_norm is None else final_norm
        capture = self._attention_settings(attention, attention_steps, attention_resolutions, attention_heads, steps)
        pooled = lens_pooled or source.pooled_is_lensed
        return LensRun(
            prompts=tuple(prompts),
            layers=tuple(layer_list),
            seeds=tuple(seed_list),
            num_inference_steps=steps,
            guidance_scale=guidance,
            negative_prompt=negative_prompt,
            height=height,
            width=width,
            final_norm=norm,
            lens_negative=lens_negative,
            tokens=token_range,
            per_token=per_token,
            skip_layers=skip,
            other_encoders=other,
            lens_pooled=pooled,
            encoder=source.encoder_name,
            text_from=None if source is self.adapter else _name_of(source.pipe) or f"pipeline@{id(source.pipe):x}",
            snapshot_every=snapshot_every,
            attention=capture,
            max_batch=max_batch,
            sequential=sequential,
            use_cache=use_cache,
            family=self.adapter.family,
            num_layers=source.num_layers,
            images=images,
            normal_layer=self._normal_layer(source, norm, token_range, per_token, skip, lens_negative, other, pooled),
            single=isinstance(prompt, str),
            source=None if source is self.adapter else source,
        )

    def _capture(self, run: LensRun) -> AttentionCapture | None:
        if run.attention is None:
            return None
        sites = [Site(name, module, layout) for name, module, layout in self.adapter.attention_sites()]
        text = self.adapter.attention_text() or slice(0, None)  # resolve refused an encoder with no place
        return AttentionCapture(sites, run.attention, text, run.height / run.width, self.adapter.guidance_layout)

    def _attention_settings(self, attention, steps, resolutions, heads, num_steps: int):
        """The capture's settings, or None; refused where the family's denoiser cannot show where a token lands."""
        if not validate.check_flag("attention", attention):
            for name, value in (("attention_steps", steps), ("attention_resolutions", resolutions),
                                ("attention_heads", heads)):  # fmt: skip
                if value not in (None, ""):
                    raise ValueError(f"{name} selects parts of the attention maps: turn attention on too")
            return None
        if not self.adapter.attention_sites():
            raise ValueError(f"this {self.adapter.family} denoiser has no text cross-attention to read")
        if self.adapter.attention_text() is None:
            raise ValueError(
                f"{self.adapter.encoder_name} reaches this {self.adapter.family} denoiser only as a "
                "pooled vector: no token has a place in the image. Lens a sequence encoder "
                f"({', '.join(s.component for s in self.adapter.specs if s.sequence)}) for attention maps"
            )
        return AttentionSettings(
            steps=validate.parse_indices("attention_steps", steps, num_steps),
            resolutions=validate.parse_indices("attention_resolutions", resolutions, lower=1),
            heads=validate.parse_indices("attention_heads", heads),
        )

    def _normal_layer(self, source, final_norm, tokens, per_token, skip, lens_negative, other, pooled) -> int | None:
        """The layer whose image is exactly the pipeline's own image under these options, or None: only the lensed
        encoder's own layer, with the pipeline's own norm, every position, nothing knocked out, the negative
        branch normal, and any other encoders giving the prompt's own conditioning."""
        adapter = self.adapter
        if source is not adapter or per_token or tokens != "all" or skip or lens_negative:
            return None
        if final_norm != adapter.own_final_norm or (len(adapter.specs) > 1 and other != "normal"):
            return None
        if pooled and not adapter.pooled_is_lensed and adapter.own_layer != adapter.num_layers:
            return None  # a pooled vector lensed at the penultimate layer is not the pipeline's
        return adapter.own_layer

    def memory_needs(self, run: LensRun) -> dict:
        """What ``run`` will hold, in bytes, known before it runs: see :func:`memory.needs`."""
        source = run.source or self.adapter
        guided = self.adapter.guides(run.guidance_scale)
        kept = source.needed_layers(source.spec, list(run.layers))
        return memory.needs(
            self.pipe.components,
            hidden_states=run.num_layers + 1 if kept is None else len(kept),
            texts=len(run.prompts) + 1 + int(guided),  # the prompts, the negative text, the empty prompt
            tokens=source.max_tokens_per_text,
            width=source.text_width,
            dtype=source.text_encoder.dtype,
            per_image=memory.cpu_image_bytes(run.height, run.width, getattr(self.adapter.denoiser, "dtype", None))
            if self.device.type == "cpu"
            else None,
        )

    def pipeline_facts(self) -> dict:
        """What a result records about the pipeline that made it (besides the run's options)."""
        return {
            "scheduler": type(self.pipe.scheduler).__name__,
            "scheduler_config": dict(self.pipe.scheduler.config),
            "pipeline": type(self.pipe).__name__,
            "model": _name_of(self.pipe),
        }

    def execute(self, run: LensRun, progress: ProgressCallback | None = None) -> LensResult | list[LensResult]:
        """Run a resolved :class:`LensRun` (from this Lens, or from another over a compatible pipeline: a tuned
        variant runs its base's run). One text-encoder pass, then every (layer, seed) image in batched calls."""
        if not isinstance(run, LensRun):
            raise TypeError(f"execute takes a LensRun (from Lens.resolve), not {type(run).__name__}")
        progress = validate.check_callback("progress", progress)
        text = run.source or self.adapter  # the encoder that gives the lens embeddings
        mine = (self.adapter.family, text.encoder_name, text.num_layers)
        if (run.family, run.encoder, run.num_layers) != mine:
            raise ValueError(
                f"this run was resolved for a {run.family} pipeline lensing {run.encoder} "
                f"({run.num_layers} layers); this Lens is a {mine[0]} pipeline lensing {mine[1]} "
                f"({mine[2]} layers): resolve it with this Lens"
            )
        keys = [self._cache_key(p, run) for p in run.prompts]
        if run.use_cache and not run.per_token and all(k in self._cache for k in keys):
            results = [self._cache_get(k) for k in keys]
            return results[0] if run.single else results
        cancelled = lifecycle.new_run_flag()  # registered before waiting for the pipeline: a cancel() then counts
        with self._runs_guard:
            self._runs.add(cancelled)
        try:
            with pipeline_lock(self.pipe):
                results = self._run_locked(run, keys, progress, cancelled)
        finally:
            with self._runs_guard:
                self._runs.discard(cancelled)
        return results[0] if run.single and not run.per_token else results

    def _text_source(self, text_from):
        if text_from is None:
            return self.adapter
        if isinstance(text_from, Lens):
            return text_from.adapter
        return adapter_for(
            text_from, self.adapter.encoder_name if hasattr(text_from, self.adapter.encoder_name) else None
        )

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

    def _run_locked(self, run: LensRun, keys: list, progress, cancelled: threading.Event) -> list[LensResult]:
        source = run.source or self.adapter
        do_cfg = self.adapter.guides(run.guidance_scale)
        prompts = list(run.prompts)
        texts = prompts + ([run.negative_prompt or ""] if do_cfg else [])
        skip, count = run.skip_layers, len(prompts)  # knock-outs apply to the prompts, not the negative
        layers = list(run.layers)  # only the hidden states a run at these layers reads are kept
        encoded = self.adapter.encode(texts, skip if source is self.adapter else (), prompts=count, layers=layers)
        lensed = (  # the one pass
            encoded if source is self.adapter else source.encode(texts, skip, prompts=count, layers=layers)
        )
        conditioner = Conditioner(self.adapter, source, run, encoded, lensed, do_cfg)
        results = []
        for index, text in enumerate(prompts):
            variants = conditioner.per_token(index) if run.per_token else [(None, conditioner.conditions(index))]
            passes = int(lensed.words[index].sum()) if run.per_token else 1  # one pass per shown token
            tokens = Tokens.shown_in(lensed, index)
            for number, (variant, conditions) in enumerate(variants):
                token = None if variant is None else variant[0]
                cond, uncond, embeddings = conditions
                job = _Job(text, tokens, cond, uncond, embeddings, variant,
                           cfg=do_cfg, capture=self._capture(run))  # fmt: skip
                result = self._denoise_all(run, job, share_progress(progress, number, passes, token), cancelled)
                if result.complete and run.use_cache and variant is None:
                    self._cache_put(keys[index], result)
                results.append(result)
                if not result.complete:
                    return results
        return results

    # ------------------------------------------------------------------------------------------------------------
    def _denoise_all(self, run: LensRun, job: _Job, progress, cancelled: threading.Event) -> LensResult:
        queue = [(l, s) for l in run.layers for s in run.seeds]
        max_batch = len(run.seeds) if run.sequential else run.max_batch  # sequential: one call per layer
        plan = memory.ChunkPlan.for_run(
            self.device, run.height, run.width, len(queue), max_batch, getattr(self.adapter.denoiser, "dtype", None)
        )
        images: dict = {}
        non_finite: dict = {}  # (layer, seed) → where it went wrong (finite.LATENTS / finite.PIXELS)
        state = _ChunkState(cancelled, total=run.num_inference_steps * memory.chunk_count(len(queue), plan.size))
        started = time.perf_counter()
        if progress is not None:  # at once: the first denoiser call of a large image may take minutes
            progress(0, state.total, None)
        capture = job.capture
        with quiet_progress_bar(self.pipe):
            if plan.probe_first:  # before the capture's hooks: the probe's step is not an image of the run
                self._probe(run, job, plan, queue)
                state.total = run.num_inference_steps * memory.chunk_count(len(queue), plan.size)
        decoding = memory.decoding_in_sub_chunks(getattr(self.pipe, "vae", None), plan, self.device)
        with quiet_progress_bar(self.pipe), decoding, capture or nullcontext():  # each undone in finally
            while queue and not state.cancelled:
                chunk = _take(queue, plan.size, per_layer=run.sequential)
                done_before = state.done
                try:
                    chunk_images = self._denoise_chunk(run, self._padded(chunk, plan.size), job, state, progress)[
                        : len(chunk)
                    ]
                except Exception as err:  # noqa: BLE001 - only out-of-memory is retried, the rest re-raised
                    if not memory.is_out_of_memory(err):
                        raise
                    cause = MemoryError(f"{type(err).__name__}: {err}")
                    del err  # its traceback holds the failed chunk's tensors
                    memory.release_cached(self.device)
                    plan.after_out_of_memory(len(chunk), cause)
                    for item in chunk:
                        job.snapshots.pop(item, None)
                        if capture is not None:
                            capture.items.pop(item, None)  # the retry captures it again
                    state.done = done_before
                    state.total = done_before + run.num_inference_steps * memory.chunk_count(len(queue), plan.size)
                    continue
                if state.cancelled:
                    break
                del queue[: len(chunk)]
                for item, image in zip(chunk, chunk_images):
                    if isinstance(image, str):  # non-finite: named, never kept as an image
                        non_finite[item] = image
                        job.snapshots.pop(item, None)
                    else:
                        images[item] = image
                state.cancelled = state.stop_after_chunk and bool(queue)  # a stop at the last step
                plan.after_chunk(len(chunk))
                state.total = state.done + run.num_inference_steps * memory.chunk_count(len(queue), plan.size)
        maps, masses = capture.result(len(job.tokens)) if capture is not None else ({}, {})
        extra = {} if job.variant is None else {"token_position": job.variant[0], "token": job.variant[1]}
        problem = self._non_finite_summary(run, non_finite, len(images) + len(non_finite))
        params = {
            **run.params(),
            **self.pipeline_facts(),
            "prompt": job.text,
            "negative_prompt": run.negative_prompt or "",
            "seconds": round(time.perf_counter() - started, 3),
            "images_per_call": plan.sizes_used,
            "memory_events": plan.events,
            "real_tokens": job.tokens.real,
            "first_token": job.tokens.first,
            **extra,
        }
        return LensResult(
            prompt=job.text,
            layers=list(run.layers),
            seeds=list(run.seeds),
            images=images,
            embeddings={l: job.embeddings[l][0].float().cpu().numpy() for l in run.layers},
            tokens=job.tokens,
            params=params,
            snapshots=job.snapshots,
            complete=not state.cancelled,
            attention_maps={k: v for k, v in maps.items() if k in images},  # finished images only
            attention_mass={k: v for k, v in masses.items() if k in images},
            non_finite=non_finite,
            problem=problem,
        )

    def _non_finite_summary(self, run: LensRun, non_finite: dict, total: int) -> str:
        if not non_finite:
            return ""
        vae = getattr(self.pipe, "vae", None)
        cause = finite.likely_cause(
            set(non_finite.values()),
            run.guidance_scale,
            getattr(self.adapter.denoiser, "dtype", None),
            getattr(vae, "dtype", None),
        )
        return finite.summary(non_finite, total, cause)

    def _probe(self, run: LensRun, job: _Job, plan: memory.ChunkPlan, queue: list) -> None:
        """Measure one denoising step and one decode of the run's first images (eager even with ``compile=True``:
        the probe's batch would otherwise cost a compilation of its own), for :meth:`memory.ChunkPlan.probe`."""
        items = queue[: memory.PROBE_CHUNK]
        eager = torch.compiler.set_stance("force_eager") if self.compile else nullcontext()

        def denoise_step(n: int):
            with eager:
                return self.pipe(
                    **self._conditioning(job, items[:n]),
                    **self.adapter.call_kwargs(),
                    num_inference_steps=1,
                    **self.adapter.guidance_kwargs(run.guidance_scale),
                    height=run.height,
                    width=run.width,
                    generator=[torch.Generator(self.device).manual_seed(s) for _, s in items[:n]],
                    output_type=self.adapter.latent_output_type,
                ).images

        def decode(latents):
            return self.adapter.decode_preview(latents, run.height, run.width)

        plan.probe(denoise_step, decode, len(queue))

    def _conditioning(self, job: _Job, chunk: list) -> dict:
        """The pipeline's conditioning arguments for the (layer, seed) pairs of ``chunk``."""
        return self.adapter.pipeline_kwargs(
            [job.cond[l] for l, _ in chunk], None if job.uncond is None else [job.uncond[l] for l, _ in chunk]
        )

    def _padded(self, chunk: list, size: int) -> list:
        """With ``compile=True`` every call has the same batch (the last chunk repeats its last item), so the
        compiled denoiser is not recompiled for a short last chunk."""
        if not self.compile or len(chunk) >= size:
            return chunk
        return chunk + [chunk[-1]] * (size - len(chunk))

    def _denoise_chunk(self, run: LensRun, chunk: list, job: _Job, state: _ChunkState, progress) -> list:
        """One pipeline call for the (layer, seed) pairs in ``chunk`` (repeated pairs are padding): per pair its
        image, or where it turned non-finite (:data:`finite.LATENTS` or :data:`finite.PIXELS`)."""
        steps, every = run.num_inference_steps, run.snapshot_every
        kwargs = self._conditioning(job, chunk)
        generators = [torch.Generator(self.device).manual_seed(s) for _, s in chunk]
        predicted: list = [None]
        latents_finite: list = [None]  # per image: the final latents finite (read at the last step's callback)

        if job.capture is not None:
            text = self.adapter.text_in_call(job.cond[chunk[0][0]], kwargs, run.height, run.width)
            job.capture.begin_call(chunk, job.cfg, text)

        def on_step_end(pipe, i, t, tensors):
            state.done += 1
            if job.capture is not None:
                job.capture.step_done()
            preview = None
            if i + 1 == steps and tensors.get("latents") is not None:
                latents_finite[0] = finite.finite_rows(tensors["latents"])
            if every and ((i + 1) % every == 0 or i + 1 == steps):
                latents = predicted[0] if predicted[0] is not None else tensors["latents"]
                pixels = self.adapter.decode_preview(latents, run.height, run.width)
                shown = [(item, px) for item, px, ok in zip(chunk, pixels, finite.finite_rows(pixels)) if ok]
                previews = self.pipe.numpy_to_pil(np.stack([px for _, px in shown])) if shown else []
                unique = dict(zip([item for item, _ in shown], previews))  # padding repeats an item: one preview
                for item, img in unique.items():
                    job.snapshots.setdefault(item, []).append((i + 1, img))
                preview = Preview(i + 1, list(unique), list(unique.values()))
            stop = progress(state.done, state.total, preview) if progress else False
            if (stop or state.flag.is_set()) and i + 1 == steps:  # the chunk is done: keep it, stop after
                state.stop_after_chunk = True
            elif stop or state.flag.is_set():
                state.cancelled = True
                pipe._interrupt = True
                if not self.adapter.stops_by_flag:  # an older pipeline with no interrupt flag
                    raise StopDenoising
            return tensors

        callbacks = self.adapter.step_callback_kwargs(on_step_end)
        recorder = recording_predictions(self.pipe.scheduler, predicted) if every else nullcontext()
        try:
            with recorder:
                out = self.pipe(
                    **kwargs,
                    **self.adapter.call_kwargs(),
                    **callbacks,
                    num_inference_steps=steps,
                    **self.adapter.guidance_kwargs(run.guidance_scale),
                    height=run.height,
                    width=run.width,
                    generator=generators,
                    output_type="np",  # checked for NaN/inf before anything becomes an image
                )
        except StopDenoising:
            return []
        return self._checked_images(out.images, latents_finite[0])

    def _checked_images(self, pixels: np.ndarray, latents_finite: list | None) -> list:
        """The pipeline's ``np`` output as its ``pil`` output would be, except that a non-finite image is replaced
        by where it went wrong: its latents (the denoiser or the guided step) or only its pixels (the VAE)."""
        pixels_finite = finite.finite_rows(pixels)
        latents_finite = latents_finite or [True] * len(pixels)
        kept = [index for index, ok in enumerate(pixels_finite) if ok and latents_finite[index]]
        converted = iter(self.adapter.final_images(pixels[kept]) if kept else [])
        return [
            next(converted) if index in kept else (finite.PIXELS if latents_finite[index] else finite.LATENTS)
            for index in range(len(pixels))
        ]

    # ------------------------------------------------------------------------------------------------------------
    def _cache_key(self, prompt: str, run: LensRun) -> tuple:
        """What makes two runs' images the same: the prompt, the options, the scheduler, the reference mode."""
        described = {**run.options(), **self.pipeline_facts(), "sequential": run.sequential}
        return (prompt, tuple(sorted((k, repr(v)) for k, v in described.items())))

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
    setattr(module, "_difflens_compiled", True)  # noqa: B010 (a mark on a torch module, not a declared attribute)


def _name_of(pipe) -> str | None:
    return getattr(pipe.config, "_name_or_path", None) or None


def _label(pipe) -> str:
    return _name_of(pipe) or type(pipe).__name__


@dataclass
class _Job:
    """One denoising job of a run: one prompt (or one of its tokens, per_token), its conditioning per layer."""

    text: str
    tokens: Tokens  # the shown span: [first, real)
    cond: dict
    uncond: dict | None
    embeddings: dict
    variant: tuple | None  # per_token: (position, token)
    snapshots: dict = field(default_factory=dict)
    cfg: bool = False  # the pipeline call has a classifier-free guidance branch ([unconditional; conditional])
    capture: AttentionCapture | None = None  # the cross-attention maps being captured (run.attention)


@dataclass
class _ChunkState:
    """Where a job's denoising stands: steps done of the (re-estimated) total, and whether it was cancelled."""

    flag: threading.Event
    total: int
    done: int = 0
    cancelled: bool = False
    stop_after_chunk: bool = False
