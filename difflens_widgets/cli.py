"""Command line: ``difflens run "a red circle left of a blue square" --layers 0:12:2 --seeds 0,1 --out grid.png``."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from . import options


def _parser() -> argparse.ArgumentParser:
    from . import lens_options

    parser = argparse.ArgumentParser(prog="difflens", description="Diffusion Lens from the command line.")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="lens one prompt and write a labelled grid (rows = seeds, columns = layers)")
    run.add_argument("prompt")
    run.add_argument("--model", default="toy", help="'toy' (default), a pipeline folder or a cached hub id")
    run.add_argument("--tuned", default=None,
                     help="a fine-tune of --model (pipeline folder, components, LoRA or textual inversion): raw, "
                          "tuned and their difference, interleaved by seed")
    lens_options.add_arguments(run, "cli")  # every lens option, defined once for the CLI, %difflens and the dashboard
    run.add_argument("--device", default=None, help="cuda or cpu (default: cuda when present)")
    run.add_argument("--dtype", default=None, choices=("float32", "float16", "bfloat16"),
                     help="default: float32 on CPU; on a GPU the family's own (fp16 SD/SDXL/IF, bf16 SD3/FLUX/PixArt)")
    run.add_argument("--offload", default=None, choices=("model", "sequential"),
                     help="accelerate CPU offload, for GPUs too small to hold the pipeline")
    run.add_argument("--max-batch", type=int, default=None,
                     help="images per denoiser call (default: measured from free GPU memory)")
    run.add_argument("--download", action="store_true", help="allow downloading a hub model not in the cache")
    run.add_argument("--out", default="difflens_grid.png", help="grid image to write")
    run.add_argument("--save-dir", default=None, help="also write every image and a JSON of all parameters here")

    sweep = sub.add_parser("sweep", help="lens every prompt of a file at every layer and seed into a resumable "
                                         "dataset (Parquet rows + PNG images), locally or on Ray")
    sweep.add_argument("prompts", help="a .txt (one prompt per line), .csv or .jsonl file (columns: prompt, and "
                                       "optionally family and objects)")
    sweep.add_argument("--out", required=True, help="the dataset folder (a rerun resumes it)")
    sweep.add_argument("--model", default="toy", help="'toy' (default), a pipeline folder or a cached hub id")
    lens_options.add_arguments(sweep, "sweep")
    sweep.set_defaults(seeds="0,1,2,3")  # the paper's four seeds per prompt
    sweep.add_argument("--scorer", action="append", default=None,
                       help="annotator, clip, clip:<model id or folder>, auto (default: the annotator on the toy "
                            "model, CLIP elsewhere) or none; repeat for several")
    sweep.add_argument("--ray", action="store_true", help="distribute prompts over Ray actors (ray.init(): local "
                                                          "unless --address)")
    sweep.add_argument("--address", default=None, help="an existing Ray cluster, e.g. ray://head:10001 or auto")
    sweep.add_argument("--workers", type=int, default=None, help="Ray actors, one pipeline each (default 1)")
    sweep.add_argument("--gpus-per-worker", type=float, default=None, help="GPUs per actor, e.g. 1")
    sweep.add_argument("--device", default=None, help="cuda or cpu (default: cuda when present)")
    sweep.add_argument("--dtype", default=None, choices=("float32", "float16", "bfloat16"))
    sweep.add_argument("--download", action="store_true", help="allow downloading models not in the cache")

    probe = sub.add_parser("probe", help="what the denoiser knows: linear probes per block × timestep (Revelio) on "
                                         "toy-world renders or your own labelled images")
    probe.add_argument("--model", default="toy", help="'toy' (default), a pipeline folder or a cached hub id")
    probe.add_argument("--images", default="240", help="a number (toy-world renders of single objects, labelled "
                                                       "color/shape/size/side) or a CSV with columns image,<label>...")
    probe.add_argument("--blocks", default=None, help="denoiser blocks, e.g. mid,up1 (default: all)")
    probe.add_argument("--timesteps", default="50,250,500,750", help="training timesteps 0..999, e.g. 50,500")
    probe.add_argument("--sae", default=None, help="also train a k-SAE on BLOCK@T, e.g. up1@50, and list its "
                                                   "purest latents")
    probe.add_argument("--device", default=None, help="cuda or cpu (default: cuda when present)")
    probe.add_argument("--download", action="store_true", help="allow downloading a hub model not in the cache")
    probe.add_argument("--out", required=True, help="folder for probe.json, features.npz and probe.html (heatmaps)")

    report = sub.add_parser("report", help="emergence curves per family (95%% CI) from a sweep's dataset alone")
    report.add_argument("folder", help="a sweep's --out folder")
    return parser


def _check_out(path: str) -> Path:
    """The grid's file name must end in an image format Pillow writes; checked before any model work."""
    from PIL import Image

    out = Path(path)
    writable = {ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.SAVE}
    if out.suffix.lower() not in writable:
        raise ValueError(f"--out {path!r} must end in an image extension such as .png, .jpg or .webp")
    return out


