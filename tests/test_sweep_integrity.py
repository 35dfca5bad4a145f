"""A sweep folder is data someone may send you: every path read from it stays inside it, damage is detected, re-run
on resume and named by the report and the view — never a traceback, never another prompt's data."""

import json
import os
import shutil
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import difflens_widgets as dl
from difflens_widgets.cli import main
from difflens_widgets.sweeps import store
from difflens_widgets.sweeps.dataset import read_prompts

PROMPTS = ["a red circle", "a blue square", "a green star"]
RUN = dict(model="toy", layers=[0, 8], seeds=[0], num_inference_steps=1, scorers=["annotator"])


def quiet(*_):
    return None


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """A finished sweep, copied fresh for each test that damages it."""
    out = tmp_path_factory.mktemp("sweep") / "s"
    dl.sweep(PROMPTS, out, log=quiet, **RUN)
    return out


@pytest.fixture
def sweep(made, tmp_path):
    copy = tmp_path / "s"
    shutil.copytree(made, copy)
    return copy


def rewrite_rows(sweep, prompt_id, **columns):
    path = store.row_file(sweep, prompt_id)
    table = pq.read_table(path).to_pandas()
    for name, value in columns.items():
        table[name] = value
    pq.write_table(pa.Table.from_pandas(table), path)


def rerun(sweep):
    lines = []
    report = dl.sweep(PROMPTS, sweep, log=lines.append, **RUN)
    rows, problems = store.load(sweep)
    assert problems == [] and len(rows) == 6 and sorted(set(rows["prompt_id"])) == [0, 1, 2]
    return report, lines


@pytest.mark.parametrize("target", ["../../../../../../etc/hostname", "/etc/hostname", "manifest.json"])
def test_a_row_naming_a_file_outside_the_folder_or_not_a_png_is_never_read(sweep, target):
    rewrite_rows(sweep, 1, image=target)
    rows, problems = store.load(sweep)
    assert [p.prompt_id for p in problems] == [1] and 1 not in set(rows["prompt_id"])
    assert ("outside the sweep folder" if target.startswith(("/", "..")) else "not a PNG") in problems[0].what
    view = dl.SweepView(sweep)
    secret = open("/etc/hostname", "rb").read()
    frames = [f["png"] for f in view.frames]
    assert all(f.startswith(store.PNG_SIGNATURE) and secret not in f for f in frames)
    assert [e["id"] for e in view.sweep_entries] == [0, 2] and "prompt 1 (rows/00001.parquet)" in view.message
    with pytest.raises(ValueError, match="outside the sweep folder"):
        store.read_image(sweep, "../../../../../../etc/hostname")
    report, lines = rerun(sweep)
    assert report.processed == 1 and any("prompt 1" in line and "running it again" in line for line in lines)


def test_a_corrupted_row_file_is_reported_then_run_again(sweep, capsys):
    path = store.row_file(sweep, 2)
    data = bytearray(path.read_bytes())
    data[100:300] = bytes(200)
    path.write_bytes(bytes(data))
    assert main(["report", str(sweep)]) == 0
    out = capsys.readouterr().out
    assert "left out or suspect (1)" in out and "prompt 2 (rows/00002.parquet): unreadable" in out
    report, lines = rerun(sweep)
    assert report.done_before == 2 and report.processed == 1
    assert (sweep / "rows" / "00002.parquet.damaged").exists()  # set aside, for a look


def test_a_row_file_copied_from_another_prompt_is_not_counted_twice(sweep):
    shutil.copy(store.row_file(sweep, 0), store.row_file(sweep, 1))
    rows, problems = store.load(sweep)
    assert sorted(set(rows["prompt_id"])) == [0, 2] and "another prompt's rows" in problems[0].what
    assert rows["prompt"].tolist().count(PROMPTS[0]) == 2  # one prompt, its two images, once
    rerun(sweep)


