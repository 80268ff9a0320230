"""Tiny generated classification folders for the training tests (no files from outside)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

# One dominant colour per class: learnable in a few steps even through the augmentation.
COLOURS = [(220, 40, 40), (40, 200, 60), (50, 60, 230)]


def make_image_folder(root: Path, per_class: int = 8, val_per_class: int = 4, size: int = 40,
                      classes: int = 3, seed: int = 0) -> Path:
    """`root/train/c<k>/*.png` and `root/val/c<k>/*.png`: noisy images of colour k. Returns root."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", per_class), ("val", val_per_class)):
        for k in range(classes):
            folder = root / split / f"c{k}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                noise = rng.integers(-40, 41, size=(size, size, 3))
                pixels = np.clip(np.array(COLOURS[k]) + noise, 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{i:03d}.png")
    return root