def _run(args) -> int:
    from tqdm.auto import tqdm

    import difflens_widgets as dl
    from . import lens_options
    from .panels import panels_grid, run_panels

    out = _check_out(args.out)  # everything that needs no model is checked before loading one
    options.parse_prompts(args.prompt)
    values = lens_options.values_from(args)
    lens_options.precheck(values)
    load = dict(device=args.device, download=args.download, dtype=args.dtype, offload=args.offload)
    pipe = dl.load_pipeline(args.model, **load)
    lens = dl.Lens(pipe, encoder=values.pop("encoder") or None)
    tuned = dl.Lens(dl.load_tuned(pipe, args.tuned), encoder=lens.adapter.encoder_name) if args.tuned else None
    compare = values.pop("compare")
    run_options = lens_options.run_arguments(values)
    if run_options.get("text_from"):
        run_options["text_from"] = dl.load_pipeline(run_options["text_from"], **load)
    bars = []

    def progress(done, total, preview, key):
        if not bars:  # created at the first step, so a refused run prints no empty bar
            bars.append(tqdm(total=total, desc="denoising", unit="step", file=sys.stderr))
        bars[0].total = total
        bars[0].update(done - bars[0].n)

    try:
        panels = run_panels(lens, args.prompt, compare=compare, tuned=tuned, progress=progress,
                            max_batch=args.max_batch, **run_options)
    finally:
        for bar in bars:
            bar.close()  # before any error line, so the message starts on a line of its own
    result = panels[0].result
    for event in [e for p in panels for e in p.result.params.get("memory_events", [])]:
        print(f"difflens: {event}", file=sys.stderr)
    out.parent.mkdir(parents=True, exist_ok=True)
    panels_grid(panels).save(out)
    if args.save_dir:
        for panel in panels:
            panel.result.save(Path(args.save_dir) / (panel.key if len(panels) > 1 else ""))
    seconds = round(sum(p.result.params.get("seconds", 0) for p in panels), 3)
    rows = f", panels {[p.key for p in panels]}" if len(panels) > 1 else ""
    print(f"wrote {out} (layers {result.layers}, seeds {result.seeds}{rows}, {seconds} s)")
    return 0


def _sweep(args) -> int:
    from . import lens_options
    from .sweeps import sweep

    values = lens_options.values_from(args)
    encoder = values.pop("encoder", "") or None
    run_options = lens_options.run_arguments(values)
    layers, seeds = run_options.pop("layers", None), run_options.pop("seeds")
    sweep(args.prompts, args.out, model=args.model, layers=layers, seeds=seeds, encoder=encoder,
          scorers=args.scorer or ["auto"], ray=args.ray, address=args.address, workers=args.workers,
          gpus_per_worker=args.gpus_per_worker, device=args.device, dtype=args.dtype, download=args.download,
          **run_options)
    return 0


def _probe_images(spec: str):
    """An int (toy-world renders) or a CSV of image paths with one column per label."""
    import csv

    from PIL import Image

    if spec.strip().isdigit():
        return int(spec), None
    path = Path(spec)
    if not path.is_file():
        raise FileNotFoundError(f"--images {spec!r} is neither a number nor a CSV file")
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    if not rows or "image" not in rows[0] or len(rows[0]) < 2:
        raise ValueError(f"{spec} must have an 'image' column and at least one label column")
    images = [Image.open(path.parent / r["image"]).convert("RGB") for r in rows]
    return images, {k: [r[k] for r in rows] for k in rows[0] if k != "image"}


def _probe(args) -> int:
    import difflens_widgets as dl
    from .probes import probe, require_sklearn

    require_sklearn()
    images, labels = _probe_images(args.images)
    sae_block, _, sae_t = (args.sae or "").partition("@")
    if args.sae and not sae_t.isdigit():
        raise ValueError(f"--sae {args.sae!r} must be BLOCK@TIMESTEP, e.g. up1@50")
    pipe = dl.load_pipeline(args.model, device=args.device, download=args.download)
    started = time.perf_counter()
    result = probe(pipe, images, labels, blocks=args.blocks, timesteps=args.timesteps)
    out = result.save(args.out)
    for label in result.accuracy:
        print(f"\n{label}: linear-probe accuracy (held out)\n{result.table(label)}")
    result.write_html(out / "probe.html")
    if args.sae:
        sae = result.sae(sae_block, int(sae_t))
        print(f"\nk-SAE on {sae_block}@{sae_t}: k={sae.k}, dead {sae.dead_share:.2f}, "
              f"reconstruction error {sae.reconstruction_error:.3f}")
        for label in result.labels:
            top = ", ".join(f"#{j} {name} {p:.2f}" for j, name, p in sae.monosemantic(label)[:6])
            print(f"  {label}: mean purity {sae.mean_purity(label):.2f} (random directions "
                  f"{sae.random_purity[label]:.2f}); purest: {top}")
    print(f"\nwrote {out} ({time.perf_counter() - started:.1f} s)")
    return 0


def _report(args) -> int:
    from .sweep_report import write_report

    print(write_report(args.folder))
    print(f"wrote {Path(args.folder) / 'report' / 'curves.json'} and report.html")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return {"run": _run, "sweep": _sweep, "probe": _probe, "report": _report}[args.command](args)
    except (ValueError, TypeError, FileNotFoundError, MemoryError, ImportError) as err:
        print(f"difflens: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
