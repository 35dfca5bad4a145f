"""The dashboard in a real browser (Debian's /usr/bin/chromium driven by Playwright; nothing is downloaded).

Tier 1: the dashboard's standalone HTML export (the shipped bundle and a frozen copy of a real run's state) opened
from a file.
Tier 2: a real JupyterLab 4 and a real Notebook 7 run ``%load_ext difflens`` and ``%difflens ... --model toy`` in a
notebook.
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

# slow: the quick loop (pytest -m "not slow") leaves these out; one xdist group: under `-n 2` the module's browser
# and servers start once, on one worker, and two Chromiums never compete for the two cores
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("browser")]

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(os.environ.get("DIFFLENS_ARTIFACTS", Path(__file__).parent / "artifacts"))
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
    "--disable-dev-shm-usage",
]


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
    dash = dl.LensDashboard(
        tiny_pipe,
        tuned=tiny_stable_diffusion(seed=1),
        prompt="a red circle left of a blue square",
        seeds="0,1",
        num_inference_steps=3,
    )
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
        nbformat.v4.new_code_cell(
            '%difflens "a red triangle above a blue circle" --model toy --layers 0:12:2 --seeds 0,1 --steps 20'
        ),
    ]
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(notebook, tmp_path / "lens.ipynb")
    env = dict(
        os.environ,
        HF_HUB_OFFLINE="1",
        JUPYTER_CONFIG_DIR=str(tmp_path / "config"),
        JUPYTER_RUNTIME_DIR=str(tmp_path / "runtime"),
    )
    log = open(tmp_path / "jupyter.log", "w")
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            app,
            "--no-browser",
            "--allow-root",
            "--ip=127.0.0.1",
            f"--port={port}",
            f"--IdentityProvider.token={token}",
            f"--ServerApp.root_dir={tmp_path}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
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


FIRST_CELL_RAN = (
    "/\\[[0-9]+\\]/.test(document.querySelectorAll('.jp-Notebook .jp-Cell')[0]"
    ".querySelector('.jp-InputPrompt').textContent)"
)


def run_first_cell(page, cell, patience_s: float = 120) -> None:
    """Shift+Enter on the first cell until the kernel has run it. A request sent before the page's kernel
    connection is up can be dropped (seen once in Notebook 7 on a loaded 2-core machine: the cell kept "[ ]" and the
    kernel sat idle), so after 8 s without an execution count it is sent again (`%load_ext` twice is harmless, and a
    second request only queues behind a first one that was not lost)."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    deadline = time.monotonic() + patience_s
    while True:
        page.keyboard.press("Shift+Enter")
        try:
            page.wait_for_function(FIRST_CELL_RAN, timeout=8_000)
            return
        except PlaywrightTimeout:
            if time.monotonic() > deadline:
                raise
            cell.locator(".jp-InputArea-editor").click()
            page.wait_for_timeout(300)


def drive_notebook(page, url, app):
    page.goto(url)
    page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=60_000)
    for index in range(2):  # run each cell (click, Shift+Enter) and wait until the kernel has taken it
        cell = page.locator(".jp-Notebook .jp-Cell").nth(index)
        cell.locator(".jp-InputArea-editor").click()
        page.wait_for_timeout(300)
        if index == 0:
            run_first_cell(page, cell)
            continue
        # %difflens on a model this kernel has not loaded: the dashboard is on screen before the model is
        started = time.monotonic()
        page.keyboard.press("Shift+Enter")
        page.wait_for_selector(".dl-root", timeout=60_000)
        shown = time.monotonic() - started
        status = page.evaluate("document.querySelector('.dl-status')?.dataset.state")
        print(f"\n{app}: %difflens → first widget node in {shown:.2f} s (status {status})")
        # on screen before the model has loaded (the time is printed, not asserted: machines differ)
        assert status in ("loading", "running"), (shown, status)
    news = page.locator(".jp-toast-button", has_text="No")  # JupyterLab asks about its news feed: decline
    if news.count():
        news.first.click()
    # loading the model printed nothing a student would read as an error: no warning, no progress bar
    stderr = page.locator(".jp-Notebook .jp-Cell").nth(1).locator('[data-mime-type="application/vnd.jupyter.stderr"]')
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
    assert (
        "still showing the previous result ('a red triangle above a blue circle')"
        in page.locator(".dl-message").inner_text()
    )
    assert page.locator(".dl-thumb img").count() == 10


