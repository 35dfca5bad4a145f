"""The front-end's own unit tests (node --test, jsdom) and a check that the shipped bundle is built from js/src."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from difflens_widgets.widgets.assets import STATIC

JS = Path(__file__).parents[1] / "js"


@pytest.fixture(scope="module")
def node_modules():
    if shutil.which("npm") is None:
        pytest.fail("the front-end tests need Node.js and npm")
    if not (JS / "node_modules" / "jsdom").exists():
        pytest.fail("run `npm ci --prefix js` first (the README's test command does)")


def test_npm_test(node_modules):
    run = subprocess.run(["npm", "test"], cwd=JS, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "# fail 0" in run.stdout


def test_shipped_bundle_matches_source(node_modules, tmp_path):
    env = dict(os.environ, DIFFLENS_BUNDLE_DIR=str(tmp_path))
    run = subprocess.run(["node", "build.mjs"], cwd=JS, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert (tmp_path / "widget.js").read_bytes() == (STATIC / "widget.js").read_bytes(), (
        "difflens_widgets/widgets/static/widget.js is stale: run `npm run build --prefix js` and commit it"
    )
    assert (tmp_path / "widget.css").read_bytes() == (STATIC / "widget.css").read_bytes()


def test_the_js_fake_model_and_the_protocol_doc_follow_the_dashboard_class():
    import json

    from difflens_widgets.widgets.dashboard import LensDashboard

    state = LensDashboard.default_state()
    written = json.loads((JS / "test" / "dashboard_state.json").read_text())
    assert written == json.loads(json.dumps(state)), (
        "js/test/dashboard_state.json is stale: write it from LensDashboard.default_state()"
    )
    doc = (Path(__file__).parents[1] / "docs" / "widget-protocol.md").read_text()
    missing = [name for name in state if f"`{name}`" not in doc]
    assert not missing, f"docs/widget-protocol.md does not document the traits {missing}"
