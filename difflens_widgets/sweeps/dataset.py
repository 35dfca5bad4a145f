"""Sweeps: many prompts × layers × seeds, written once into a resumable dataset, locally or on a Ray cluster.

    difflens sweep prompts.txt --model toy --seeds 0,1,2,3 --out runs/sweep           # one process
    difflens sweep prompts.jsonl --model path/to/sd21 --ray --workers 4 --out DIR       # a Ray actor per GPU
    difflens report DIR                                                                 # curves, from DIR alone

A sweep's unit of work is one prompt: all its layers and seeds in one batched :meth:`Lens.run`. Its images go to
``DIR/images/<prompt id>/layer<L>_seed<S>.png``, then its rows (prompt, family, layer, seed, every lens option,
image path, scores) to ``DIR/rows/<prompt id>.parquet``, written to a temporary name and renamed: the row file is
the prompt's commit. A killed worker or driver leaves at most images without rows, which the next run overwrites,
so a rerun skips exactly the prompts that are done: nothing is lost, nothing is duplicated. ``DIR/manifest.json``
records the options and the library versions; a rerun with other options is refused.

Distributed runs use Ray Data (``map_batches`` over the pending prompts with an actor pool: each actor loads the
pipeline once, on its own GPU when ``gpus_per_worker`` is set); ``ray.init()`` starts a local Ray unless an
address is given. Ray, pyarrow and pandas come with ``pip install difflens-widgets[scale]``.
"""

from __future__ import annotations

import csv
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..core import options as lens_options
from ..core import validate as options
from ..core.engine import Lens
from ..core.models import load_pipeline
from ..core.results import encoded
from ..core.run import LensRun
from . import store
from .scorers import check_scorer_names

MANIFEST_VERSION = 2  # 2: the spec holds the resolved run (LensRun.describe()), not the options as typed
PROMPT_COLUMNS = ("prompt", "family", "objects")  # optional columns besides prompt; other columns are kept as is