PAYLOADS = ["<!--<script>", "</script><script>window.pwned = 1</script>", '<img src=x onerror="window.pwned = 2">']


def test_hostile_text_renders_as_text_in_every_page(browser, tiny_pipe, tmp_path):
    """A prompt, a family, a probe label or a score name holding markup is shown as text: the page still renders
    (the state element cannot swallow the module script, a "<!--" included) and nothing in the text runs."""
    import numpy as np
    from PIL import Image

    from difflens_widgets.sweeps.report import write_report
    from difflens_widgets.widgets.standalone import widget_state, write_page

    text = " ".join(PAYLOADS)
    dash = dl.LensDashboard(tiny_pipe, prompt=f"a red circle {text}", layers="4", num_inference_steps=1)
    dash.run()
    assert dash.wait(60) and dash.status == "done"
    pages = {"dashboard": tmp_path / "dash.html"}
    pages["dashboard"].write_bytes(dash.export("html")[1])
    rows = [{"prompt": f"a red circle {p}", "family": p} for p in PAYLOADS]
    dl.sweep(
        rows,
        tmp_path / "sweep",
        model="toy",
        layers=[8],
        seeds=[0],
        num_inference_steps=1,
        scorers=["annotator", lambda image, row: {text: 1.0}],
        log=lambda *_: None,
    )
    pages["sweep view"] = write_page(widget_state(dl.SweepView(tmp_path / "sweep")), tmp_path / "sweep.html")
    write_report(tmp_path / "sweep")
    pages["sweep report"] = tmp_path / "sweep" / "report" / "report.html"
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)) for _ in range(12)]
    probed = dl.probe(
        tiny_pipe, images, {"label": [PAYLOADS[i % 3] for i in range(12)]}, blocks=["mid"], timesteps=[500]
    )
    pages["denoiser view"] = write_page(widget_state(dl.DenoiserView(probed)), tmp_path / "denoiser.html")
    for name, path in pages.items():
        page = browser.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda err, errors=errors: errors.append(str(err)))
        page.goto(path.as_uri())
        if name == "sweep report":
            page.wait_for_function("document.querySelectorAll('.js-plotly-plot').length > 0", timeout=20_000)
        else:
            page.wait_for_function("window.rendered === true", timeout=20_000)  # the module script ran
        assert page.evaluate("window.pwned") is None, name
        assert page.locator("img[src='x']").count() == 0, name
        assert errors == [], (name, errors)
        page.close()


# ---------------------------------------------------------------------------------------------------------------
# Dashboard v3 in a real browser: the slider under the hand, a projector's screen, verdicts beside their images
# ---------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def exported_pages(tmp_path_factory):
    """Two frozen dashboards: a 12-block model (13 layer columns, 2 seeds) and the toy model with verdicts."""
    folder = tmp_path_factory.mktemp("v3")
    wide = dl.LensDashboard(tiny_stable_diffusion(num_layers=12), prompt="a red circle", seeds="0,1",
                            num_inference_steps=2)  # fmt: skip
    wide.run()
    assert wide.wait(120) and wide.status == "done"
    toy = dl.LensDashboard("toy", prompt="a red circle left of a blue square", seeds="0,1", num_inference_steps=8,
                           show_verdicts=True)  # fmt: skip
    toy.run()
    assert toy.wait(120) and toy.status == "done" and toy.verdicts
    words = dl.LensDashboard("toy", prompt="a red circle left of a blue square", layers="2,8", num_inference_steps=8,
                             attention=True)  # fmt: skip
    words.run()
    assert words.wait(120) and words.status == "done" and words.attention_maps
    pages = {}
    for name, dash in (("wide", wide), ("toy", toy), ("words", words)):
        pages[name] = folder / f"{name}.html"
        pages[name].write_bytes(dash.export("html")[1])
    return pages


def slider_geometry(page):
    return page.locator(".dl-slider").bounding_box()