@pytest.mark.parametrize("damage", ["deleted", "truncated", "replaced"])
def test_a_damaged_image_is_detected_and_its_prompt_run_again(sweep, damage):
    image = sweep / store.image_path(0, 8, 0)
    if damage == "deleted":
        image.unlink()
    elif damage == "truncated":
        image.write_bytes(image.read_bytes()[:120])
    else:
        image.write_bytes((sweep / store.image_path(1, 8, 0)).read_bytes())  # a whole PNG, another prompt's
    rows, problems = store.load(sweep)
    assert [p.prompt_id for p in problems] == [0]
    assert {"deleted": "missing", "truncated": "does not decode", "replaced": "not the one written"}[damage] in str(
        problems[0]
    )
    rerun(sweep)


def test_resuming_with_another_precision_or_edited_manifest_is_caught(sweep, capsys):
    with pytest.raises(ValueError, match="other spec.*precision"):
        dl.sweep(PROMPTS, sweep, log=quiet, dtype="bfloat16", **RUN)
    manifest = json.loads((sweep / "manifest.json").read_text())
    manifest["spec"]["run"]["seeds"] = [0, 1, 2, 3, 4]
    (sweep / "manifest.json").write_text(json.dumps(manifest))
    assert main(["report", str(sweep)]) == 0
    out = capsys.readouterr().out
    assert "manifest.json names seeds [0, 1, 2, 3, 4], the rows hold [0]" in out
    (sweep / "manifest.json").write_text("[]")
    assert main(["report", str(sweep)]) == 2
    assert "manifest.json is not a sweep manifest" in capsys.readouterr().err
    (sweep / "manifest.json").write_text("{not json")
    assert main(["sweep", "x.txt", "--out", str(sweep)]) == 2  # a missing prompt file is refused first
    with pytest.raises(ValueError, match="manifest.json is not valid JSON"):
        dl.sweep(PROMPTS, sweep, log=quiet, **RUN)


def test_nothing_is_written_before_every_argument_is_valid(tmp_path):
    for bad in ({"layers": [99]}, {"scorers": ["bogus"]}):
        out = tmp_path / f"bad{len(bad)}{list(bad)[0]}"
        with pytest.raises(ValueError, match="out of range|unknown scorer"):
            dl.sweep(PROMPTS, out, log=quiet, **{**RUN, **bad})
        assert not out.exists()
    afile = tmp_path / "afile"
    afile.write_text("")
    with pytest.raises(ValueError, match="is a file, not a folder"):
        dl.sweep(PROMPTS, afile, log=quiet, **RUN)


def test_prompt_files_are_read_as_people_write_them(tmp_path):
    bom = tmp_path / "p.csv"
    bom.write_bytes("\ufeffprompt,family\na red circle,shapes\n".encode())
    assert read_prompts(bom)[0]["prompt"] == "a red circle"  # the byte-order mark is not part of "prompt"
    bad = tmp_path / "p.txt"
    bad.write_bytes(b"a red circle\na blue \xff square\n")
    with pytest.raises(ValueError, match=r"p.txt line 2 is not UTF-8"):
        read_prompts(bad)
    many = tmp_path / "many.txt"
    many.write_text("\n".join(f"prompt {i}" for i in range(500)) + "\n\u200b\n")
    with pytest.raises(ValueError, match="many.txt row 501: a prompt is empty"):
        read_prompts(many)
    twice = tmp_path / "twice.txt"
    twice.write_text("a red circle\na blue square\na red circle\n")
    with pytest.raises(ValueError, match="rows 1 and 3 hold the same prompt"):
        read_prompts(twice)
    family = tmp_path / "f.jsonl"
    family.write_text('{"prompt": "a red circle", "family": {"name": "x"}}\n')
    with pytest.raises(ValueError, match="row 1: 'family' must be a name"):
        read_prompts(family)


# ---- links: a sweep folder no link can break --------------------------------------------------------------------
_READS: list | None = None  # while a test watches: the real path of every file this process opens


def _watch_opens(event, args):
    if _READS is not None and event == "open" and isinstance(args[0], (str, bytes)):
        path = os.fsdecode(args[0])
        _READS.append(os.path.realpath(path) if os.path.isabs(path) or os.path.exists(path) else path)


sys.addaudithook(_watch_opens)  # (an audit hook cannot be removed: it records only while _READS is a list)


