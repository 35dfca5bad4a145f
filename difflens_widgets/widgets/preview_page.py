"""A standalone page that renders the shipped bundle with a fake widget model read from ``state.json``.

Used by the browser tests and the dashboard benchmark, and handy for working on the front-end without Jupyter:
``write_preview(result, folder)`` then serve ``folder`` over HTTP and open ``index.html``.
"""

from __future__ import annotations

import base64
import json
import shutil
from pathlib import Path

from ..results import LensResult
from .dashboard import STATIC, LensDashboard, frames_of

PAGE = """<!doctype html><html><head><meta charset="utf-8"><link rel="stylesheet" href="widget.css"></head>
<body><div id="app"></div><script type="module">
import widget from "./widget.js";
const state = await (await fetch("state.json")).json();
const toView = (b64) => { const s = atob(b64); const a = new Uint8Array(s.length);
  for (let i = 0; i < s.length; i++) a[i] = s.charCodeAt(i); return new DataView(a.buffer); };
for (const f of state.frames) f.png = toView(f.png);
const listeners = {};
window.sent = [];
window.model = { get: (k) => state[k], set: (k, v) => { state[k] = v; (listeners["change:" + k] || []).forEach((f) => f()); },
  save_changes() {}, send: (m) => window.sent.push(m), on: (e, f) => (listeners[e] ||= []).push(f), off() {} };
widget.render({ model: window.model, el: document.getElementById("app") });
window.rendered = true;
</script></body></html>"""


def dashboard_state(result: LensResult, num_layers: int, selected_layer: int | None = None) -> dict:
    """The traits a LensDashboard would hold after ``result`` (images base64-encoded for the JSON file only)."""
    from ..similarity import heatmap_specs

    return {
        **LensDashboard.default_state(),  # every trait the front-end reads, so this page cannot drift from it
        "prompt": result.prompt, "seeds": ",".join(map(str, result.seeds)),
        "steps": result.params.get("num_inference_steps", 20), "guidance": result.params.get("guidance_scale", 7.5),
        "selected_layer": result.layers[-1] if selected_layer is None else selected_layer,
        "model_info": {"num_layers": num_layers, "tuned": False}, "status": "done", "progress": 1.0,
        "run_layers": result.layers, "run_seeds": result.seeds,
        "frames": [dict(f, png=base64.b64encode(f["png"]).decode()) for f in frames_of(result)],
        "heatmaps": heatmap_specs(result),
    }


def write_preview(result: LensResult, folder: str | Path, num_layers: int, selected_layer: int | None = None) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(STATIC / "widget.js", folder / "widget.js")
    shutil.copy(STATIC / "widget.css", folder / "widget.css")
    (folder / "state.json").write_text(json.dumps(dashboard_state(result, num_layers, selected_layer)))
    (folder / "index.html").write_text(PAGE)
    return folder
