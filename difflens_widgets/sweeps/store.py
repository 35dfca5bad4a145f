"""A sweep folder on disk, read as data someone may have sent you: nothing in it is trusted.

Layout: ``manifest.json`` (format, spec, prompts, versions), ``rows/<prompt id>.parquet`` (one file per finished
prompt, written last and atomically: the prompt's commit) and ``images/<prompt id>/layer<L>_seed<S>.png``.

Every read is checked. A row file counts only when it is readable, holds exactly its own prompt (its id and text),
every (layer, seed) of the run once, and every image it names is a path inside the folder to a PNG that decodes and
whose SHA-256 is the one recorded when it was written. Anything else — a corrupt or truncated file, a row file copied
from another prompt, a deleted or replaced image, a path that points outside the folder — is a *problem*: a rerun
sets the row file aside and runs that prompt again, and the report and the SweepView name it (which prompt, which
file) instead of failing or showing another prompt's data.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
ROW_COLUMNS = ("prompt_id", "prompt", "layer", "seed", "image", "image_sha256", "spec_sha256")


class SweepFolderError(ValueError):
    """A sweep folder (or its manifest) that cannot be read as one: the message says which file and why."""


@dataclass(frozen=True)
class Problem:
    """Something wrong with one prompt's stored data."""

    prompt_id: int
    file: str  # relative to the sweep folder
    what: str

    def __str__(self) -> str:
        return f"prompt {self.prompt_id} ({self.file}): {self.what}"


def write_atomic(path: Path, data: bytes) -> None:
    """Write to a temporary name, then rename: readers see the whole file or none (a killed writer leaves none)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def row_file(out: Path, prompt_id: int) -> Path:
    return out / "rows" / f"{prompt_id:05d}.parquet"


def image_path(prompt_id: int, layer: int, seed: int) -> str:
    return f"images/{prompt_id:05d}/layer{layer:02d}_seed{seed}.png"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def check_out_folder(out: Path) -> None:
    """``out`` must be a folder or not exist yet (checked before anything is written)."""
    if out.exists() and not out.is_dir():
        raise SweepFolderError(f"--out {str(out)!r} is a file, not a folder: choose a folder for the sweep")


# ---- the manifest ----------------------------------------------------------------------------------------------
def read_manifest(out: Path) -> dict:
    """The manifest as a dict with ``spec`` and ``prompts``, or a SweepFolderError naming the file."""
    path = Path(out) / "manifest.json"
    if not path.exists():
        raise FileNotFoundError(f"{out} is not a sweep folder (no manifest.json)")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise SweepFolderError(f"{path} is not valid JSON ({err}); it is not a sweep manifest") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("spec"), dict):
        raise SweepFolderError(f"{path} is not a sweep manifest: it has no 'spec' object")
    if not isinstance(manifest.get("prompts"), list) or not all(
        isinstance(p, dict) and isinstance(p.get("id"), int) and isinstance(p.get("prompt"), str)
        for p in manifest["prompts"]
    ):
        raise SweepFolderError(f"{path} is not a sweep manifest: its 'prompts' are not a list of {{id, prompt}}")
    return manifest


def spec_digest(spec: dict) -> str:
    """What each row records of the manifest's spec when it is written: a later edit of the manifest shows."""
    return sha256(json.dumps(spec, sort_keys=True, default=str).encode())


def expected_items(manifest: dict) -> set[tuple[int, int]] | None:
    """Every (layer, seed) a prompt of this sweep has, from the resolved run (None: a manifest too old to say)."""
    run = manifest["spec"].get("run")
    if not isinstance(run, dict):
        return None
    try:
        return {(int(layer), int(seed)) for layer in run["layers"] for seed in run["seeds"]}
    except (KeyError, TypeError, ValueError):
        raise SweepFolderError("manifest.json's run has no list of layers and seeds") from None


