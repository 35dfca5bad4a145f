"""A sweep folder on disk, read as data someone may have sent you: nothing in it is trusted.

Layout: ``manifest.json`` (format, spec, prompts, versions), ``rows/<prompt id>.parquet`` (one file per finished
prompt, written last and atomically: the prompt's commit) and ``images/<prompt id>/layer<L>_seed<S>.png``.

Every read is checked. A row file counts only when it is readable, holds exactly its own prompt (its id and text),
every (layer, seed) of the run once, and every image it names is a path inside the folder to a PNG that decodes and
whose SHA-256 is the one recorded when it was written. Anything else — a corrupt or truncated file, a row file copied
from another prompt, a deleted or replaced image, a path that points outside the folder — is a *problem*: a rerun
sets the row file aside and runs that prompt again, and the report and the SweepView name it (which prompt, which
file) instead of failing or showing another prompt's data.

Every file is read by :func:`read_inside`: a regular file below the folder, reached one directory at a time without
following a link (a link that loops, or leads out, is refused unread, never resolved), opened without blocking (a
FIFO named like an image cannot hang a reader). The writer never makes links, so a link is always damage. Folders
the writer writes into are made by :func:`real_dir`, which moves a link found in their place aside first.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_HAS_DIR_FD = os.open in os.supports_dir_fd  # every POSIX system; not Windows
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


class OutsideFile(ValueError):
    """A name in a sweep folder that does not lead to a regular file inside it (a link, a FIFO, ``..``)."""


def write_atomic(path: Path, data: bytes) -> None:
    """Write to a temporary name, then rename: readers see the whole file or none (a killed writer leaves none).
    The temporary file is created exclusively (a link planted under its name is not followed) and the rename
    replaces a link at ``path`` itself, never what it points to."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        with open(tmp, "xb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _parts(relative: object) -> list[str]:
    """The components of a relative name inside the folder; OutsideFile for an absolute one or one with ``..``."""
    if not isinstance(relative, str) or not relative:
        raise OutsideFile(f"names no file ({relative!r})")
    path = PurePosixPath(relative.replace("\\", "/"))
    if path.is_absolute() or ".." in path.parts or Path(relative).is_absolute():
        raise OutsideFile(f"names {relative!r}, a path outside the sweep folder (refused, not read)")
    return [part for part in path.parts if part != "."]


