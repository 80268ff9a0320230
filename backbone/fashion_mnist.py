"""Fashion-MNIST (IDX files) -> an ImageNet-style folder of RGB PNG images.

`prepare` reads `train-images-idx3-ubyte(.gz)`, `train-labels-idx1-ubyte(.gz)`, `t10k-...` from
`src` (the Debian package `dataset-fashion-mnist` installs them in `DEFAULT_SRC`) and writes
`OUT/train/<class>/<index>.png` (60,000 images) and `OUT/val/<class>/<index>.png` (the 10,000
test images), 28 x 28 RGB (the grey value in all three channels), plus `OUT/classes.txt`.
Class folders are named so that their sorted order is the official label order 0..9.

`pad` P frames every image (both splits alike) with P pixels of black, Fashion-MNIST's own
background: a garment fills its 28 x 28 frame edge to edge, so the paper's single centre crop
(7/8 of the side) would cut off sleeves, soles and handles; with pad 2 (32 x 32) the centre
crop keeps the whole garment (docs/classification.md).

`tools/prepare_fashion_mnist.py` is its command line.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from backbone.data import read_idx

# Official label order; the "N_" folder prefix keeps sorted folder order == label order.
CLASSES = ["T-shirt_top", "Trouser", "Pullover", "Dress", "Coat",
           "Sandal", "Shirt", "Sneaker", "Bag", "Ankle_boot"]
DEFAULT_SRC = Path("/usr/share/datasets/fashion-mnist")
SPLITS = {"train": "train", "val": "t10k"}


def folder_name(label: int) -> str:
    return f"{label}_{CLASSES[label]}"


def find_idx(src: Path, stem: str) -> Path:
    for name in (f"{stem}.gz", stem):
        if (src / name).is_file():
            return src / name
    raise FileNotFoundError(f"{src}: neither {stem}.gz nor {stem} found")


def write_split(images: np.ndarray, labels: np.ndarray, out: Path, limit: int | None, pad: int = 0) -> int:
    """Write `images` [N, 28, 28] as RGB PNGs into class folders, framed by `pad` black pixels
    ([28 + 2 pad] squared); returns the number written."""
    for label in range(len(CLASSES)):
        (out / folder_name(label)).mkdir(parents=True, exist_ok=True)
    n = len(images) if limit is None else min(limit, len(images))
    for i in range(n):
        rgb = np.repeat(np.pad(images[i], pad)[:, :, None], 3, axis=2)
        Image.fromarray(rgb).save(out / folder_name(int(labels[i])) / f"{i:05d}.png")
    return n


def prepare(src: Path, out: Path, limit: int | None = None, pad: int = 0) -> dict[str, int]:
    """Convert both splits; returns the image count per split."""
    counts = {}
    for split, prefix in SPLITS.items():
        images = read_idx(find_idx(src, f"{prefix}-images-idx3-ubyte"))
        labels = read_idx(find_idx(src, f"{prefix}-labels-idx1-ubyte"))
        if len(images) != len(labels):
            raise ValueError(f"{src}: {len(images)} {prefix} images but {len(labels)} labels")
        counts[split] = write_split(images, labels, out / split, limit, pad)
    (out / "classes.txt").write_text("".join(folder_name(k) + "\n" for k in range(len(CLASSES))))
    return counts
