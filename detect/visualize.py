"""Drawing detections on an image (PIL): a box, a class name and a score per detection.

Shapes: D detections; boxes Tensor[D, 4] xyxy pixels, scores Tensor[D], labels Tensor[D] in 1..K.
"""
from __future__ import annotations

import colorsys
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

from backbone.io import atomic_path


def class_colour(label: int) -> tuple[int, int, int]:
    """A bright colour per class, well apart for neighbouring labels (golden-ratio hues)."""
    r, g, b = colorsys.hsv_to_rgb((label * 0.618033988749895) % 1.0, 0.85, 1.0)
    return int(r * 255), int(g * 255), int(b * 255)


def draw_detections(image: np.ndarray, detections: dict[str, Tensor], classes: Sequence[str],
                    line_width: int = 0) -> Image.Image:
    """A copy of `image` (uint8 [H, W, 3] RGB) with each detection drawn, lowest score first
    so the best ones end on top. line_width 0 = scaled with the image (2 px at 500 px)."""
    canvas = Image.fromarray(image).convert("RGB")
    draw = ImageDraw.Draw(canvas)
    width = line_width or max(1, round(max(canvas.size) / 250))
    font = ImageFont.load_default()
    boxes = detections["boxes"].detach().cpu().tolist()
    scores = detections["scores"].detach().cpu().tolist()
    labels = detections["labels"].detach().cpu().tolist()
    for i in sorted(range(len(scores)), key=lambda j: scores[j]):
        x1, y1, x2, y2 = boxes[i]
        colour = class_colour(labels[i])
        draw.rectangle([x1, y1, x2, y2], outline=colour, width=width)
        text = f"{classes[labels[i] - 1]} {scores[i]:.2f}"
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        ty = y1 - (bottom - top) - 4 if y1 - (bottom - top) - 4 >= 0 else y1  # inside if no room above
        draw.rectangle([x1, ty, x1 + right - left + 4, ty + bottom - top + 4], fill=colour)
        draw.text((x1 + 2 - left, ty + 2 - top), text, fill=(0, 0, 0), font=font)
    return canvas


def save_detections_png(path: str | Path, image: np.ndarray, detections: dict[str, Tensor],
                        classes: Sequence[str]) -> None:
    """Write `draw_detections(...)` as a PNG (atomically)."""
    with atomic_path(path) as tmp:
        draw_detections(image, detections, classes).save(tmp, format="PNG")
