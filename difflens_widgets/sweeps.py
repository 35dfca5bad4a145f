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

from . import lens_options, options

MANIFEST_VERSION = 1
PROMPT_COLUMNS = ("prompt", "family", "objects")  # optional columns besides prompt; other columns are kept as is


def _require(module: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise ImportError(f"sweeps need {module}: pip install 'difflens-widgets[scale]' (Ray, pyarrow, pandas)") from None


# ---- prompts ---------------------------------------------------------------------------------------------------
def read_prompts(path: str | Path) -> list[dict]:
    """Prompt rows from a text file (one prompt per line), a CSV or a JSONL file with a ``prompt`` column and
    optional ``family`` and ``objects`` (the object phrases to score, ``;``-separated in CSV, a list in JSONL)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"prompt file {str(path)!r} does not exist")
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        rows = []
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise ValueError(f"{path.name} line {number} is not JSON: {err}") from None
    elif suffix == ".csv":
        with path.open(newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
        for row in rows:
            if isinstance(row.get("objects"), str):
                row["objects"] = [o.strip() for o in row["objects"].split(";") if o.strip()]
    else:
        rows = [{"prompt": line.strip()} for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return normalise_prompts(rows, path.name)


def normalise_prompts(rows: list, source: str = "prompts") -> list[dict]:
    """Check prompt rows and give each an ``id`` (its position), ``family`` ("" when none) and ``objects``."""
    if not rows:
        raise ValueError(f"{source} holds no prompt")
    out = []
    for number, row in enumerate(rows, 1):
        if isinstance(row, str):
            row = {"prompt": row}
        if not isinstance(row, dict) or not isinstance(row.get("prompt"), str):
            raise ValueError(f"{source} row {number} has no 'prompt' text (columns: prompt, family, objects)")
        options.parse_prompts(row["prompt"])
        objects = row.get("objects") or []
        if isinstance(objects, str) or not all(isinstance(o, str) for o in objects):
            raise ValueError(f"{source} row {number}: 'objects' must be a list of phrases, got {objects!r}")
        out.append({**row, "id": number - 1, "prompt": row["prompt"].strip(), "family": str(row.get("family") or ""),
                    "objects": list(objects)})
    return out


# ---- the dataset -----------------------------------------------------------------------------------------------
@dataclass
class SweepSpec:
    """Everything that decides a sweep's images: the same spec on a rerun resumes, another is refused."""

    model: str
    layers: object = None
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2, 3])
    lens_options: dict = field(default_factory=dict)  # Lens.run keywords (as lens_options.run_arguments gives)
    encoder: str | None = None
    scorers: list[str] = field(default_factory=lambda: ["auto"])

    def as_json(self) -> dict:
        return {"model": self.model, "layers": self.layers, "seeds": list(self.seeds), "encoder": self.encoder,
                "lens_options": {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.lens_options.items()},
                "scorers": [str(s) for s in self.scorers]}


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
    (out / "rows").mkdir(parents=True, exist_ok=True)
    (out / "images").mkdir(exist_ok=True)
    manifest_path = out / "manifest.json"
    wanted = {"format": MANIFEST_VERSION, "spec": spec.as_json(),
              "prompts": [{k: v for k, v in p.items()} for p in prompts]}
    if manifest_path.exists():
        existing = json.loads(manifest_path.read_text())
        for key in ("spec", "prompts"):
            if existing.get(key) != json.loads(json.dumps(wanted[key])):
                raise ValueError(f"{out} already holds a sweep with other {key} ({_first_difference(existing.get(key), wanted[key])}); "
                                 "rerun with the same prompts and options to resume it, or choose another --out")
        return out
    manifest = dict(wanted, versions=_versions(), created=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    _write_atomic(manifest_path, json.dumps(manifest, indent=1).encode())
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


def _write_atomic(path: Path, data: bytes) -> None:
    """Write to a temporary name, then rename: readers see the whole file or none (a killed writer leaves none)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def row_file(out: Path, prompt_id: int) -> Path:
    return out / "rows" / f"{prompt_id:05d}.parquet"


def pending(out: Path, prompts: list[dict]) -> list[dict]:
    """The prompts whose rows are not written yet."""
    return [p for p in prompts if not row_file(out, p["id"]).exists()]


# ---- one prompt ------------------------------------------------------------------------------------------------
class PromptWorker:
    """Loads the pipeline and the scorers once, then lenses one prompt at a time into the dataset. The same class is
    the local loop's worker and a Ray actor."""

    def __init__(self, out: str, spec: dict, load: dict | None = None):
        import difflens_widgets as dl

        from .scorers import make_scorers

        self.out, self.spec = Path(out), SweepSpec(**spec)
        self.pipe = dl.load_pipeline(self.spec.model, **(load or {}))
        self.lens = dl.Lens(self.pipe, encoder=self.spec.encoder)
        self.scorers, self.notes = make_scorers(self.spec.scorers, self.pipe, download=bool((load or {}).get("download")))
        self.seconds = 0.0
        self.images = 0

    def __call__(self, batch: dict) -> dict:
        """Ray Data's entry point: a batch of prompt rows (columns as lists) → one summary row per prompt."""
        keys = list(batch)
        rows = [dict(zip(keys, values)) for values in zip(*(batch[k] for k in keys))]
        done = [self.process(_plain_row(row)) for row in rows]
        return {"id": [d["id"] for d in done], "images": [d["images"] for d in done],
                "seconds": [d["seconds"] for d in done], "worker": [os.getpid()] * len(done)}

    def process(self, prompt: dict) -> dict:
        import pyarrow as pa
        import pyarrow.parquet as pq

        started = time.perf_counter()
        result = self.lens.run(prompt["prompt"], layers=self.spec.layers, seeds=self.spec.seeds,
                               use_cache=False, **self.spec.lens_options)
        folder = self.out / "images" / f"{prompt['id']:05d}"
        folder.mkdir(parents=True, exist_ok=True)
        options_text = json.dumps({k: v for k, v in result.params.items() if k in lens_options.BY_NAME or k in (
            "encoder", "height", "width", "model", "scheduler", "family")}, default=str, sort_keys=True)
        records = []
        for (layer, seed), image in sorted(result.images.items()):
            relative = f"images/{prompt['id']:05d}/layer{layer:02d}_seed{seed}.png"
            image.save(self.out / relative)
            record = {"prompt_id": prompt["id"], "prompt": prompt["prompt"], "family": prompt["family"],
                      "layer": layer, "seed": seed, "image": relative, "options": options_text}
            for scorer in self.scorers:
                record.update(scorer(image, prompt))
            records.append(record)
        buffer = pa.BufferOutputStream()
        pq.write_table(pa.Table.from_pylist(records), buffer)
        _write_atomic(row_file(self.out, prompt["id"]), buffer.getvalue().to_pybytes())  # the prompt's commit
        seconds = time.perf_counter() - started
        self.seconds += seconds
        self.images += len(records)
        return {"id": prompt["id"], "images": len(records), "seconds": seconds}


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
class SweepReport:
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
        return (f"sweep {self.out}: {self.prompts} prompts, {self.done_before} already done, {self.processed} run now; "
                f"{self.images} images in {self.seconds:.1f} s ({self.images_per_second:.2f} images/s)")


def sweep(prompts: str | Path | list, out: str | Path, *, model: str = "toy", layers=None, seeds=(0, 1, 2, 3),
          scorers: list | tuple = ("auto",), encoder: str | None = None, ray: bool = False, address: str | None = None,
          workers: int | None = None, gpus_per_worker: float | None = None, device: str | None = None,
          dtype: str | None = None, download: bool = False, log=print, **run_options) -> SweepReport:
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
        raise TypeError(f"{', '.join(unknown)} is not a sweep option; the lens options of a sweep are "
                        f"{', '.join(sorted(allowed))}")
    defaults = lens_options.run_arguments({k: v for k, v in lens_options.defaults("sweep").items() if k in allowed})
    run_options = {k: v for k, v in {**defaults, **run_options}.items() if v is not None}  # one spec, however given
    lens_options.precheck(run_options)
    spec = SweepSpec(model=str(model), layers=layers, seeds=seed_list, lens_options=run_options, encoder=encoder,
                     scorers=list(scorers))
    out = prepare(out, rows, spec)
    todo = pending(out, rows)
    load = {k: v for k, v in dict(device=device, dtype=dtype, download=download).items() if v}
    log(f"sweep {out}: {len(rows)} prompts × {len(seed_list)} seeds; {len(rows) - len(todo)} done, {len(todo)} to run"
        + (f" on Ray ({workers or 1} workers)" if ray else ""))
    started = time.perf_counter()
    if not todo:
        return SweepReport(out, len(rows), len(rows), 0, 0, 0.0, [])
    if ray:
        images, notes = _run_ray(out, spec, load, todo, workers, gpus_per_worker, address, log)
    else:
        images, notes = _run_local(out, spec, load, todo, log)
    report = SweepReport(out, len(rows), len(rows) - len(todo), len(todo), images, time.perf_counter() - started,
                         notes)
    log(str(report) + _gpu_line())
    return report


def _run_local(out, spec, load, todo, log) -> tuple[int, list[str]]:
    worker = PromptWorker(str(out), spec.__dict__, load)
    for note in worker.notes:
        log(f"sweep: {note}")
    for number, prompt in enumerate(todo, 1):
        done = worker.process(prompt)
        log(f"  [{number}/{len(todo)}] {prompt['prompt']!r}: {done['images']} images, {done['seconds']:.1f} s")
    return worker.images, worker.notes


def _run_ray(out, spec, load, todo, workers, gpus_per_worker, address, log) -> tuple[int, list[str]]:
    import logging

    ray = _require("ray")
    import ray.data

    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING,
                 **({} if address else {"num_cpus": max(1, workers or 1)}))
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    dataset = ray.data.from_items([{k: v for k, v in p.items() if k in ("id", "prompt", "family", "objects")}
                                   for p in todo], override_num_blocks=len(todo))
    extra = {"num_gpus": gpus_per_worker} if gpus_per_worker else {"num_cpus": 1}
    results = dataset.map_batches(PromptWorker, fn_constructor_args=(str(out), spec.__dict__, load), batch_size=1,
                                  compute=ray.data.ActorPoolStrategy(size=max(1, workers or 1)), **extra)
    images = 0
    for number, row in enumerate(results.iter_rows(), 1):  # streamed: rows arrive as prompts finish
        images += int(row["images"])
        log(f"  [{number}/{len(todo)}] prompt {int(row['id'])}: {int(row['images'])} images, "
            f"{float(row['seconds']):.1f} s (worker pid {int(row['worker'])})")
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
    """Every written row of a sweep as a pandas DataFrame (one row per prompt × layer × seed)."""
    import pandas as pd
    import pyarrow.parquet as pq

    files = sorted((Path(out) / "rows").glob("*.parquet"))
    if not files:
        raise FileNotFoundError(f"{out} holds no sweep rows (rows/*.parquet); run `difflens sweep` first")
    return pd.concat([pq.read_table(f).to_pandas() for f in files], ignore_index=True)


def load_manifest(out: str | Path) -> dict:
    path = Path(out) / "manifest.json"
    if not path.exists():
        raise FileNotFoundError(f"{out} is not a sweep folder (no manifest.json)")
    return json.loads(path.read_text())
