"""Generated images for the proposal tests: solid rectangles on a flat background."""
from __future__ import annotations

import numpy as np
import torch

# Three high-contrast rectangles (xyxy) on a 160x120 grey background.
RECTS = [(10, 15, 60, 70), (80, 20, 150, 60), (90, 75, 140, 110)]
COLOURS = [(230, 30, 30), (30, 30, 220), (20, 20, 20)]


def rectangles_image(rects=RECTS, colours=COLOURS, size=(120, 160), background=200) -> np.ndarray:
    """RGB uint8 [H, W, 3] with each rectangle filled with its colour."""
    image = np.full((*size, 3), background, dtype=np.uint8)
    for (x1, y1, x2, y2), colour in zip(rects, colours):
        image[y1:y2, x1:x2] = colour
    return image


def rectangles_gt(rects=RECTS) -> torch.Tensor:
    """The rectangles as boxes Tensor[N, 4] xyxy."""
    return torch.tensor(rects, dtype=torch.float32)


def random_scene(rng: np.random.Generator, size=(96, 128), n=3) -> tuple[np.ndarray, torch.Tensor]:
    """An image of `n` random solid rectangles and their boxes [n, 4]."""
    h, w = size
    rects, colours = [], []
    for _ in range(n):
        bw, bh = rng.integers(20, w // 2), rng.integers(20, h // 2)
        x1, y1 = rng.integers(0, w - bw), rng.integers(0, h - bh)
        rects.append((int(x1), int(y1), int(x1 + bw), int(y1 + bh)))
        colours.append(tuple(int(c) for c in rng.integers(0, 256, 3)))
    return rectangles_image(rects, colours, size, background=128), rectangles_gt(rects)
