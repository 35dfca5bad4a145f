"""The dashboard in a real browser (Debian's /usr/bin/chromium driven by Playwright; nothing is downloaded).

Tier 1: the dashboard's standalone HTML export (the shipped bundle and a frozen copy of a real run's state) opened
from a file.
Tier 2: a real JupyterLab 4 and a real Notebook 7 run ``%load_ext difflens`` and ``%difflens ... --model toy`` in a notebook.
"""

import json
import os
import re
import secrets
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import nbformat
import pytest

import difflens_widgets as dl
from difflens_widgets.testing import tiny_stable_diffusion

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(os.environ.get("DIFFLENS_ARTIFACTS", Path(__file__).parent / "artifacts"))
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
         "--no-first-run", "--disable-sync", "--disable-dev-shm-usage"]


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.fail("browser tests need Debian's chromium at /usr/bin/chromium: apt-get install -y chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        yield chromium
        chromium.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


SMALL_TEXT = """() => [...document.querySelectorAll('.dl-root *')].filter((n) =>
    n.offsetParent !== null && [...n.childNodes].some((c) => c.nodeType === 3 && c.textContent.trim())
    && parseFloat(getComputedStyle(n).fontSize) < 14).map((n) => `${n.className}: ${n.textContent.slice(0, 30)}`)"""


def test_standalone_export_renders_in_chromium(browser, tiny_pipe, tmp_path):
    dash = dl.LensDashboard(tiny_pipe, tuned=tiny_stable_diffusion(seed=1), prompt="a red circle left of a blue square",
                            seeds="0,1", num_inference_steps=3)
    dash.run()
    assert dash.wait(60) and dash.status == "done"
    name, html = dash.export("html")
    (tmp_path / name).write_bytes(html)
    page = browser.new_page(viewport={"width": 1200, "height": 1000})
    errors, requests = [], []
    page.on("pageerror", lambda err: errors.append(str(err)))
    page.on("request", lambda request: requests.append(request.url))
    page.goto((tmp_path / name).as_uri())
    page.wait_for_function("window.rendered === true", timeout=20_000)
    assert page.locator(".dl-thumb img").count() == 30  # raw, tuned, difference × 2 seeds × 5 layers
    rows = page.locator(".dl-strip").evaluate_all("(rows) => rows.map((r) => r.dataset.seed + ':' + r.dataset.kind)")
    assert rows == ["0:raw", "0:tuned", "0:difference", "1:raw", "1:tuned", "1:difference"]
    page.wait_for_function("document.querySelectorAll('.dl-thumb img')[0].naturalWidth === 32")
    assert page.locator(".dl-heatmap").count() == 3 and page.locator('[data-scale="difference"]').count() == 1
    assert "layer 4 = the model's normal image" in page.locator(".dl-legend").inner_text()
    assert page.locator(".dl-run").is_hidden() and page.locator(".dl-exports").is_hidden()  # frozen: nothing runs
    before = page.locator(".dl-large-img img").first.get_attribute("src")
    page.locator(".dl-slider").focus()
    page.keyboard.press("ArrowLeft")
    assert page.evaluate("window.model.get('selected_layer')") == 3
    assert page.locator(".dl-large-img img").first.get_attribute("src") != before
    assert page.locator(".dl-hm-cell.dl-hm-marked").count() > 0
    assert page.evaluate(SMALL_TEXT), "the normal size should be compact"
    page.locator('[data-field="presentation"]').check()
    assert page.evaluate(SMALL_TEXT) == []  # presentation size: every visible label ≥ 14 px
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "dashboard_standalone.png"), full_page=True)
    assert errors == [] and all(url.startswith(("file:", "blob:", "data:")) for url in requests), requests
    page.close()


# ---------------------------------------------------------------------------------------------------------------
# Tier 2: JupyterLab 4 and Notebook 7, end to end
# ---------------------------------------------------------------------------------------------------------------
@pytest.fixture(params=["jupyterlab", "notebook"])
def jupyter(request, tmp_path):
    """A JupyterLab 4 or Notebook 7 server on loopback with a two-cell notebook; yields the notebook's URL."""
    app = request.param
    token = secrets.token_hex(16)
    port = free_port()
    notebook = nbformat.v4.new_notebook()
    notebook.cells = [
        nbformat.v4.new_code_cell("%load_ext difflens"),
        nbformat.v4.new_code_cell('%difflens "a red triangle above a blue circle" --model toy --layers 0:12:2 '
                                  "--seeds 0,1 --steps 20"),
    ]
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(notebook, tmp_path / "lens.ipynb")
    env = dict(os.environ, HF_HUB_OFFLINE="1", JUPYTER_CONFIG_DIR=str(tmp_path / "config"),
               JUPYTER_RUNTIME_DIR=str(tmp_path / "runtime"))
    log = open(tmp_path / "jupyter.log", "w")
    server = subprocess.Popen(
        [sys.executable, "-m", app, "--no-browser", "--allow-root", "--ip=127.0.0.1", f"--port={port}",
         f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={tmp_path}"],
        stdout=log, stderr=subprocess.STDOUT, env=env,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 90
    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=2)
            break
        except OSError:
            time.sleep(0.5)
    else:
        server.terminate()
        pytest.fail(f"{app} did not start: " + (tmp_path / "jupyter.log").read_text()[-2000:])
    path = "lab/tree" if app == "jupyterlab" else "notebooks"
    yield app, f"{base}/{path}/lens.ipynb?token={token}"
    server.terminate()
    server.wait(20)
    log.close()


def test_notebook_end_to_end(browser, jupyter):
    app, url = jupyter
    page = browser.new_page(viewport={"width": 1400, "height": 1100})
    try:
        drive_notebook(page, url, app)
    except Exception:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / f"dashboard_{app}_failure.png"), full_page=True)
        raise
    finally:
        page.close()


