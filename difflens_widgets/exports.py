"""Exports of a LensResult: a labelled grid PNG, an animated GIF across layers, a standalone HTML report."""

from __future__ import annotations

import base64
import html
import io
import json

from PIL import Image, ImageDraw, ImageFont

from .results import LensResult


def _encode(image: Image.Image, fmt: str = "PNG", **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def side_by_side(left: Image.Image, right: Image.Image, titles=("raw", "tuned")) -> Image.Image:
    canvas = Image.new("RGB", (left.width + right.width + 10, max(left.height, right.height) + 18), "white")
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    canvas.paste(left, (0, 18))
    canvas.paste(right, (left.width + 10, 18))
    draw.text((4, 3), titles[0], fill="black", font=font)
    draw.text((left.width + 14, 3), titles[1], fill="black", font=font)
    return canvas


def grid_png(result: LensResult, tuned: LensResult | None = None) -> bytes:
    grid = result.grid()
    return _encode(grid if tuned is None else side_by_side(grid, tuned.grid()))


def layer_frame(result: LensResult, layer: int, scale: int) -> Image.Image:
    """One GIF frame: the layer's image for every seed, side by side, captioned with the layer."""
    images = [result.image(layer, s) for s in result.seeds if (layer, s) in result.images]
    w, h = images[0].width * scale, images[0].height * scale
    frame = Image.new("RGB", (w * len(images), h + 16), "white")
    for i, img in enumerate(images):
        frame.paste(img.resize((w, h), Image.NEAREST), (i * w, 16))
    ImageDraw.Draw(frame).text((4, 2), f"layer {layer}: {result.prompt}", fill="black",
                               font=ImageFont.load_default())
    return frame


def gif_bytes(result: LensResult, ms_per_layer: int = 600) -> bytes:
    """An animated GIF that steps through the layers (one frame per layer; every seed in each frame)."""
    layers = sorted({l for l, _ in result.images})
    if not layers:
        raise ValueError("this result holds no image to animate")
    size = next(iter(result.images.values())).width
    scale = max(1, 192 // size)
    frames = [layer_frame(result, l, scale) for l in layers]
    return _encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=ms_per_layer, loop=0)


def _img_tag(image: Image.Image, alt: str) -> str:
    data = base64.b64encode(_encode(image)).decode()
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def html_report(result: LensResult, tuned: LensResult | None = None) -> bytes:
    """A self-contained HTML page (images inlined, no scripts, no network) with the grid and all parameters."""
    sections = [f"<h2>{'raw' if tuned else 'lens'}</h2>{_img_tag(result.grid(), 'lens grid')}"]
    if tuned is not None:
        sections.append(f"<h2>tuned</h2>{_img_tag(tuned.grid(), 'tuned lens grid')}")
    params = html.escape(json.dumps(result.params, indent=1, default=str))
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>Diffusion Lens: {html.escape(result.prompt)}</title>
<style>body{{font-family:system-ui,sans-serif;margin:2em;}} img{{image-rendering:pixelated;max-width:100%;}}
pre{{background:#f5f5f5;padding:1em;overflow:auto;}}</style></head><body>
<h1>Diffusion Lens: “{html.escape(result.prompt)}”</h1>
<p>Rows are seeds {result.seeds}; columns are text-encoder layers {result.layers} (0 = token embeddings, last =
the pipeline's own conditioning). Every image of a row starts from the same noise.</p>
{''.join(sections)}
<h2>Parameters</h2><pre>{params}</pre>
<p>Made with difflens-widgets (Diffusion Lens, Toker et al., ACL 2024).</p></body></html>"""
    return page.encode()


def export(result: LensResult, kind: str, tuned: LensResult | None = None) -> tuple[str, bytes]:
    """(file name, bytes) for ``kind`` in ``grid``, ``gif``, ``html``."""
    stem = "difflens_" + "".join(c if c.isalnum() else "_" for c in result.prompt)[:40].strip("_")
    if kind == "grid":
        return f"{stem}.png", grid_png(result, tuned)
    if kind == "gif":
        return f"{stem}.gif", gif_bytes(result)
    if kind == "html":
        return f"{stem}.html", html_report(result, tuned)
    raise ValueError(f"unknown export {kind!r}; choose grid, gif or html")