def read_inside(out: Path, relative: object) -> bytes:
    """The bytes of the regular file ``relative`` names inside the folder ``out``, reached without following a link.

    FileNotFoundError when it does not exist; OutsideFile (a ValueError, with the reason) when the name leads out
    of the folder, through or onto a link, or to something other than a regular file. Each directory is opened
    relative to the one before with ``O_NOFOLLOW`` (no race between a check and the open); the file is opened
    non-blocking and checked with ``fstat`` before a byte is read.
    """
    parts = _parts(relative)
    nofollow = getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        folder = os.open(out, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError as err:
        raise SweepFolderError(f"{out} cannot be opened as a folder ({os.strerror(err.errno)})") from None
    try:
        for depth in range(len(parts)):
            last = depth == len(parts) - 1
            flags = os.O_RDONLY | nofollow | (0 if last else getattr(os, "O_DIRECTORY", 0))
            try:
                handle = _open_below(folder, out, parts[: depth + 1], flags)
            except OSError as err:
                if err.errno in (errno.ENOENT,):
                    raise FileNotFoundError(f"{relative} is missing") from None
                where = "/".join(parts[: depth + 1])
                if _is_link(folder, out, parts[: depth + 1]):  # O_NOFOLLOW said ELOOP, or ENOTDIR for a folder
                    raise OutsideFile(f"{where} is a link (links are not followed)") from None
                if err.errno == errno.ENOTDIR:
                    raise OutsideFile(f"{where} is not a folder") from None
                raise OutsideFile(f"{relative} cannot be opened ({os.strerror(err.errno)})") from None
            os.close(folder)
            folder = handle
        if not stat.S_ISREG(os.fstat(folder).st_mode):
            raise OutsideFile(f"{relative} is not a regular file")
        chunks = []
        while chunk := os.read(folder, 1 << 20):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(folder)


def _open_below(folder: int, out: Path, parts: list[str], flags: int) -> int:
    """Open ``parts[-1]`` in the already open directory ``folder`` (``dir_fd``); where the system has no ``dir_fd``
    (Windows), the whole path from ``out``, after an ``lstat`` that refuses a link."""
    if _HAS_DIR_FD:
        return os.open(parts[-1], flags, dir_fd=folder)
    path = Path(out, *parts)
    if path.is_symlink():
        raise OSError(errno.ELOOP, "a link")
    return os.open(path, flags)


def _is_link(folder: int, out: Path, parts: list[str]) -> bool:
    try:
        if _HAS_DIR_FD:
            return stat.S_ISLNK(os.stat(parts[-1], dir_fd=folder, follow_symlinks=False).st_mode)
        return Path(out, *parts).is_symlink()
    except OSError:
        return False


def real_dir(out: Path, relative: str) -> Path:
    """The folder ``out/relative``, made where missing; a link (or a file) found in the way of any part of it is
    renamed ``<name>.damaged`` first, so what is written next lands inside the sweep folder."""
    path = Path(out)
    for part in _parts(relative):
        path = path / part
        if path.is_symlink() or (os.path.lexists(path) and not path.is_dir()):
            os.replace(path, path.with_name(path.name + ".damaged"))
        path.mkdir(exist_ok=True)
    return path


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
    try:
        text = read_inside(Path(out), "manifest.json").decode("utf-8")
        manifest = json.loads(text)
    except FileNotFoundError:
        raise FileNotFoundError(f"{out} is not a sweep folder (no manifest.json)") from None
    except OutsideFile as err:
        raise SweepFolderError(f"{path} is not read: {err}") from None
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
    try:
        data = read_inside(Path(out), relative)
    except FileNotFoundError:
        raise ValueError(f"its image {relative} is missing") from None
    except OutsideFile as err:
        raise ValueError(str(err) if "outside" in str(err) else f"its image {relative}: {err}") from None
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
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = row_file(out, prompt["id"])
    name = str(path.relative_to(out))
    try:
        data = read_inside(out, name)
    except FileNotFoundError:
        return None, Problem(prompt["id"], name, "no rows yet")
    except OutsideFile as err:
        return None, Problem(prompt["id"], name, f"not read: {err}")
    try:
        table = pq.read_table(pa.BufferReader(data))
        rows = table.to_pandas()
        left_out, why = _non_finite_of(table)
    except Exception as err:  # noqa: BLE001 - any failure to read is a damaged file
        return None, Problem(prompt["id"], name, f"unreadable ({type(err).__name__}: {str(err)[:80]})")
    missing = [c for c in ROW_COLUMNS if c not in rows.columns]
    if missing:
        return None, Problem(prompt["id"], name, f"lacks the columns {missing}")
    if len(rows) and (set(rows["prompt_id"]) != {prompt["id"]} or set(rows["prompt"]) != {prompt["prompt"]}):
        return None, Problem(prompt["id"], name, "holds another prompt's rows (a copied or moved file)")
    if not len(rows) and not left_out:
        return None, Problem(prompt["id"], name, "holds no row")
    if digest is not None and len(rows) and set(rows["spec_sha256"]) != {digest}:
        items = None
    found = list(zip(rows["layer"].astype(int), rows["seed"].astype(int)))
    if len(set(found)) != len(found) or (items is not None and set(found) | left_out != items) or set(found) & left_out:
        return None, Problem(prompt["id"], name, "does not hold every (layer, seed) of the run exactly once")
    if check_images:
        for relative, digest in zip(rows["image"], rows["image_sha256"]):
            try:
                data = read_image(out, relative)
            except ValueError as err:
                return None, Problem(prompt["id"], name, str(err))
            if sha256(data) != digest:
                return None, Problem(prompt["id"], name, f"its image {relative} is not the one written")
    rows.attrs["non_finite"] = why  # a whole prompt, some of whose images are not rows: load() names them
    return rows, None


NON_FINITE_KEY = b"difflens.non_finite"  # the row file's metadata: the (layer, seed) pairs left out, and why


def rows_table(records: list[dict], non_finite: dict, problem: str):
    """A prompt's row file as an Arrow table: a row per finished image; the images that came out non-finite are
    not rows but recorded in the file's metadata (with the engine's one line), so the prompt is whole, not redone
    (it would come out the same), and the report names them."""
    import pyarrow as pa

    if records:
        table = pa.Table.from_pylist(records)
    else:  # every image non-finite: the columns still there, no row
        types = {"prompt_id": pa.int64(), "layer": pa.int64(), "seed": pa.int64()}
        table = pa.table({name: pa.array([], types.get(name, pa.string())) for name in ROW_COLUMNS})
    if non_finite:
        listed = [[layer, seed, where] for (layer, seed), where in sorted(non_finite.items())]
        table = table.replace_schema_metadata(
            {**(table.schema.metadata or {}), NON_FINITE_KEY: json.dumps({"items": listed, "problem": problem})}
        )
    return table


def _non_finite_of(table) -> tuple[set[tuple[int, int]], str]:
    """The (layer, seed) pairs a row file records as non-finite, and the line that says why (empty: none)."""
    raw = (table.schema.metadata or {}).get(NON_FINITE_KEY)
    if raw is None:
        return set(), ""
    try:
        data = json.loads(raw)
        return {(int(layer), int(seed)) for layer, seed, _ in data["items"]}, str(data["problem"])
    except (ValueError, KeyError, TypeError):
        raise ValueError("its record of non-finite images is damaged") from None


def set_aside(out: Path, problem: Problem) -> None:
    """Move a damaged row file out of the way (kept as ``.damaged`` for a look), so its prompt is run again. A link
    on the way to it (a linked ``rows/``) is what is moved, never what it points to: nothing outside is renamed."""
    path = Path(out)
    for part in _parts(problem.file):
        path = path / part
        if path.is_symlink() or not path.is_dir():
            break
    if os.path.lexists(path) and path != Path(out):
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
            frames += [rows] if len(rows) else []  # (a prompt whose every image came out non-finite has no row)
            if rows.attrs.get("non_finite"):
                problems.append(Problem(prompt["id"], str(row_file(out, prompt["id"]).relative_to(out)),
                                        rows.attrs["non_finite"]))  # fmt: skip
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
        detail = f" ({len(problems)} left out: {problems[0]})" if problems else ""
        raise FileNotFoundError(f"{out} holds no whole sweep rows{detail}; run `difflens sweep` first")
    rows = pd.concat(frames, ignore_index=True)
    rows.attrs["problems"] = [str(p) for p in problems]
    return rows, problems