@pytest.fixture
def reads(monkeypatch):
    """Every file opened while the test runs, as the file it really is: Python's opens through the audit hook,
    ``os.open`` (also relative to a folder's descriptor) through what /proc says the descriptor is, and the row
    files Arrow opens by path (which no Python hook sees)."""
    global _READS
    _READS = []
    real_open, real_table = os.open, pq.read_table

    def os_open(path, flags, mode=0o777, *, dir_fd=None):
        fd = real_open(path, flags, mode, dir_fd=dir_fd)
        _READS.append(os.readlink(f"/proc/self/fd/{fd}"))
        return fd

    def read_table(source, *args, **kwargs):
        if isinstance(source, (str, os.PathLike)):
            _READS.append(os.path.realpath(source))
        return real_table(source, *args, **kwargs)

    monkeypatch.setattr(os, "open", os_open)
    monkeypatch.setattr(pq, "read_table", read_table)
    yield _READS
    _READS = None


def read_outside(reads, outside):
    return [path for path in reads if str(path).startswith(str(outside))]


def test_a_looping_image_link_is_a_named_problem_then_run_again(sweep, capsys):
    image = sweep / store.image_path(1, 8, 0)
    image.unlink()
    os.symlink(image.name, image)  # a link to itself: resolving it loops
    rows, problems = store.load(sweep)
    assert [p.prompt_id for p in problems] == [1] and "is a link" in problems[0].what
    assert main(["report", str(sweep)]) == 0
    out = capsys.readouterr().out
    assert "prompt 1 (rows/00001.parquet)" in out and "Traceback" not in out
    view = dl.SweepView(sweep)
    assert [e["id"] for e in view.sweep_entries] == [0, 2] and "prompt 1" in view.message
    report, _ = rerun(sweep)
    assert report.processed == 1 and not image.is_symlink() and image.read_bytes().startswith(store.PNG_SIGNATURE)


@pytest.mark.parametrize("linked", ["row file", "rows folder", "images folder"])
def test_links_out_of_the_folder_are_never_read_nor_written_through(sweep, tmp_path, reads, linked):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    if linked == "row file":  # a whole, valid row file of that very prompt, only not inside the folder
        target = outside / "00001.parquet"
        shutil.move(store.row_file(sweep, 1), target)
        os.symlink(target, store.row_file(sweep, 1))
    else:
        moved = sweep / ("rows" if linked == "rows folder" else "images/00001")
        target = outside / moved.name
        shutil.move(moved, target)
        os.symlink(target, moved)
    before = sorted((p.relative_to(outside), p.read_bytes()) for p in outside.rglob("*") if p.is_file())
    reads.clear()  # (the test's own look at what is outside)
    if linked == "rows folder":
        with pytest.raises(FileNotFoundError, match=r"3 left out: prompt 0 .*rows is a link"):
            store.load(sweep)
    else:
        rows, problems = store.load(sweep)
        assert [p.prompt_id for p in problems] == [1] and "is a link" in problems[0].what
        assert 1 not in set(rows["prompt_id"])
    expected = [0, 1, 2] if linked == "rows folder" else [1]
    report, _ = rerun(sweep)
    assert report.processed == len(expected)
    assert read_outside(reads, outside) == []  # neither read ...
    after = sorted((p.relative_to(outside), p.read_bytes()) for p in outside.rglob("*") if p.is_file())
    assert after == before  # ... nor written, renamed or removed


def test_a_fifo_named_like_an_image_cannot_hang_a_reader(sweep):
    image = sweep / store.image_path(2, 0, 0)
    image.unlink()
    os.mkfifo(image)
    rows, problems = store.load(sweep)  # a blocking open would wait here for a writer forever
    assert [p.prompt_id for p in problems] == [2] and "not a regular file" in problems[0].what
    rerun(sweep)


def test_a_linked_manifest_is_refused_unread_and_replaced_by_a_resumed_sweep(sweep, tmp_path, reads, capsys):
    outside = tmp_path / "elsewhere.json"
    shutil.move(sweep / "manifest.json", outside)
    os.symlink(outside, sweep / "manifest.json")
    assert main(["report", str(sweep)]) == 2
    err = capsys.readouterr().err
    assert "manifest.json is a link" in err and len(err.strip().splitlines()) == 1
    report, _ = rerun(sweep)
    assert report.processed == 0 and not (sweep / "manifest.json").is_symlink()
    assert read_outside(reads, outside) == []
