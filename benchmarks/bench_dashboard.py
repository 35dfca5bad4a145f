"""Dashboard responsiveness and weight on the toy model: Run → first live preview, Run → full result, the layer
slider, and the bytes one dashboard puts into the browser (and into a notebook saved with widget state).

    python benchmarks/bench_dashboard.py [--seeds 0] [--steps 20] [--repeats 3]

The slider is measured in Debian's Chromium (/usr/bin/chromium) on the shipped bundle: every image is already in
the browser, so a slider step only swaps object URLs; the figure is key press → new image shown, averaged.
"""

from __future__ import annotations

import argparse
import statistics

import difflens_widgets as dl

PROMPTS = [
    "a red circle left of a blue square",
    "a green star above a yellow cross",
    "an orange diamond",
    "a purple triangle below a blue circle",
    "a yellow square and a red star",
]


def payload_bytes(dash) -> dict:
    """Bytes per dashboard: the front-end (anywidget syncs ``_esm``/``_css`` with every instance) and its state
    after a run (traits as JSON, images as their PNG bytes) — what a notebook saved with widget state holds."""
    import json

    from difflens_widgets.widgets.assets import STATIC

    state = {name: getattr(dash, name) for name in dash.default_state()}
    images = sum(len(f["png"]) for key in ("frames", "previews") for f in state[key])
    for key in ("frames", "previews"):
        state[key] = [{k: v for k, v in f.items() if k != "png"} for f in state[key]]
    return {
        "front-end (widget.js + widget.css)": (STATIC / "widget.js").stat().st_size
        + (STATIC / "widget.css").stat().st_size,
        "state: traits as JSON": len(json.dumps(state)),
        "state: images (PNG)": images,
    }


def run_timings(seeds: str, steps: int, repeats: int) -> tuple[list[float], list[float], int]:
    dash = dl.LensDashboard("toy")
    dash.seeds, dash.num_inference_steps = seeds, steps
    first, total = [], []
    for prompt in PROMPTS[:repeats]:
        dash.prompt = prompt
        dash.run()
        dash.wait()
        assert dash.status == "done", dash.message
        first.append(dash.timings["first_preview_s"])
        total.append(dash.timings["total_s"])
    run_timings.payload = payload_bytes(dash)
    return first, total, len(dash.frames)


def slider_timing(presses: int = 16) -> float:
    """Mean ms from an ArrowRight key press on the slider to the large view showing the next layer."""
    import tempfile
    from pathlib import Path

    from playwright.sync_api import sync_playwright

    dash = dl.LensDashboard("toy", prompt=PROMPTS[0], seeds="0,1")
    dash.run()
    dash.wait()
    dash.selected_layer = 0
    name, page_bytes = dash.export("html")  # the standalone page: the shipped bundle, this run's state
    page_file = Path(tempfile.mkdtemp()) / name
    page_file.write_bytes(page_bytes)
    slider_timing.html_bytes = len(page_bytes)
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path="/usr/bin/chromium",
            headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        page = browser.new_page()
        page.goto(page_file.as_uri())
        page.wait_for_function("window.rendered === true")
        page.locator(".dl-slider").focus()
        times = page.evaluate(
            """async (presses) => {
          const out = [];
          const slider = document.querySelector('.dl-slider');
          for (let i = 0; i < presses; i++) {
            const before = document.querySelector('.dl-large-img img').src;
            const key = i % 16 < 8 ? 'ArrowRight' : 'ArrowLeft';
            const t0 = performance.now();
            slider.dispatchEvent(new KeyboardEvent('keydown', {key, bubbles: true, cancelable: true}));
            const img = document.querySelector('.dl-large-img img');
            if (img.src === before) throw new Error('layer did not change');
            await img.decode();
            await new Promise(requestAnimationFrame);
            out.push(performance.now() - t0);
          }
          return out;
        }""",
            presses,
        )
        browser.close()
    return statistics.mean(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    first, total, images = run_timings(args.seeds, args.steps, args.repeats)
    slider_ms = slider_timing()
    print(
        f"\ntoy model, {images} images (all layers × seeds {args.seeds}), {args.steps} steps, "
        f"median of {args.repeats} runs"
    )
    print("| measure | value |")
    print("|---|---|")
    print(f"| Run → first live preview | {statistics.median(first):.2f} s |")
    print(f"| Run → full result (images + heatmaps) | {statistics.median(total):.2f} s |")
    print(f"| slider step → next layer shown (browser, cached images) | {slider_ms:.1f} ms |")
    sizes = run_timings.payload
    for name, size in sizes.items():
        print(f"| {name} | {size / 1024:.1f} KB |")
    print(f"| one dashboard in a notebook saved with widget state | {sum(sizes.values()) / 1024:.1f} KB |")
    print(f"| interactive HTML export (2 seeds × 9 layers) | {slider_timing.html_bytes / 1024:.1f} KB |")


if __name__ == "__main__":
    main()
