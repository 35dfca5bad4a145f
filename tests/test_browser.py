"""The dashboard in a real browser (Debian's /usr/bin/chromium driven by Playwright; nothing is downloaded).

Tier 1: a static page imports the shipped bundle and renders it with a fake model holding real lens images.
Tier 2: a real JupyterLab 4 and a real Notebook 7 run ``%load_ext difflens`` and ``%difflens ... --model toy`` in a notebook.
"""

import functools
import http.server
import json
import os
import re
import secrets
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import nbformat
import pytest

import difflens_widgets as dl
from difflens_widgets.widgets.preview_page import write_preview

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


@pytest.fixture
def static_server(tmp_path):
    """Serves ``tmp_path`` on loopback."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield tmp_path, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_bundle_renders_in_chromium(browser, static_server, tiny_pipe):
    folder, url = static_server
    result = dl.Lens(tiny_pipe).run("a red circle left of a blue square", seeds=[0, 1], num_inference_steps=3)
    write_preview(result, folder, num_layers=4)
    page = browser.new_page(viewport={"width": 1200, "height": 1000})
    errors = []
    page.on("pageerror", lambda err: errors.append(str(err)))
    page.goto(f"{url}/index.html")
    page.wait_for_function("window.rendered === true", timeout=20_000)
    assert page.locator(".dl-thumb img").count() == 10
    page.wait_for_function("document.querySelectorAll('.dl-thumb img')[0].naturalWidth === 32")
    page.wait_for_selector(".dl-heatmap .dl-hm-cell", timeout=20_000)  # the heatmaps drew, from the bundle alone
    assert page.locator(".dl-heatmap").count() == 2
    before = page.locator(".dl-large-img img").first.get_attribute("src")
    page.locator(".dl-slider").focus()
    page.keyboard.press("ArrowLeft")
    assert page.evaluate("window.model.get('selected_layer')") == 3
    assert page.locator(".dl-large-img img").first.get_attribute("src") != before
    page.locator('[data-field="prompt"]').fill("")
    page.locator(".dl-run").click()
    assert "prompt is empty" in page.locator(".dl-message").inner_text()
    assert page.evaluate("window.sent") == []
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "dashboard_static.png"), full_page=True)
    assert errors == []
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