def drive_notebook(page, url, app):
    page.goto(url)
    page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=60_000)
    for index in range(2):  # run each cell (click, Shift+Enter) and wait until the kernel has taken it
        cell = page.locator(".jp-Notebook .jp-Cell").nth(index)
        cell.locator(".jp-InputArea-editor").click()
        page.wait_for_timeout(300)
        page.keyboard.press("Shift+Enter")
        page.wait_for_function(
            f"/\\[[0-9*]+\\]/.test(document.querySelectorAll('.jp-Notebook .jp-Cell')[{index}]"
            ".querySelector('.jp-InputPrompt').textContent)", timeout=90_000)
    page.wait_for_selector(".dl-root", timeout=60_000)
    news = page.locator(".jp-toast-button", has_text="No")  # JupyterLab asks about its news feed: decline
    if news.count():
        news.first.click()
    # loading the model printed nothing a student would read as an error: no warning, no progress bar
    stderr = page.locator('.jp-Notebook .jp-Cell').nth(1).locator('[data-mime-type="application/vnd.jupyter.stderr"]')
    assert stderr.count() == 0, stderr.all_inner_texts()
    # The first run of a fresh dashboard is live: its cells develop through labelled previews before it ends.
    captions, deadline = set(), time.time() + 180
    while time.time() < deadline:
        state = page.evaluate("""() => ({ status: document.querySelector('.dl-status')?.dataset.state,
            caption: document.querySelector('.dl-thumb[data-layer="0"][data-seed="0"] figcaption')?.textContent,
            image: !!document.querySelector('.dl-thumb[data-layer="0"][data-seed="0"] img') })""")
        if state["status"] == "running" and state["image"] and "step" in (state["caption"] or ""):
            if not captions:  # what a user sees mid-run
                ARTIFACTS.mkdir(parents=True, exist_ok=True)
                page.locator(".dl-root").screenshot(path=str(ARTIFACTS / f"dashboard_{app}_running.png"))
            captions.add(state["caption"])
        if state["status"] == "done":
            break
        time.sleep(0.05)
    assert len(captions) >= 2, f"fewer than 2 distinct preview steps seen while running: {captions}"
    assert all(re.fullmatch(r"L0 · step \d+/20", c) for c in captions), captions
    # toy model: layers 0:12:2 → 0, 2, 4, 6, 8; two seeds → 10 filmstrip images once the run is done
    page.wait_for_function("document.querySelector('.dl-status')?.dataset.state === 'done'", timeout=180_000)
    assert page.locator(".dl-thumb img").count() == 10
    assert page.locator('.dl-thumb[data-layer="0"][data-seed="0"] figcaption').inner_text() == "L0"
    assert page.locator(".dl-heatmap .dl-hm-grid").count() >= 2
    before = page.locator(".dl-large-img img").first.get_attribute("src")
    caption = page.locator(".dl-large-img figcaption").first.inner_text()
    page.locator(".dl-slider").focus()
    page.keyboard.press("ArrowRight" if "layer 0," in caption else "ArrowLeft")
    page.wait_for_function(f"document.querySelector('.dl-large-img img').getAttribute('src') !== {json.dumps(before)}")
    assert page.locator(".dl-large-img figcaption").first.inner_text() != caption
    # the toy model's annotator: a verdict on every image, and the prompt's emergence curve
    page.locator('[data-field="show_verdicts"]').check()
    page.wait_for_function("document.querySelectorAll('.dl-thumb .dl-verdict').length === 10", timeout=20_000)
    assert page.locator(".dl-emergence polyline").count() == 4  # objects, colours, binding, relation
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.locator(".dl-root").screenshot(path=str(ARTIFACTS / f"dashboard_{app}.png"))
    # A second run, cancelled at once: the previous result stays on screen, and the widget says so.
    page.locator(".dl-prompt").fill("a green star below a yellow square")
    page.locator(".dl-run").click()
    page.wait_for_function("document.querySelector('.dl-status')?.dataset.state === 'running'", timeout=60_000)
    page.locator(".dl-cancel").click()
    page.wait_for_function("document.querySelector('.dl-status')?.dataset.state === 'cancelled'", timeout=60_000)
    assert "still showing the previous result ('a red triangle above a blue circle')" in \
        page.locator(".dl-message").inner_text()
    assert page.locator(".dl-thumb img").count() == 10
