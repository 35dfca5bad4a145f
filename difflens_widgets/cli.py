"""Command line: ``difflens run "a red circle left of a blue square" --layers 0:12:2 --seeds 0,1 --out grid.png``."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from .core import validate as options


def _model_flags(dtype: bool = True) -> argparse.ArgumentParser:
    """The flags every command that loads a model shares (an argparse parent, so they are defined once)."""
    flags = argparse.ArgumentParser(add_help=False)
    flags.add_argument("--model", default="toy", help="'toy' (default), 'toy-t5', a pipeline folder or a cached hub id")
    flags.add_argument("--device", default=None, help="cuda or cpu (default: cuda when present)")
    if dtype:
        flags.add_argument(
            "--dtype",
            default=None,
            choices=("float32", "float16", "bfloat16"),
            help="default: float32 on CPU; on a GPU the family's own (fp16 SD/SDXL/IF, bf16 SD3/FLUX/PixArt)",
        )
    flags.add_argument("--download", action="store_true", help="allow downloading a hub model not in the cache")
    return flags


def _parser() -> argparse.ArgumentParser:
    from .core import options as lens_options

    parser = argparse.ArgumentParser(prog="difflens", description="Diffusion Lens from the command line.")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser(
        "run",
        parents=[_model_flags()],
        help="lens one prompt and write a labelled grid (rows = seeds, columns = layers)",
    )
    run.add_argument("prompt")
    run.add_argument(
        "--tuned",
        default=None,
        help="a fine-tune of --model (pipeline folder, components, LoRA or textual inversion): raw, "
        "tuned and their difference, interleaved by seed",
    )
    lens_options.add_arguments(run, "cli")  # every lens option, defined once for the CLI, %difflens and the dashboard
    run.add_argument(
        "--offload",
        default=None,
        choices=("model", "sequential"),
        help="accelerate CPU offload, for GPUs too small to hold the pipeline",
    )
    run.add_argument(
        "--max-batch", type=int, default=None, help="images per denoiser call (default: measured from free GPU memory)"
    )
    run.add_argument(
        "--attention",
        dest="attention_word",  # not the lens option "attention" (a flag): values_from must not read it
        default=None,
        metavar="WORD",
        help="also capture the cross-attention maps and write WORD's over every image next to --out "
        "(<out>_attention_<word>.png); the other words are in --save-dir's attention.npz",
    )
    run.add_argument("--out", default="difflens_grid.png", help="grid image to write")
    run.add_argument("--save-dir", default=None, help="also write every image and a JSON of all parameters here")

    sweep = sub.add_parser(
        "sweep",
        parents=[_model_flags()],
        help="lens every prompt of a file at every layer and seed into a resumable dataset "
        "(Parquet rows + PNG images), locally or on Ray",
    )
    sweep.add_argument(
        "prompts",
        help="a .txt (one prompt per line), .csv or .jsonl file (columns: prompt, and optionally family and objects)",
    )
    sweep.add_argument("--out", required=True, help="the dataset folder (a rerun resumes it)")
    lens_options.add_arguments(sweep, "sweep")
    sweep.set_defaults(seeds="0,1,2,3")  # the paper's four seeds per prompt
    sweep.add_argument(
        "--scorer",
        action="append",
        default=None,
        help="annotator, clip, clip:<model id or folder>, auto (default: the annotator on the toy "
        "model, CLIP elsewhere) or none; repeat for several",
    )
    sweep.add_argument(
        "--ray", action="store_true", help="distribute prompts over Ray actors (ray.init(): local unless --address)"
    )
    sweep.add_argument("--address", default=None, help="an existing Ray cluster, e.g. ray://head:10001 or auto")
    sweep.add_argument("--workers", type=int, default=None, help="Ray actors, one pipeline each (default 1)")
    sweep.add_argument("--gpus-per-worker", type=float, default=None, help="GPUs per actor, e.g. 1")

    probe = sub.add_parser(
        "probe",
        parents=[_model_flags(dtype=False)],
        help="what the denoiser knows: linear probes per block × timestep (Revelio) on toy-world "
        "renders or your own labelled images",
    )
    probe.add_argument(
        "--images",
        default="240",
        help="a number (toy-world renders of single objects, labelled "
        "color/shape/size/side) or a CSV with columns image,<label>...",
    )
    probe.add_argument("--blocks", default=None, help="denoiser blocks, e.g. mid,up1 (default: all)")
    probe.add_argument("--timesteps", default="50,250,500,750", help="training timesteps 0..999, e.g. 50,500")
    probe.add_argument(
        "--sae", default=None, help="also train a k-SAE on BLOCK@T, e.g. up1@50, and list its purest latents"
    )
    probe.add_argument("--out", required=True, help="folder for probe.json, features.npz and probe.html (heatmaps)")

    report = sub.add_parser("report", help="emergence curves per family (95%% CI) from a sweep's dataset alone")
    report.add_argument("folder", help="a sweep's --out folder")
    return parser


def _check_out(path: str) -> Path:
    """The grid's file name must end in an image format Pillow writes, in a folder that can be made; checked
    before any model work."""
    from PIL import Image

    out = Path(path)
    writable = {ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.SAVE}
    if out.suffix.lower() not in writable:
        raise ValueError(f"--out {path!r} must end in an image extension such as .png, .jpg or .webp")
    if out.is_dir():
        raise ValueError(f"--out {path!r} is a folder; name the image file to write")
    _check_folder("--out", out.parent)
    return out


def _check_folder(flag: str, folder: Path) -> None:
    """``folder`` is a folder, or can be made (no part of its path is a file); checked before any model work."""
    for part in (folder, *folder.parents):
        if part.exists():
            if not part.is_dir():
                raise ValueError(f"{flag}: {str(part)!r} is a file, so {str(folder)!r} cannot be a folder")
            return


def _note_unknown_words(pipe, prompts: list[str]) -> None:
    """On a toy model, one line per prompt that says words its world does not have, before any denoising: the run
    goes on (a lens of unknown words is itself instructive), but nobody should read its images as a failure."""
    from .core.models import is_toy

    if is_toy(pipe):
        from .toy.world import unknown_words_note

        for note in dict.fromkeys(filter(None, map(unknown_words_note, prompts))):
            print(f"difflens: note: {note}", file=sys.stderr)


def _run(args) -> int:
    from tqdm.auto import tqdm

    import difflens_widgets as dl

    from .analyses.panels import execute_panels, panels_grid, plan_panels
    from .core import options as lens_options
    from .core.results import token_positions

    out = _check_out(args.out)  # everything that needs no model is checked before loading one
    if args.save_dir:
        _check_folder("--save-dir", Path(args.save_dir))
    prompts = options.parse_prompts(args.prompt)
    values = lens_options.values_from(args)
    lens_options.precheck(values)
    _check_device(args.device)
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
        run_options["attention"] = bool(args.attention_word)
        plan = plan_panels(lens, args.prompt, compare=compare, tuned=tuned, max_batch=args.max_batch, **run_options)
        if args.attention_word:  # the word is checked against the prompt's tokens before any denoising
            token_positions(plan.tokens(), args.attention_word)
        _note_unknown_words(pipe, prompts)  # once every argument is accepted: a refusal stays one line
        panels = execute_panels(plan, progress)
    finally:
        for bar in bars:
            bar.close()  # before any error line, so the message starts on a line of its own
    result = panels[0].result
    for event in [e for p in panels for e in p.result.params.get("memory_events", [])]:
        print(f"difflens: {event}", file=sys.stderr)
    for problem in dict.fromkeys(p.result.problem for p in panels if p.result.problem):
        print(f"difflens: {problem}", file=sys.stderr)  # the non-finite images, left out of the grid
    if not any(p.result.images for p in panels):
        print(f"difflens: no image to write: {out} not written", file=sys.stderr)
        return 1
    out.parent.mkdir(parents=True, exist_ok=True)
    panels_grid(panels).save(out)
    if args.attention_word:
        word = "".join(c if c.isalnum() else "_" for c in args.attention_word)
        written = out.with_name(f"{out.stem}_attention_{word}{out.suffix}")
        result.attention_grid(args.attention_word).save(written)
        print(f"wrote {written} (where {args.attention_word!r} lands, every layer and seed)")
    if args.save_dir:
        for panel in panels:
            panel.result.save(Path(args.save_dir) / (panel.key if len(panels) > 1 else ""))
    seconds = round(sum(p.result.params.get("seconds", 0) for p in panels), 3)
    rows = f", panels {[p.key for p in panels]}" if len(panels) > 1 else ""
    print(f"wrote {out} (layers {result.layers}, seeds {result.seeds}{rows}, {seconds} s)")
    return 0


def _sweep(args) -> int:
    from .core import options as lens_options
    from .sweeps import sweep

    _check_device(args.device)
    values = lens_options.values_from(args)
    encoder = values.pop("encoder", "") or None
    run_options = lens_options.run_arguments(values)
    layers, seeds = run_options.pop("layers", None), run_options.pop("seeds")
    sweep(
        args.prompts,
        args.out,
        model=args.model,
        layers=layers,
        seeds=seeds,
        encoder=encoder,
        scorers=args.scorer or ["auto"],
        ray=args.ray,
        address=args.address,
        workers=args.workers,
        gpus_per_worker=args.gpus_per_worker,
        device=args.device,
        dtype=args.dtype,
        download=args.download,
        **run_options,
    )
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
    with path.open(newline="", encoding="utf-8-sig") as handle:
        rows = list(csv.DictReader(handle))
    if not rows or "image" not in rows[0] or len(rows[0]) < 2:
        raise ValueError(f"{spec} must have an 'image' column and at least one label column")
    images = []
    for number, row in enumerate(rows, 2):  # line 1 is the header
        try:
            images.append(Image.open(path.parent / row["image"]).convert("RGB"))
        except (OSError, ValueError) as err:
            raise ValueError(
                f"--images {spec} line {number}: {row['image']!r} is not an image Pillow can read "
                f"({type(err).__name__})"
            ) from None
    return images, {k: [r[k] for r in rows] for k in rows[0] if k != "image"}


def _probe(args) -> int:
    import difflens_widgets as dl

    from .adapters import adapter_for
    from .denoiser.probes import probe, require_sklearn
    from .denoiser.taps import check_blocks, check_timesteps

    require_sklearn()
    _check_folder("--out", Path(args.out))
    _check_device(args.device)
    timesteps = _flag("--timesteps", check_timesteps, args.timesteps)
    images, labels = _probe_images(args.images)
    sae_block, _, sae_t = (args.sae or "").partition("@")
    if args.sae and not sae_t.isdigit():
        raise ValueError(f"--sae {args.sae!r} must be BLOCK@TIMESTEP, e.g. up1@50")
    if args.sae and int(sae_t) not in timesteps:
        raise ValueError(f"--sae {args.sae!r}: timestep {sae_t} is not probed; --timesteps are {timesteps}")
    pipe = dl.load_pipeline(args.model, device=args.device, download=args.download)
    blocks = _flag("--blocks", lambda b: list(check_blocks(adapter_for(pipe), b)), args.blocks)
    if args.sae and sae_block not in blocks:
        raise ValueError(f"--sae {args.sae!r}: block {sae_block!r} is not probed; the blocks are {', '.join(blocks)}")
    started = time.perf_counter()
    result = probe(pipe, images, labels, blocks=blocks, timesteps=timesteps)
    out = result.save(args.out)
    for label in result.accuracy:
        print(f"\n{label}: linear-probe accuracy (held out)\n{result.table(label)}")
    result.write_html(out / "probe.html")
    if args.sae:
        sae = result.sae(sae_block, int(sae_t))
        print(
            f"\nk-SAE on {sae_block}@{sae_t}: k={sae.k}, dead {sae.dead_share:.2f}, "
            f"reconstruction error {sae.reconstruction_error:.3f}"
        )
        for label in result.labels:
            top = ", ".join(f"#{j} {name} {p:.2f}" for j, name, p in sae.monosemantic(label)[:6])
            print(
                f"  {label}: mean purity {sae.mean_purity(label):.2f} (random directions "
                f"{sae.random_purity[label]:.2f}); purest: {top}"
            )
    print(f"\nwrote {out} ({time.perf_counter() - started:.1f} s)")
    return 0


def _report(args) -> int:
    from .sweeps.report import write_report

    print(write_report(args.folder))
    print(f"wrote {Path(args.folder) / 'report' / 'curves.json'} and report.html")
    return 0


def _check_device(device: str | None) -> None:
    """A device name is checked before a model is loaded onto it."""
    if device is not None:
        from .core.models import check_device

        _flag("--device", check_device, device)


def _flag(flag: str, check, value):
    """``check(value)``, its refusal naming the flag."""
    try:
        return check(value)
    except (ValueError, TypeError) as err:
        raise ValueError(f"{flag}: {err}") from None


def main(argv: list[str] | None = None) -> int:
    """Every refusal is one line on stderr and exit status 2 (a traceback is a bug)."""
    args = _parser().parse_args(argv)
    try:
        return {"run": _run, "sweep": _sweep, "probe": _probe, "report": _report}[args.command](args)
    except (ValueError, TypeError, FileNotFoundError, MemoryError, ImportError) as err:
        print(f"difflens: error: {err}", file=sys.stderr)
        return 2
    except KeyError as err:  # a word that is not in the prompt
        print(f"difflens: error: {err.args[0] if err.args else err}", file=sys.stderr)
        return 2
    except OSError as err:  # a full disk, a file that cannot be written: say which, and stop cleanly
        where = f" ({err.filename})" if err.filename else ""
        print(f"difflens: error: {err.strerror or err}{where}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