def test_the_slider_lands_on_the_layer_under_the_pointer_and_never_moves(browser, exported_pages):
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(exported_pages["wide"].as_uri())
    page.wait_for_function("window.rendered === true")
    layers = page.evaluate("window.model.get('run_layers')")
    assert layers == list(range(13))
    page.locator(".dl-root").focus()
    page.keyboard.press("End")
    page.wait_for_timeout(100)
    box = slider_geometry(page)
    thumb = 16  # Chromium's range thumb: values sit half a thumb in from each end
    x_of = lambda i: box["x"] + thumb / 2 + i * (box["width"] - thumb) / (len(layers) - 1)  # noqa: E731
    y = box["y"] + box["height"] / 2
    page.mouse.move(x_of(page.evaluate("window.model.get('selected_layer')")), y)
    page.mouse.down()
    landed = []
    for index in reversed(range(len(layers))):  # drag left from the last layer, over every layer's position
        page.mouse.move(x_of(index), y, steps=4)
        landed.append(page.evaluate("window.model.get('selected_layer')"))
        assert slider_geometry(page) == box, "the slider moved while it was dragged"
    page.mouse.up()
    assert landed == [layers[i] for i in reversed(range(len(layers)))], landed
    page.close()


@pytest.mark.parametrize("width, height", [(1024, 768), (1280, 900)])
def test_presentation_size_fits_a_projector(browser, exported_pages, width, height):
    for name in ("wide", "toy"):
        page = browser.new_page(viewport={"width": width, "height": height})
        page.goto(exported_pages[name].as_uri())
        page.wait_for_function("window.rendered === true")
        page.locator('[data-field="presentation"]').check()
        page.wait_for_timeout(200)
        overflow = page.evaluate("document.scrollingElement.scrollWidth - window.innerWidth")
        assert overflow <= 0, f"{name}: the page scrolls sideways by {overflow} px"
        layers = page.evaluate("window.model.get('run_layers')")
        last = page.locator(f'.dl-thumb[data-layer="{layers[-1]}"]').first.bounding_box()
        assert last["x"] + last["width"] <= width, f"{name}: the last layer is off screen"
        for selector in (".dl-large", ".dl-emergence") if name == "toy" else (".dl-large",):
            part = page.locator(selector).bounding_box()
            assert part["x"] >= 0 and part["x"] + part["width"] <= width, (name, selector, part)
        if name == "toy":
            overlaps = page.evaluate("""() => [...document.querySelectorAll('.dl-thumb')].filter((f) => {
                const img = f.querySelector('img')?.getBoundingClientRect();
                const badge = f.querySelector('.dl-verdict')?.getBoundingClientRect();
                return img && badge && badge.top < img.bottom - 0.5; }).length""")
            assert page.locator(".dl-thumb .dl-verdict").count() == 18 and overlaps == 0
            page.locator(".dl-rules-button").click()
            assert "dominates" in page.locator(".dl-rules").inner_text()  # the relation rule, one click away
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / f"presentation_{name}_{width}x{height}.png"), full_page=True)
        page.close()


def test_hovering_a_word_lays_its_map_over_the_images(browser, exported_pages):
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(exported_pages["words"].as_uri())  # the frozen export: the maps travel inside the page
    page.wait_for_function("window.rendered === true")
    overlay = "() => [...document.querySelectorAll('canvas.dl-attn-overlay')].map((c) => c.dataset.word)"
    assert page.evaluate(overlay) == []
    page.locator(".dl-attn-word", has_text="circle").hover()
    assert page.evaluate(overlay) == ["circle"] * 3  # two thumbnails and the large view
    pixels = page.evaluate("""() => { const c = document.querySelector('canvas.dl-attn-overlay');
        return [...c.getContext('2d').getImageData(0, 0, c.width, c.height).data].slice(0, 16); }""")
    page.locator(".dl-attn-word", has_text="square").hover()
    assert page.evaluate(overlay) == ["square"] * 3
    assert (
        page.evaluate("""() => { const c = document.querySelector('canvas.dl-attn-overlay');
        return [...c.getContext('2d').getImageData(0, 0, c.width, c.height).data].slice(0, 16); }""")
        != pixels
    )
    page.locator('[data-heatmap="tokens"] .dl-hm-label', has_text="red").first.hover()  # a token heatmap row
    assert page.evaluate(overlay) == ["red"] * 3
    assert "share of attention per layer" in page.locator(".dl-attn-strip").inner_text()
    page.locator(".dl-attn-word", has_text="circle").click()  # a click keeps the word after the mouse leaves
    page.mouse.move(1270, 890)
    assert page.evaluate(overlay) == ["circle"] * 3
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.locator(".dl-root").screenshot(path=str(ARTIFACTS / "attention_hover.png"))
    page.close()
