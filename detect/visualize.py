"""Drawing detections on an image (PIL): a box, a class name and a score per detection.

Shapes: D detections; boxes Tensor[D, 4] xyxy pixels, scores Tensor[D], labels Tensor[D] in 1..K.

A picture shows what a person can read: detections at or above a display threshold (0.3 by
default; the JSON results keep everything above the score threshold), every label inside the
picture and clear of every other label, the best detections labelled first. A label that
finds no free place is left off; its box is still drawn.
"""
from __future__ import annotations

import colorsys
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:  # PIL, numpy and torch are imported when drawing: `detect --help` reads DISPLAY_THRESHOLD
    import numpy as np
    from PIL import Image, ImageFont
    from torch import Tensor

DISPLAY_THRESHOLD = 0.3  # the lowest score drawn by default (detect run --display-threshold)
PAD = 2  # pixels between a label's text and the edge of its filled rectangle

Rect = tuple[float, float, float, float]  # x1, y1, x2, y2


def class_colour(label: int) -> tuple[int, int, int]:
    """A bright colour per class, well apart for neighbouring labels (golden-ratio hues)."""
    r, g, b = colorsys.hsv_to_rgb((label * 0.618033988749895) % 1.0, 0.85, 1.0)
    return int(r * 255), int(g * 255), int(b * 255)


def _overlaps(a: Rect, b: Rect) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _clamp(v: float, low: float, high: float) -> float:
    return min(max(v, low), high)


def place_labels(boxes: Sequence[Sequence[float]], sizes: Sequence[tuple[float, float]],
                 image_size: tuple[int, int]) -> list[Rect | None]:
    """Where each label goes: a rectangle inside the image that overlaps no earlier label.

    boxes: [D][4] xyxy, in the order labels claim space (best first); sizes: [D] (w, h) of
    each label; image_size: (W, H). Tried in turn: above the box's top-left corner, inside it,
    then further down inside the box, below the box, and each at the box's right edge
    instead of its left. None where no place is free or the label is larger than the image.
    """
    width, height = image_size
    placed: list[Rect] = []
    out: list[Rect | None] = []
    for (x1, y1, x2, y2), (w, h) in zip(boxes, sizes):
        spot = None
        if w <= width and h <= height:
            ys = [y1 - h, y1, *[y1 + k * h for k in range(1, max(1, int((y2 - y1) // h)))], y2]
            for y in ys:
                for x in (x1, x2 - w):
                    rect = (_clamp(x, 0, width - w), _clamp(y, 0, height - h))
                    rect = (*rect, rect[0] + w, rect[1] + h)
                    if not any(_overlaps(rect, other) for other in placed):
                        spot = rect
                        break
                if spot:
                    break
        if spot:
            placed.append(spot)
        out.append(spot)
    return out


def _font(image_size: tuple[int, int]) -> "ImageFont.ImageFont":
    """PIL's built-in font, scaled with the picture (11 px at 450 px) where FreeType is there."""
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=max(10, round(max(image_size) / 40)))
    except (TypeError, ImportError, OSError):  # Pillow < 10.1 or without FreeType: the bitmap font
        return ImageFont.load_default()


def draw_detections(image: np.ndarray, detections: dict[str, Tensor], classes: Sequence[str],
                    line_width: int = 0, display_threshold: float = DISPLAY_THRESHOLD) -> "Image.Image":
    """A copy of `image` (uint8 [H, W, 3] RGB) with each detection scoring at least
    `display_threshold` drawn: boxes lowest score first (the best end on top), then the labels
    over them, placed by `place_labels`. line_width 0 = scaled with the image (2 px at 500 px)."""
    from PIL import Image, ImageDraw

    canvas = Image.fromarray(image).convert("RGB")
    draw = ImageDraw.Draw(canvas)
    width = line_width or max(1, round(max(canvas.size) / 250))
    font = _font(canvas.size)
    scores = detections["scores"].detach().cpu().tolist()
    shown = sorted((i for i, s in enumerate(scores) if s >= display_threshold), key=lambda i: -scores[i])
    boxes = detections["boxes"].detach().cpu().tolist()
    labels = detections["labels"].detach().cpu().tolist()
    for i in reversed(shown):
        draw.rectangle(boxes[i], outline=class_colour(labels[i]), width=width)
    texts = [f"{classes[labels[i] - 1]} {scores[i]:.2f}" for i in shown]
    extents = [draw.textbbox((0, 0), t, font=font) for t in texts]
    sizes = [(r - left + 2 * PAD, b - top + 2 * PAD) for left, top, r, b in extents]
    spots = place_labels([boxes[i] for i in shown], sizes, canvas.size)
    for i, text, (left, top, _, _), spot in zip(shown, texts, extents, spots):
        if spot is not None:
            draw.rectangle([spot[0], spot[1], spot[2] - 1, spot[3] - 1], fill=class_colour(labels[i]))
            draw.text((spot[0] + PAD - left, spot[1] + PAD - top), text, fill=(0, 0, 0), font=font)
    return canvas


def save_detections_png(path: str | Path, image: np.ndarray, detections: dict[str, Tensor],
                        classes: Sequence[str], display_threshold: float = DISPLAY_THRESHOLD) -> None:
    """Write `draw_detections(...)` as a PNG (atomically)."""
    from backbone.io import atomic_path

    with atomic_path(path) as tmp:
        draw_detections(image, detections, classes, display_threshold=display_threshold).save(tmp, format="PNG")