# ---- images ----------------------------------------------------------------------------------------------------
def read_image(out: Path, relative: object) -> bytes:
    """The bytes of a stored image, only if ``relative`` names a file inside ``out`` that is a whole PNG; raises
    ValueError saying what is wrong otherwise. No other file is ever read (a row may name ``../../etc/passwd``)."""
    if not isinstance(relative, str) or not relative:
        raise ValueError(f"names no image ({relative!r})")
    root = Path(out).resolve()
    path = (root / relative).resolve()
    if not path.is_relative_to(root) or Path(relative).is_absolute():
        raise ValueError(f"names {relative!r}, a path outside the sweep folder (refused, not read)")
    if not path.is_file():
        raise ValueError(f"its image {relative} is missing")
    data = path.read_bytes()
    if not data.startswith(PNG_SIGNATURE):
        raise ValueError(f"its image {relative} is not a PNG")
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
    except Exception as err:  # noqa: BLE001 - any decode failure means a damaged image
        raise ValueError(f"its image {relative} does not decode ({type(err).__name__})") from None
    return data


# ---- row files -------------------------------------------------------------------------------------------------
def read_rows_of(out: Path, prompt: dict, items: set | None, check_images: bool = True, digest: str | None = None):
    """(the prompt's rows as a pandas DataFrame, None) when its row file is whole, else (None, Problem). When the
    rows were written under another spec than ``digest`` (an edited manifest), the manifest's (layer, seed) list is
    not held against them."""
    import pyarrow.parquet as pq

    path = row_file(out, prompt["id"])
    name = str(path.relative_to(out))
    if not path.exists():
        return None, Problem(prompt["id"], name, "no rows yet")
    try:
        rows = pq.read_table(path).to_pandas()
    except Exception as err:  # noqa: BLE001 - any failure to read is a damaged file
        return None, Problem(prompt["id"], name, f"unreadable ({type(err).__name__}: {str(err)[:80]})")
    missing = [c for c in ROW_COLUMNS if c not in rows.columns]
    if missing:
        return None, Problem(prompt["id"], name, f"lacks the columns {missing}")
    if set(rows["prompt_id"]) != {prompt["id"]} or set(rows["prompt"]) != {prompt["prompt"]}:
        return None, Problem(prompt["id"], name, "holds another prompt's rows (a copied or moved file)")
    if digest is not None and set(rows["spec_sha256"]) != {digest}:
        items = None
    found = list(zip(rows["layer"].astype(int), rows["seed"].astype(int)))
    if len(set(found)) != len(found) or (items is not None and set(found) != items):
        return None, Problem(prompt["id"], name, "does not hold every (layer, seed) of the run exactly once")
    if check_images:
        for relative, digest in zip(rows["image"], rows["image_sha256"]):
            try:
                data = read_image(out, relative)
            except ValueError as err:
                return None, Problem(prompt["id"], name, str(err))
            if sha256(data) != digest:
                return None, Problem(prompt["id"], name, f"its image {relative} is not the one written")
    return rows, None


def set_aside(out: Path, problem: Problem) -> None:
    """Move a damaged row file out of the way (kept as ``.damaged`` for a look), so its prompt is run again."""
    path = out / problem.file
    if path.exists():
        os.replace(path, path.with_name(path.name + ".damaged"))


def load(out: str | Path, check_images: bool = True):
    """(every whole row of the sweep as one DataFrame, the problems found): damaged prompts are left out and named,
    never read as another prompt's data."""
    import pandas as pd

    out = Path(out)
    manifest = read_manifest(out)
    items, digest = expected_items(manifest), spec_digest(manifest["spec"])
    frames, problems = [], []
    for prompt in manifest["prompts"]:
        rows, problem = read_rows_of(out, prompt, items, check_images, digest)
        if rows is not None:
            frames.append(rows)
        elif problem is not None and problem.what != "no rows yet":
            problems.append(problem)
    edited = [int(f["prompt_id"].iloc[0]) for f in frames if set(f["spec_sha256"]) != {digest}]
    if edited:
        problems.append(
            Problem(
                edited[0],
                "manifest.json",
                f"changed after the rows of {len(edited)} prompt(s) "
                "were written: what it says of the run is not what ran; the rows are counted",
            )
        )
    if not frames:
        detail = f" ({len(problems)} damaged: {problems[0]})" if problems else ""
        raise FileNotFoundError(f"{out} holds no whole sweep rows{detail}; run `difflens sweep` first")
    rows = pd.concat(frames, ignore_index=True)
    rows.attrs["problems"] = [str(p) for p in problems]
    return rows, problems