def _require(module: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise ImportError(
            f"sweeps need {module}: pip install 'difflens-widgets[scale]' (Ray, pyarrow, pandas)"
        ) from None


# ---- prompts ---------------------------------------------------------------------------------------------------
def read_prompts(path: str | Path) -> list[dict]:
    """Prompt rows from a text file (one prompt per line), a CSV or a JSONL file with a ``prompt`` column and
    optional ``family`` and ``objects`` (the object phrases to score, ``;``-separated in CSV, a list in JSONL).
    UTF-8, with or without a byte-order mark; a line that is not UTF-8 is named."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"prompt file {str(path)!r} does not exist")
    lines = _text_lines(path)
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        rows = []
        for number, line in enumerate(lines, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise ValueError(f"{path.name} line {number} is not JSON: {err}") from None
    elif suffix == ".csv":
        rows = list(csv.DictReader(lines))
        for row in rows:
            if isinstance(row.get("objects"), str):
                row["objects"] = [o.strip() for o in row["objects"].split(";") if o.strip()]
    else:
        rows = [{"prompt": line.strip()} for line in lines if line.strip()]
    return normalise_prompts(rows, path.name)


def _text_lines(path: Path) -> list[str]:
    """The file's lines as text (a UTF-8 byte-order mark dropped), or a ValueError naming the first bad line."""
    raw = path.read_bytes().removeprefix(b"\xef\xbb\xbf")
    try:
        return raw.decode("utf-8").splitlines()
    except UnicodeDecodeError:
        for number, line in enumerate(raw.split(b"\n"), 1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as err:
                raise ValueError(
                    f"{path.name} line {number} is not UTF-8 text ({err.reason} at byte "
                    f"{err.start}); save the file as UTF-8"
                ) from None
        raise


def normalise_prompts(rows: list, source: str = "prompts") -> list[dict]:
    """Check prompt rows and give each an ``id`` (its position), ``family`` ("" when none) and ``objects``; each
    refusal names the row. A prompt given twice is refused (it would be run and counted twice)."""
    if not rows:
        raise ValueError(f"{source} holds no prompt")
    out, seen = [], {}
    for number, row in enumerate(rows, 1):
        if isinstance(row, str):
            row = {"prompt": row}
        if not isinstance(row, dict) or not isinstance(row.get("prompt"), str):
            raise ValueError(f"{source} row {number} has no 'prompt' text (columns: prompt, family, objects)")
        try:
            options.parse_prompts(row["prompt"])
        except ValueError as err:
            raise ValueError(f"{source} row {number}: {err}") from None
        family = row.get("family")
        if family is not None and not isinstance(family, (str, int, float)):
            raise ValueError(f"{source} row {number}: 'family' must be a name, got {type(family).__name__}")
        objects = row.get("objects") or []
        if isinstance(objects, str) or not isinstance(objects, list) or not all(isinstance(o, str) for o in objects):
            raise ValueError(f"{source} row {number}: 'objects' must be a list of phrases, got {objects!r}")
        prompt = row["prompt"].strip()
        if prompt in seen:
            raise ValueError(
                f"{source} rows {seen[prompt]} and {number} hold the same prompt "
                f"{options.short(prompt)}: keep one (a prompt is run once, with every seed)"
            )
        seen[prompt] = number
        out.append(
            {
                **row,
                "id": number - 1,
                "prompt": prompt,
                "family": "" if family is None else str(family),
                "objects": list(objects),
            }
        )
    return out


# ---- the dataset -----------------------------------------------------------------------------------------------
@dataclass
class SweepSpec:
    """Everything that decides a sweep's images: the same spec on a rerun resumes, another is refused. ``run`` is
    the resolved lens run (:meth:`LensRun.describe`), so "0:8" and every layer of an 8-block encoder are one spec."""

    model: str
    run: dict
    scorers: list = field(default_factory=lambda: ["auto"])
    precision: str = "float32"  # the denoiser's dtype: images differ by a few levels from one precision to another

    def as_json(self) -> dict:
        return {
            "model": self.model,
            "run": self.run,
            "seeds": list(self.run["seeds"]),
            "scorers": [str(s) for s in self.scorers],
            "precision": self.precision,
        }


def run_description(manifest: dict) -> dict:
    """The resolved run a manifest records (a format-1 manifest, from before runs were resolved, gives its options
    as typed, with what they default to)."""
    spec = manifest["spec"]
    if "run" in spec:
        return spec["run"]
    options = spec.get("lens_options", {})
    return {
        "layers": spec.get("layers"),
        "seeds": spec.get("seeds", []),
        "encoder": spec.get("encoder"),
        "final_norm": options.get("final_norm", True) is not False,
        **{k: v for k, v in options.items() if k != "final_norm"},
    }


def _versions() -> dict:
    import importlib.metadata as md

    out = {"python": sys.version.split()[0]}
    for name in ("difflens-widgets", "torch", "diffusers", "transformers", "ray"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            pass
    return out


def prepare(out: str | Path, prompts: list[dict], spec: SweepSpec) -> Path:
    """Create (or reopen) the dataset folder: the manifest and the prompts, checked against an existing sweep."""
    out = Path(out)
    store.check_out_folder(out)
    manifest_path = out / "manifest.json"
    wanted = {
        "format": MANIFEST_VERSION,
        "spec": spec.as_json(),
        "prompts": [{k: v for k, v in p.items()} for p in prompts],
    }
    if manifest_path.is_symlink():  # never followed: set aside, and the manifest written anew below
        store.set_aside(out, store.Problem(-1, "manifest.json", "a link"))
    if manifest_path.exists():
        existing = store.read_manifest(out)
        for key in ("spec", "prompts"):
            if existing.get(key) != json.loads(json.dumps(wanted[key])):
                raise ValueError(
                    f"{out} already holds a sweep with other {key} "
                    f"({_first_difference(existing.get(key), wanted[key])}); "
                    "rerun with the same prompts and options to resume it, or choose another --out"
                )
        return out
    out.mkdir(parents=True, exist_ok=True)
    store.real_dir(out, "rows")
    store.real_dir(out, "images")
    manifest = dict(wanted, versions=_versions(), created=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    store.write_atomic(manifest_path, json.dumps(manifest, indent=1).encode())
    return out


def _first_difference(a, b) -> str:
    a, b = json.loads(json.dumps(a)), json.loads(json.dumps(b))
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            if a.get(key) != b.get(key):
                return f"{key}: {a.get(key)!r} there, {b.get(key)!r} now"
    if isinstance(a, list) and isinstance(b, list) and len(a) != len(b):
        return f"{len(a)} rows there, {len(b)} now"
    return "they differ"


def pending(out: Path, prompts: list[dict], manifest: dict, log=print) -> list[dict]:
    """The prompts to run: those without rows, and those whose rows are damaged (set aside and said, so the rerun
    replaces them)."""
    items, digest = store.expected_items(manifest), store.spec_digest(manifest["spec"])
    todo = []
    for prompt in prompts:
        rows, problem = store.read_rows_of(out, prompt, items)
        if rows is not None and set(rows["spec_sha256"]) != {digest}:
            problem = store.Problem(
                prompt["id"],
                str(store.row_file(out, prompt["id"]).relative_to(out)),
                "written under another spec (a file from another sweep?)",
            )
        if problem is None:
            continue
        if problem.what != "no rows yet":
            log(f"sweep: {problem}; running it again")
            store.set_aside(out, problem)
        todo.append(prompt)
    return todo


# ---- one prompt ------------------------------------------------------------------------------------------------
class PromptWorker:
    """Loads the pipeline and the scorers once, then lenses one prompt at a time into the dataset with the sweep's
    resolved run. The same class is the local loop's worker and a Ray actor."""

    def __init__(self, out: str, model: str, scorers: list, load: dict | None, run: LensRun, lens=None):
        from .scorers import make_scorers

        self.out, self.run = Path(out), run
        self.spec_digest = store.spec_digest(store.read_manifest(self.out)["spec"])
        self.lens = lens or Lens(load_pipeline(model, **(load or {})), encoder=run.encoder)
        self.pipe = self.lens.pipe
        self.scorers, self.notes = make_scorers(scorers, self.pipe, download=bool((load or {}).get("download")))
        self.seconds = 0.0
        self.images = 0

    def __call__(self, batch: dict) -> dict:
        """Ray Data's entry point: a batch of prompt rows (columns as lists) → one summary row per prompt."""
        keys = list(batch)
        rows = [dict(zip(keys, values)) for values in zip(*(batch[k] for k in keys))]
        done = [self.process(_plain_row(row)) for row in rows]
        return {
            "id": [d["id"] for d in done],
            "images": [d["images"] for d in done],
            "seconds": [d["seconds"] for d in done],
            "worker": [os.getpid()] * len(done),
        }

    def process(self, prompt: dict) -> dict:
        import pyarrow as pa
        import pyarrow.parquet as pq

        started = time.perf_counter()
        result = self.lens.execute(self.run.for_prompt(prompt["prompt"]))
        store.real_dir(self.out, f"images/{prompt['id']:05d}")  # a link in its place is moved aside first
        options_text = json.dumps(
            {
                k: v
                for k, v in result.params.items()
                if k in lens_options.BY_NAME or k in ("encoder", "height", "width", "model", "scheduler", "family")
            },
            default=str,
            sort_keys=True,
        )
        records = []
        for (layer, seed), image in sorted(result.images.items()):
            relative = store.image_path(prompt["id"], layer, seed)
            data = encoded(image)
            store.write_atomic(self.out / relative, data)
            record = {
                "prompt_id": prompt["id"],
                "prompt": prompt["prompt"],
                "family": prompt["family"],
                "layer": layer,
                "seed": seed,
                "image": relative,
                "image_sha256": store.sha256(data),
                "spec_sha256": self.spec_digest,
                "options": options_text,
            }
            for scorer in self.scorers:
                record.update(scorer(image, prompt))
            if result.attention_maps:
                record["attention"] = attention_column(result, layer, seed, image, prompt, self.scorers)
            records.append(record)
        buffer = pa.BufferOutputStream()
        pq.write_table(store.rows_table(records, result.non_finite, result.problem), buffer)
        store.real_dir(self.out, "rows")
        store.write_atomic(store.row_file(self.out, prompt["id"]), buffer.getvalue().to_pybytes())  # the commit
        seconds = time.perf_counter() - started
        self.seconds += seconds
        self.images += len(records)
        return {"id": prompt["id"], "images": len(records), "seconds": seconds, "problem": result.problem}


def attention_column(result, layer: int, seed: int, image, prompt: dict, scorers: list) -> str:
    """Every prompt word's map numbers (:func:`core.attention_stats.word_stats`) as JSON; with the toy
    annotator among the scorers, each object word's ``inside`` / ``peak_inside`` its annotated blob."""
    from ..core.attention_stats import word_stats
    from .scorers import annotator_scorer

    regions = None
    if annotator_scorer in scorers:
        from ..toy.annotate import parse_caption, word_regions

        try:
            parse_caption(prompt["prompt"])
        except ValueError:
            pass  # not a shapes-world caption: no object to find
        else:
            regions = word_regions(image, prompt["prompt"])
    return json.dumps(word_stats(result, layer, seed, regions), sort_keys=True)


def _plain_row(row: dict) -> dict:
    """Ray hands columns back as numpy values: make them plain Python again."""
    out = {}
    for key, value in row.items():
        if hasattr(value, "tolist"):
            value = value.tolist()
        out[key] = value
    return out


# ---- the sweep -------------------------------------------------------------------------------------------------
@dataclass
class SweepSummary:
    out: Path
    prompts: int
    done_before: int
    processed: int
    images: int
    seconds: float
    notes: list[str]

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds else 0.0

    def __str__(self) -> str:
        return (
            f"sweep {self.out}: {self.prompts} prompts, {self.done_before} already done, {self.processed} run now; "
            f"{self.images} images in {self.seconds:.1f} s ({self.images_per_second:.2f} images/s)"
        )


def sweep(
    prompts: str | Path | list,
    out: str | Path,
    *,
    model: str = "toy",
    layers=None,
    seeds=(0, 1, 2, 3),
    scorers: list | tuple = ("auto",),
    encoder: str | None = None,
    ray: bool = False,
    address: str | None = None,
    workers: int | None = None,
    gpus_per_worker: float | None = None,
    device: str | None = None,
    dtype: str | None = None,
    download: bool = False,
    log=print,
    **run_options,
) -> SweepSummary:
    """Lens every prompt at ``layers`` × ``seeds`` into the dataset ``out`` (see the module docstring); resumes.

    ``prompts``: a file (txt / csv / jsonl) or a list of strings or rows. ``run_options``: :meth:`Lens.run`'s lens
    options (``num_inference_steps``, ``final_norm``, ...). ``scorers``: ``"annotator"`` (toy world), ``"clip"``
    or ``"clip:<model id or folder>"``, ``"auto"`` (the annotator on the toy model, CLIP elsewhere) or callables
    ``scorer(image, prompt_row) -> {column: value}``. ``ray=True`` distributes prompts over ``workers`` Ray actors.
    """
    for module in ("pyarrow", "pandas") + (("ray",) if ray else ()):
        _require(module)  # before any work: a missing extra is one clear line
    rows = read_prompts(prompts) if isinstance(prompts, (str, Path)) else normalise_prompts(list(prompts))
    seed_list = options.parse_seeds(seeds)
    allowed = {o.name for o in lens_options.OPTIONS if "sweep" in o.surfaces and o.run_keyword} - {"layers", "seeds"}
    unknown = sorted(set(run_options) - allowed)
    if unknown:
        raise TypeError(
            f"{', '.join(unknown)} is not a sweep option; the lens options of a sweep are {', '.join(sorted(allowed))}"
        )
    lens_options.precheck(run_options)  # what needs no model fails before one is loaded
    check_scorer_names(list(scorers))
    store.check_out_folder(Path(out))
    load = {k: v for k, v in dict(device=device, dtype=dtype, download=download).items() if v}
    # the run is resolved once, here, with the pipeline (the driver's, in a Ray sweep): every prompt then runs it
    lens = Lens(load_pipeline(str(model), **load), encoder=encoder)
    run = lens.resolve(rows[0]["prompt"], layers=layers, seeds=seed_list, use_cache=False, **run_options)
    precision = str(getattr(lens.adapter.denoiser, "dtype", "float32")).removeprefix("torch.")
    spec = SweepSpec(model=str(model), run=run.describe(), scorers=list(scorers), precision=precision)
    out = prepare(out, rows, spec)  # the first write: every argument has been checked by now
    todo = pending(out, rows, store.read_manifest(out), log)
    log(
        f"sweep {out}: {len(rows)} prompts × {len(seed_list)} seeds; {len(rows) - len(todo)} done, {len(todo)} to run"
        + (f" on Ray ({workers or 1} workers)" if ray else "")
    )
    started = time.perf_counter()
    if not todo:
        return SweepSummary(out, len(rows), len(rows), 0, 0, 0.0, [])
    if ray:
        images, notes = _run_ray(out, spec, load, run, todo, workers, gpus_per_worker, address, log)
    else:
        images, notes = _run_local(PromptWorker(str(out), spec.model, spec.scorers, load, run, lens), todo, log)
    report = SweepSummary(
        out, len(rows), len(rows) - len(todo), len(todo), images, time.perf_counter() - started, notes
    )
    log(str(report) + _gpu_line())
    return report


def _run_local(worker: PromptWorker, todo, log) -> tuple[int, list[str]]:
    for note in worker.notes:
        log(f"sweep: {note}")
    started = time.perf_counter()
    for number, prompt in enumerate(todo, 1):
        done = worker.process(prompt)
        left = time_left(time.perf_counter() - started, number, len(todo))
        log(
            f"  [{number}/{len(todo)}] {options.short(prompt['prompt'])}: {done['images']} images, "
            f"{done['seconds']:.1f} s" + (f"; about {left} left" if left else "")
        )
        if done["problem"]:
            log(f"  [{number}/{len(todo)}] {done['problem']}")
    return worker.images, worker.notes


def time_left(elapsed: float, done: int, total: int) -> str:
    """The rest of a sweep at the pace measured so far (every prompt runs the same layers × seeds, so prompts take
    about the same time), as "1 h 05 min", "12 min", "40 s"; empty when nothing is left or nothing is measured."""
    if done <= 0 or done >= total:
        return ""
    seconds = round(elapsed / done * (total - done))
    if seconds >= 3600:
        return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"
    if seconds >= 60:
        return f"{round(seconds / 60)} min"
    return f"{seconds} s"


def _run_ray(out, spec, load, run, todo, workers, gpus_per_worker, address, log) -> tuple[int, list[str]]:
    import logging

    _require("ray")
    import ray
    import ray.data

    if not ray.is_initialized():
        ray.init(
            address=address,
            include_dashboard=False,
            log_to_driver=False,
            logging_level=logging.WARNING,
            **({} if address else {"num_cpus": max(1, workers or 1)}),
        )
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    dataset = ray.data.from_items(
        [{k: v for k, v in p.items() if k in ("id", "prompt", "family", "objects")} for p in todo],
        override_num_blocks=len(todo),
    )
    extra = {"num_gpus": gpus_per_worker} if gpus_per_worker else {"num_cpus": 1}
    results = dataset.map_batches(
        PromptWorker,
        fn_constructor_args=(str(out), spec.model, spec.scorers, load, run),
        batch_size=1,
        compute=ray.data.ActorPoolStrategy(size=max(1, workers or 1)),
        **extra,
    )
    images = 0
    for number, row in enumerate(results.iter_rows(), 1):  # streamed: rows arrive as prompts finish
        images += int(row["images"])
        log(
            f"  [{number}/{len(todo)}] prompt {int(row['id'])}: {int(row['images'])} images, "
            f"{float(row['seconds']):.1f} s (worker pid {int(row['worker'])})"
        )
    return images, []


def _gpu_line() -> str:
    try:
        import torch

        if torch.cuda.is_available():
            return f"; GPU utilisation now {torch.cuda.utilization()}%"
    except Exception:  # noqa: BLE001 - utilisation is informative only (needs pynvml)
        pass
    return ""


# ---- reading it back -------------------------------------------------------------------------------------------
def load_rows(out: str | Path):
    """Every whole row of a sweep as a pandas DataFrame (one row per prompt × layer × seed); prompts whose stored
    data is damaged are left out and named in ``rows.attrs["problems"]`` (see :mod:`.store`)."""
    return store.load(out)[0]


def load_manifest(out: str | Path) -> dict:
    return store.read_manifest(Path(out))
