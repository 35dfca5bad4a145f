"""Every teaching notebook runs top to bottom, offline, on the CPU (nbclient), and shows what it promises."""

import os
import time
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

pytestmark = pytest.mark.slow  # the quick loop (pytest -m "not slow") leaves these out

NOTEBOOKS = sorted((Path(__file__).parents[1] / "notebooks").glob("*.ipynb"))


def outputs_of(book, kind: str) -> list:
    return [
        o
        for cell in book.cells
        if cell.cell_type == "code"
        for o in cell.get("outputs", [])
        if kind in o.get("data", {})
    ]


def test_notebooks_are_stored_without_outputs():
    assert len(NOTEBOOKS) == 6
    for path in NOTEBOOKS:
        book = nbformat.read(path, as_version=4)
        assert all(
            not c.get("outputs") and c.get("execution_count") is None for c in book.cells if c.cell_type == "code"
        ), f"{path.name} holds outputs: strip them"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_executes(path, tmp_path):
    book = nbformat.read(path, as_version=4)
    env_before = os.environ.get("HF_HUB_OFFLINE")
    assert env_before == "1"  # the kernel inherits it: nothing may reach the network
    started = time.perf_counter()
    NotebookClient(book, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    print(f"{path.name}: {time.perf_counter() - started:.1f} s")
    errors = [o for c in book.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors
    if path.stem != "05_real_models_gpu":
        assert outputs_of(book, "image/png"), "every toy notebook shows at least one picture"
    if path.stem in ("01_quickstart", "04_raw_vs_tuned", "06_denoiser_probes"):
        assert outputs_of(book, "application/vnd.jupyter.widget-view+json")
