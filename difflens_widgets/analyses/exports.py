"""Exports of a lens run's panels (see :mod:`.panels`): a labelled grid PNG and an animated GIF across layers.

Every panel is in every export — raw, tuned and their difference; the ablation beside the lens; one row per token —
with rows interleaved by seed, as the dashboard shows them. The interactive HTML page is the dashboard's own
(``widgets.standalone``): it needs the front-end bundle, which the engine side does not know about.
"""

from __future__ import annotations

from PIL import Image, ImageDraw

from ..core.results import LensResult, encoded, label_font, printable
from .panels import Panel, panels_grid


def as_panels(result: LensResult | list[Panel]) -> list[Panel]:
    return [Panel("lens", "lens", result)] if isinstance(result, LensResult) else list(result)


def grid_png(panels: LensResult | list[Panel]) -> bytes:
    return encoded(panels_grid(as_panels(panels)))


def layer_frame(panels: list[Panel], layer: int, scale: int) -> Image.Image:
    """One GIF frame: the layer's image for every seed (columns) and panel (rows), captioned with the layer."""
    font = label_font(14)
    first = panels[0].result
    side = next(iter(first.images.values())).width * scale
    labelled = len(panels) > 1
    left = 100 if labelled else 0
    frame = Image.new("RGB", (left + side * len(first.seeds), 16 + side * len(panels)), "white")
    draw = ImageDraw.Draw(frame)
    draw.text((4, 2), printable(f"layer {layer}: {first.prompt}"), fill="black", font=font)
    for row, panel in enumerate(panels):
        if labelled:
            draw.text((4, 16 + row * side + side // 2 - 6), printable(panel.label[:15]), fill="black", font=font)
        for col, seed in enumerate(first.seeds):
            image = panel.result.images.get((layer, seed))
            if image is not None:
                frame.paste(image.resize((side, side), Image.Resampling.NEAREST), (left + col * side, 16 + row * side))
    return frame


def gif_bytes(panels: LensResult | list[Panel], ms_per_layer: int = 600) -> bytes:
    """An animated GIF that steps through the layers (one frame per layer; every seed and panel in each frame)."""
    panels = as_panels(panels)
    layers = sorted({l for p in panels for l, _ in p.result.images})
    if not layers:
        raise ValueError("this result holds no image to animate")
    size = next(iter(panels[0].result.images.values())).width
    frames = [layer_frame(panels, l, max(1, 192 // size)) for l in layers]
    return encoded(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=ms_per_layer, loop=0)


def file_stem(prompt: str) -> str:
    return "difflens_" + "".join(c if c.isalnum() else "_" for c in prompt)[:40].strip("_")
