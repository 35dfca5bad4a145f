"""The dashboard as one self-contained HTML file: the shipped front-end bundle and a frozen copy of the widget's
state (images inlined), rendered with a stand-in for the kernel. The layer slider, keys, heatmaps, verdicts and
panels work; nothing runs and nothing is fetched. It is the dashboard's HTML export, and the page the browser tests
and the dashboard benchmark open.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

from .assets import STATIC

PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>Diffusion Lens: {title}</title>
<style>{css}
body {{ margin: 1.5em; }} .dl-credit {{ font: 12px system-ui, sans-serif; color: #666; margin-top: 1.5em; }}</style>
</head><body><div id="app"></div>
<p class="dl-credit">Made with difflens-widgets — Diffusion Lens (Toker et al., ACL 2024). A frozen copy of the
dashboard: the slider, arrow keys, heatmaps and toggles work; running needs the notebook.</p>
<script type="application/json" id="dl-state">{state}</script>
<script type="module">
const bundle = atob("{bundle}");
const toView = (b64) => {{ const s = atob(b64); const a = new Uint8Array(s.length);
  for (let i = 0; i < s.length; i++) a[i] = s.charCodeAt(i); return new DataView(a.buffer); }};
// bytes were written as {{"$bytes": base64}}: give them back as anywidget hands binary buffers over (DataViews)
const state = JSON.parse(document.getElementById("dl-state").textContent,
  (key, value) => (value && typeof value === "object" && "$bytes" in value ? toView(value.$bytes) : value));
const listeners = {{}};
window.sent = [];
window.model = {{ get: (k) => state[k],
  set: (k, v) => {{ state[k] = v; (listeners["change:" + k] || []).forEach((f) => f()); }},
  save_changes() {{}}, send: (m) => window.sent.push(m), on: (e, f) => (listeners[e] ||= []).push(f), off() {{}} }};
const url = URL.createObjectURL(new Blob([bundle], {{ type: "text/javascript" }}));
const widget = (await import(url)).default;
widget.render({{ model: window.model, el: document.getElementById("app") }});
window.rendered = true;
</script></body></html>"""


def standalone_html(state: dict) -> str:
    """One HTML page showing a dashboard ``state`` (trait name → value, PNG bytes as bytes)."""
    frozen = dict(state, model_info=dict(state.get("model_info") or {}, frozen=True))
    # every "<" as \u003c: neither "</script>" nor "<!--" (which would swallow the module script) can appear in it
    text = json.dumps(_encode_bytes(frozen)).replace("<", "\\u003c")
    title = str(frozen.get("prompt", "")).replace("&", "&amp;").replace("<", "&lt;")
    return PAGE.format(
        title=title,
        css=(STATIC / "widget.css").read_text(),
        state=text,
        bundle=base64.b64encode((STATIC / "widget.js").read_bytes()).decode(),
    )


def _encode_bytes(value):
    """The state as JSON-ready values: bytes (PNGs, wherever they sit) as ``{"$bytes": base64}``, tuples as lists."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {"$bytes": base64.b64encode(bytes(value)).decode()}
    if isinstance(value, dict):
        return {k: _encode_bytes(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_encode_bytes(v) for v in value]
    return value


def widget_state(widget) -> dict:
    """Every synced trait the widget's class adds to anywidget's own, as it is now (for :func:`standalone_html`)."""
    return {name: getattr(widget, name) for name in type(widget).synced_traits()}


def write_page(state: dict, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(standalone_html(state), encoding="utf-8")
    return path
