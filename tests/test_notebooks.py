"""Every teaching notebook runs top to bottom, offline, on the CPU (nbclient), and shows what it promises."""

import ast
import os
import time
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

pytestmark = pytest.mark.slow  # the quick loop (pytest -m "not slow") leaves these out

NOTEBOOKS = sorted((Path(__file__).parents[1] / "notebooks").glob("*.ipynb"))

# These tests check that every cell runs and shows what it promises, not what the pictures say (the reports and
# the toy-model tests measure that): the notebooks' own parameter cells (tagged "parameters", as papermill names
# them) are overridden by a cell injected after them, as papermill injects one.
QUICK = {
    "01_quickstart": "steps = 2",
    "02_conceptual_combination": "seeds, steps = [0, 1], 2",
    "03_common_vs_uncommon": "seeds, steps = [0, 1], 2",
    "04_raw_vs_tuned": "train_steps, steps = 4, 2",
    "06_denoiser_probes": "probe_images = 72",
}


def with_quick_parameters(book, name: str):
    """``book`` with QUICK[name] injected after its "parameters" cell."""
    if name not in QUICK:
        return book
    (at,) = [i for i, c in enumerate(book.cells) if "parameters" in c.metadata.get("tags", [])]
    injected = nbformat.v4.new_code_cell(QUICK[name])
    injected.metadata["tags"] = ["injected-parameters"]
    book.cells.insert(at + 1, injected)
    return book


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
    book = with_quick_parameters(nbformat.read(path, as_version=4), path.stem)
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


def test_every_parameter_cell_is_overridden_with_names_it_defines():
    """A renamed parameter would leave the quick run on the full one (slow) or fail in a later cell: the injected
    names are exactly the ones the notebook's parameter cell assigns."""

    for path in NOTEBOOKS:
        book = nbformat.read(path, as_version=4)
        cells = [c for c in book.cells if "parameters" in c.metadata.get("tags", [])]
        assert len(cells) == (path.stem in QUICK), path.name
        if cells:
            assert assigned(QUICK[path.stem]) == assigned(cells[0].source), path.name


def assigned(source: str) -> set[str]:
    return {
        n.id for node in ast.parse(source).body for t in node.targets for n in ast.walk(t) if isinstance(n, ast.Name)
    }
