"""The hand-checked set: generated toy images labelled by eye, the yardstick for the annotator.

The annotator is right on renders by construction; what the emergence report needs is that it is right on what the
toy model *generates* — soft, faded, sometimes noise. So a fixed set of generated images, spread over layers,
caption families and the no-final-norm ablation, was looked at one by one and what each shows was written down:

    python -m difflens_widgets.studies.handcheck generate --model runs/toy2/pipeline   # the images, into handchecked/
    python -m difflens_widgets.studies.handcheck generate --model toy-t5 --count 120 --out .../handchecked_t5
    python -m difflens_widgets.studies.handcheck sheets          # contact sheets to look at (then write labels.jsonl)
    python -m difflens_widgets.studies.handcheck agreement       # the annotator against the labels

``labels.jsonl`` has one record per image: the prompt and how it was made, and what the labeller saw —
``seen``, the coloured shapes drawn (``"red square"``; ``"red blob"`` for paint of a clear colour whose shape cannot
be named; a tint whose colour cannot be named is left out),
and ``relation`` (for relation prompts whose two objects are both drawn: does the arrangement match?). The
questions (objects / colors / both / relation) are then answered from ``seen`` by the same :func:`~.annotate.judge`
the annotator's detections go through, so agreement compares what was seen, not two implementations of the rules.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from PIL import Image, ImageDraw

from ..toy import HANDCHECKED_DIR
from ..toy.annotate import BLOB, QUESTIONS, Detection, annotate, judge, parse_caption
from ..toy.world import COLORS, RELATIONS, SHAPES

DEFAULT_FOLDER = HANDCHECKED_DIR  # shipped: anyone can re-measure the annotator
SHEET_COLUMNS, SHEET_ROWS, SHEET_SCALE = 5, 4, 3


# ---------------------------------------------------------------------------------------------------------------
# The set
# ---------------------------------------------------------------------------------------------------------------
def plan(seed: int = 0) -> list[dict]:
    """Which images to generate: every evaluation family, layers spread 0..L (more weight where shapes form),
    seeds 0–7, a fifth of them without the final norm. Deterministic."""
    from .report import evaluation_prompts

    rng = random.Random(seed)
    prompts = evaluation_prompts(None)
    families = list(prompts)
    items = []
    for i in range(240):
        family = families[i % len(families)]
        items.append(
            {
                "prompt": rng.choice(prompts[family]),
                "family": family,
                "layer": rng.choice([0, 1, 2, 3, 4, 4, 5, 5, 6, 6, 7, 7, 8, 8, 8]),
                "seed": rng.randrange(8),
                "final_norm": rng.random() >= 0.2,
            }
        )
    return items


def generate(
    model: str, out: Path, seed: int = 0, steps: int = 20, guidance: float = 7.5, count: int | None = None
) -> list[dict]:
    """Generate the planned images (the first ``count``: the plan cycles through the families, so any prefix covers
    them all) into ``out/images`` and write ``out/items.jsonl`` (the labels come later)."""
    from ..core.engine import Lens
    from ..core.models import load_pipeline

    lens = Lens(load_pipeline(model), cache_size=1)
    (out / "images").mkdir(parents=True, exist_ok=True)
    items = plan(seed)[:count]
    for index, item in enumerate(items):
        item["image"] = f"{index:03d}.png"
        item["layer"] = min(item["layer"], lens.num_layers)
        result = lens.run(
            item["prompt"],
            layers=[item["layer"]],
            seeds=[item["seed"]],
            num_inference_steps=steps,
            guidance_scale=guidance,
            final_norm=item["final_norm"],
        )
        result.images[(item["layer"], item["seed"])].save(out / "images" / item["image"])
    with open(out / "items.jsonl", "w") as f:
        for item in items:
            f.write(json.dumps(item) + "\n")
    return items


def load_labels(folder: Path) -> list[dict]:
    """The labelled records of ``folder/labels.jsonl``, each checked: known words, a relation only where it means
    something."""
    records = [json.loads(line) for line in (Path(folder) / "labels.jsonl").read_text().splitlines() if line.strip()]
    for record in records:
        for phrase in record["seen"]:
            color, _, shape = phrase.partition(" ")
            if color not in COLORS or shape not in SHAPES + (BLOB,):
                raise ValueError(
                    f"{record['image']}: {phrase!r} is not '<colour> <shape>' (colours: "
                    f"{', '.join(COLORS)}; shapes: {', '.join(SHAPES)}, or {BLOB})"
                )
        if record.get("relation") is not None and parse_caption(record["prompt"]).relation not in RELATIONS:
            raise ValueError(f"{record['image']}: a relation label on a prompt without a relation")
    return records


# ---------------------------------------------------------------------------------------------------------------
# Agreement
# ---------------------------------------------------------------------------------------------------------------
def seen_verdicts(record: dict) -> dict[str, bool]:
    """The questions answered from what the labeller saw."""
    detections = [Detection(p.partition(" ")[2], p.partition(" ")[0], 0.0, 0.0, 0, 1.0) for p in record["seen"]]
    verdicts = judge(detections, record["prompt"])
    if "relation" in verdicts:
        verdicts["relation"] = bool(verdicts["both"] and record.get("relation"))
    return verdicts


def agreement(folder: Path, records: list[dict] | None = None) -> dict:
    """Per question, the share of images where the annotator's verdict equals the labeller's; and on images the
    labeller saw nothing in, the share where the annotator reports any shape (false positives)."""
    folder = Path(folder)
    records = load_labels(folder) if records is None else records
    matches: dict[str, list[bool]] = {q: [] for q in QUESTIONS}
    disagreements, noise, noise_hits = [], 0, 0
    for record in records:
        detections = annotate(Image.open(folder / "images" / record["image"]))
        machine = judge(detections, record["prompt"])
        human = seen_verdicts(record)
        for question, value in human.items():
            matches[question].append(machine[question] == value)
            if machine[question] != value:
                disagreements.append(
                    {
                        "image": record["image"],
                        "question": question,
                        "labelled": value,
                        "annotator": machine[question],
                        "detected": [d.phrase for d in detections],
                        "seen": record["seen"],
                    }
                )
        if not record["seen"]:
            noise += 1
            noise_hits += bool(detections)
    return {
        "images": len(records),
        "agreement": {q: round(sum(m) / len(m), 4) for q, m in matches.items() if m},
        "judged": {q: len(m) for q, m in matches.items() if m},
        "noise_images": noise,
        "noise_false_positive": round(noise_hits / noise, 4) if noise else None,
        "disagreements": disagreements,
    }


# ---------------------------------------------------------------------------------------------------------------
# Contact sheets
# ---------------------------------------------------------------------------------------------------------------
def sheets(folder: Path, out: Path | None = None, with_annotator: bool = False) -> list[Path]:
    """Contact sheets of the set (20 images each, enlarged 3×, numbered, prompt under each) to label by eye.
    ``with_annotator`` prints the annotator's reading under each image too (for adjudicating disagreements only:
    label first, without it)."""
    folder = Path(folder)
    out = Path(out) if out else folder / "sheets"
    out.mkdir(parents=True, exist_ok=True)
    items = [json.loads(line) for line in (folder / "items.jsonl").read_text().splitlines() if line.strip()]
    per_sheet = SHEET_COLUMNS * SHEET_ROWS
    cell_w, cell_h = 64 * SHEET_SCALE + 16, 64 * SHEET_SCALE + 58
    written = []
    for first in range(0, len(items), per_sheet):
        sheet = Image.new("RGB", (SHEET_COLUMNS * cell_w, SHEET_ROWS * cell_h), "white")
        draw = ImageDraw.Draw(sheet)
        for k, item in enumerate(items[first : first + per_sheet]):
            x, y = (k % SHEET_COLUMNS) * cell_w + 8, (k // SHEET_COLUMNS) * cell_h + 4
            image = Image.open(folder / "images" / item["image"]).convert("RGB")
            sheet.paste(image.resize((64 * SHEET_SCALE,) * 2, Image.NEAREST), (x, y))
            lines = [
                f"#{item['image'][:-4]}  L{item['layer']}{'' if item['final_norm'] else ' no-norm'}",
                *_wrap(item["prompt"], 34),
            ]
            if with_annotator:
                lines.append("A: " + ", ".join(d.phrase for d in annotate(image)))
            for j, line in enumerate(lines[:4]):
                draw.text((x, y + 64 * SHEET_SCALE + 2 + 13 * j), line, fill="black")
        path = out / f"sheet_{first // per_sheet:02d}.png"
        sheet.save(path)
        written.append(path)
    return written


def _wrap(text: str, width: int) -> list[str]:
    lines, line = [], ""
    for word in text.split():
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    return lines + [line] if line else lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    g = sub.add_parser("generate", help="generate the planned images")
    g.add_argument("--model", default="toy")
    g.add_argument("--out", type=Path, default=DEFAULT_FOLDER)
    g.add_argument("--count", type=int, default=None, help="the first N planned images (default: all 240)")
    s = sub.add_parser("sheets", help="contact sheets to label by eye")
    s.add_argument("folder", type=Path, nargs="?", default=DEFAULT_FOLDER)
    s.add_argument("--out", type=Path, default=None, help="where the sheets go (default: FOLDER/sheets)")
    s.add_argument("--with-annotator", action="store_true")
    a = sub.add_parser("agreement", help="the annotator against the labels")
    a.add_argument("folder", type=Path, nargs="?", default=DEFAULT_FOLDER)
    args = parser.parse_args(argv)
    if args.command == "generate":
        print(f"wrote {len(generate(args.model, args.out, count=args.count))} images to {args.out / 'images'}")
    elif args.command == "sheets":
        for path in sheets(args.folder, args.out, with_annotator=args.with_annotator):
            print(path)
    else:
        report = agreement(args.folder)
        for d in report.pop("disagreements"):
            print(
                f"  {d['image']} {d['question']}: labelled {d['labelled']}, annotator {d['annotator']} "
                f"(saw {d['seen']}, detected {d['detected']})"
            )
        print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
