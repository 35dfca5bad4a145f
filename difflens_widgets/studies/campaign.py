"""Several toy trainings on one machine, sharing one pool, inside one wall-clock budget; then their results packed
into a few files small enough to carry off a time-limited machine.

    python -m difflens_widgets.studies.campaign --out /tmp/campaign --pack $OUT --minutes 8.5 \\
        --run t5:t5-dit:1e-3:512 --run t5-slow:t5-dit:3e-4:512 --run clip:clip-unet:1e-3:256

Toy models are so small that one training leaves a GPU mostly idle (each step is kernel launches, not arithmetic),
so trainings running side by side cost each other little. The pool is rendered and encoded once for all of them;
every run starts from the shipped VAE, so all models share one latent space. Each run stops itself before the
budget ends (``--max-minutes``, checkpoint + export + a last relation check); a run that fails leaves its log and
the others go on.

Packing keeps what a next session needs to resume and ship, within 8 files of at most 16 MiB: the logs of every
run; the raw and EMA weights (fp16) of the better run of each kind (judged by the last relation check of its EMA
weights); for a kind whose weights would not fit, its EMA weights alone. Files over the limit are split into
``.partNN`` pieces (``cat`` them back together).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path

from ..toy import MODEL_DIR
from .pool import TRAINING_WEIGHTS
from .train import KINDS, WEIGHTS_FILE

PART_BYTES = 15 * 2**20  # under a 16 MiB per-file limit


@dataclass(frozen=True)
class RunSpec:
    name: str
    kind: str
    lr: float
    batch: int

    @classmethod
    def parse(cls, text: str) -> RunSpec:
        try:
            name, kind, lr, batch = text.split(":")
            spec = cls(name, kind, float(lr), int(batch))
        except ValueError:
            raise ValueError(f"--run takes NAME:KIND:LR:BATCH (e.g. t5:t5-dit:1e-3:512), got {text!r}") from None
        if spec.kind not in KINDS:
            raise ValueError(f"--run {text!r}: unknown kind {spec.kind!r}; kinds: {', '.join(KINDS)}")
        return spec


def run_spec(text: str) -> RunSpec:
    """:meth:`RunSpec.parse` for argparse, which would otherwise replace the message with its own."""
    try:
        return RunSpec.parse(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def last_eval(run_dir: Path, weights: str = "ema") -> dict | None:
    """The last relation check of ``weights`` in a run's log, or None."""
    log = run_dir / "log.jsonl"
    if not log.exists():
        return None
    checks = [r for r in map(json.loads, log.read_text().splitlines()) if r.get("stage") == "eval"]
    checks = [r for r in checks if r.get("weights") == weights]
    return checks[-1] if checks else None


def score(check: dict | None) -> float:
    """Relations drawn right, all images counted (both objects there and placed right): what the run is for."""
    return -1.0 if check is None else check["relation"]


def split_file(path: Path, into: Path) -> list[Path]:
    """``path`` copied into ``into``, in ``.partNN`` pieces when larger than :data:`PART_BYTES`."""
    data = path.read_bytes()
    if len(data) <= PART_BYTES:
        target = into / path.name
        target.write_bytes(data)
        return [target]
    pieces = []
    for k in range(0, len(data), PART_BYTES):
        piece = into / f"{path.name}.part{k // PART_BYTES:02d}"
        piece.write_bytes(data[k : k + PART_BYTES])
        pieces.append(piece)
    return pieces


