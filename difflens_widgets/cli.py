"""Command line: ``difflens run "a red circle left of a blue square" --layers 0:12:2 --seeds 0,1 --out grid.png``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="difflens", description="Diffusion Lens from the command line.")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="lens one prompt and write a labelled grid (rows = seeds, columns = layers)")
    run.add_argument("prompt")
    run.add_argument("--model", default="toy", help="'toy' (default), a pipeline folder or a cached hub id")
    run.add_argument("--layers", default=None, help="e.g. 0:12:2 (a slice over 0..L) or 0,4,8; default all")
    run.add_argument("--seeds", default="0", help="comma-separated, e.g. 0,1")
    run.add_argument("--steps", type=int, default=20)
    run.add_argument("--guidance", type=float, default=7.5)
    run.add_argument("--negative", default=None, help="negative prompt")
    run.add_argument("--height", type=int, default=None)
    run.add_argument("--width", type=int, default=None)
    run.add_argument("--no-final-norm", action="store_true", help="ablation: skip the encoder's final norm")
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
    from difflens_widgets import options

    out = _check_out(args.out)  # everything that needs no model is checked before loading one
    options.parse_prompts(args.prompt)
    options.parse_seeds(args.seeds)
    options.check_steps(args.steps)
    options.check_guidance(args.guidance)
    pipe = dl.load_pipeline(args.model, device=args.device, download=args.download, dtype=args.dtype,
                            offload=args.offload)
    lens = dl.Lens(pipe)
    bars = []

    def progress(done, total, preview):
        if not bars:  # created at the first step, so a refused run prints no empty bar
            bars.append(tqdm(total=total, desc="denoising", unit="step", file=sys.stderr))
        bars[0].total = total
        bars[0].update(done - bars[0].n)

    try:
        result = lens.run(args.prompt, layers=args.layers, seeds=args.seeds, num_inference_steps=args.steps,
                          guidance_scale=args.guidance, negative_prompt=args.negative, height=args.height,
                          width=args.width, final_norm=False if args.no_final_norm else None, progress=progress,
                          max_batch=args.max_batch)
    finally:
        for bar in bars:
            bar.close()  # before any error line, so the message starts on a line of its own
    for event in result.params.get("memory_events", []):
        print(f"difflens: {event}", file=sys.stderr)
    out.parent.mkdir(parents=True, exist_ok=True)
    result.grid().save(out)
    if args.save_dir:
        result.save(args.save_dir)
    print(f"wrote {out} (layers {result.layers}, seeds {result.seeds}, {result.params['seconds']} s)")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return _run(args)
    except (ValueError, TypeError, FileNotFoundError, MemoryError) as err:
        print(f"difflens: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