def ema_only(source: Path, target: Path) -> Path:
    """A weights file with the EMA weights alone (half the size; :func:`train.load_weights` resumes from it)."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    tensors = load_file(source)
    with safe_open(source, "pt") as f:
        metadata = f.metadata()
    save_file({k: v for k, v in tensors.items() if k.startswith("ema_")}, target, metadata=metadata)
    return target


def pack(root: Path, specs: list[RunSpec], into: Path, budget_bytes: int = 60 * 2**20) -> list[Path]:
    """The logs of every run, then per kind the best run's weights (raw + EMA, or EMA alone when both would not
    fit in what is left of ``budget_bytes``)."""
    into.mkdir(parents=True, exist_ok=True)
    logs = into / "logs.tar.gz"
    with tarfile.open(logs, "w:gz") as tar:
        for path in sorted(root.glob("*/*.jsonl")) + sorted(root.glob("*/*.txt")) + sorted(root.glob("pool/pool.json")):
            tar.add(path, arcname=str(path.relative_to(root)))
    packed, left = [logs], budget_bytes - logs.stat().st_size
    scores = {spec.name: score(last_eval(root / spec.name)) for spec in specs}  # each log read once
    best: dict[str, RunSpec] = {}
    for spec in specs:
        if spec.kind not in best or scores[spec.name] > scores[best[spec.kind].name]:
            best[spec.kind] = spec
    for spec in best.values():
        weights = root / spec.name / WEIGHTS_FILE
        if not weights.exists():
            continue
        if weights.stat().st_size > left:
            weights = ema_only(weights, root / spec.name / "weights-ema.safetensors")
        if weights.stat().st_size > left:
            continue
        named = weights.with_name(f"{spec.name}.{weights.name}")
        weights.rename(named)
        packed += split_file(named, into)
        left -= named.stat().st_size
    return packed


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, type=Path, help="where the pool and the runs go")
    parser.add_argument("--pack", type=Path, default=None, help="folder to pack the results into")
    parser.add_argument("--minutes", type=float, required=True, help="wall-clock budget of the whole campaign")
    parser.add_argument("--run", action="append", required=True, type=run_spec, help="NAME:KIND:LR:BATCH")
    parser.add_argument("--scenes", type=int, default=400_000)
    parser.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 2))
    parser.add_argument("--device", default=None)
    parser.add_argument("--eval-every", type=int, default=500)
    parser.add_argument("--steps", type=int, default=200_000, help="the schedule's span (lr nearly constant)")
    parser.add_argument("--reserve-minutes", type=float, default=1.0, help="kept for the last check and packing")
    args = parser.parse_args(argv)
    deadline = time.time() + 60 * args.minutes
    args.out.mkdir(parents=True, exist_ok=True)
    device = ["--device", args.device] if args.device else []
    pool = args.out / "pool"
    if not (pool / "captions.json").exists():
        subprocess.run(
            [sys.executable, "-m", "difflens_widgets.studies.pool", "--out", str(pool), "--scenes",
             str(args.scenes), "--workers", str(args.workers), "--weights",
             TRAINING_WEIGHTS, *device],
            check=True,
        )  # fmt: skip
    minutes = (deadline - time.time()) / 60 - args.reserve_minutes
    threads = str(max(1, (os.cpu_count() or 2) // len(args.run)))  # the CPU side of each run: draws, the annotator
    processes = []
    for spec in args.run:
        run_dir = args.out / spec.name
        run_dir.mkdir(exist_ok=True)
        command = [
            sys.executable, "-m", "difflens_widgets.studies.train", "--out", str(run_dir), "--kind", spec.kind,
            "--vae-from", str(MODEL_DIR / "vae"), "--vae-steps", "0", "--pool", str(pool), "--lr", str(spec.lr),
            "--batch", str(spec.batch), "--steps", str(args.steps), "--eval-every", str(args.eval_every),
            "--checkpoint-every", "1000", "--export-every", "1000", "--max-minutes", f"{minutes:.2f}",
            "--threads", threads, *device,
        ]  # fmt: skip
        output = open(run_dir / "output.txt", "w")
        processes.append((spec, subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT)))
    for spec, process in processes:
        process.wait()
        print(f"{spec.name}: exit {process.returncode}; last EMA check {last_eval(args.out / spec.name)}", flush=True)
    if args.pack:
        for path in pack(args.out, args.run, args.pack):
            print(f"packed {path} ({path.stat().st_size / 2**20:.1f} MiB)")


if __name__ == "__main__":
    main()
