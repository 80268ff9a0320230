"""A tiny generated detection data set for the fine-tuning and end-to-end tests.

Distinct, high-contrast objects (a red disc, a blue square, a yellow triangle) on textured grey
backgrounds (blurred noise plus faint stripes), 1-2 objects per image that never overlap.
Written as a Pascal VOC folder (PNG images) with the project's own writer, so the tests read it
back through `detect.data.load_dataset` as a user's data set would be read.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from scipy import ndimage

from backbone.io import atomic_write_text
from detect.data import write_voc

CLASSES = ["disc", "square", "triangle"]
COLOURS = [(230, 30, 30), (30, 70, 230), (240, 220, 20)]


def _texture(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Grey background [H, W, 3] uint8: smooth noise, fine noise and faint stripes."""
    smooth = ndimage.gaussian_filter(rng.normal(size=(h, w)), 4) * 120
    yy, xx = np.mgrid[:h, :w]
    angle, period = rng.uniform(0, np.pi), rng.uniform(6, 14)
    stripes = 12 * np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * 2 * np.pi / period)
    grey = 125 + smooth + stripes + rng.normal(scale=8, size=(h, w))
    tint = rng.uniform(0.9, 1.1, size=3)
    return np.clip(grey[:, :, None] * tint, 0, 255).astype(np.uint8)


def _place(rng: np.random.Generator, size: int, taken: list[list[float]]) -> list[float] | None:
    """A free square box [x1, y1, x2, y2] of side 26-44 px, 3 px from others, or None."""
    for _ in range(50):
        side = int(rng.integers(26, 45))
        x1, y1 = (int(v) for v in rng.integers(2, size - side - 2, size=2))
        box = [x1, y1, x1 + side, y1 + side]
        if all(box[2] + 3 <= t[0] or t[2] + 3 <= box[0] or box[3] + 3 <= t[1] or t[3] + 3 <= box[1]
               for t in taken):
            return box
    return None


def _draw(draw: ImageDraw.ImageDraw, label: int, box: list[float]) -> None:
    """Draw class `label` (1..3) filling `box` (x2, y2 exclusive)."""
    x1, y1, x2, y2 = box[0], box[1], box[2] - 1, box[3] - 1
    colour = COLOURS[label - 1]
    if label == 1:
        draw.ellipse([x1, y1, x2, y2], fill=colour)
    elif label == 2:
        draw.rectangle([x1, y1, x2, y2], fill=colour)
    else:
        draw.polygon([(x1, y2), (x2, y2), ((x1 + x2) / 2, y1)], fill=colour)


def make_shapes_dataset(root: str | Path, splits: dict[str, int], size: int = 112, seed: int = 0) -> Path:
    """Write a VOC folder with `splits` = {name: number of images}; return its root."""
    root = Path(root)
    (root / "JPEGImages").mkdir(parents=True, exist_ok=True)
    for s, (split, count) in enumerate(splits.items()):
        keys = []
        for i in range(count):
            rng = np.random.default_rng([seed, s, i])
            image = Image.fromarray(_texture(rng, size, size))
            draw = ImageDraw.Draw(image)
            boxes, labels = [], []
            for _ in range(int(rng.integers(1, 3))):
                box = _place(rng, size, boxes)
                if box is not None:
                    label = int(rng.integers(1, len(CLASSES) + 1))
                    _draw(draw, label, box)
                    boxes.append(box)
                    labels.append(label)
            key = f"{split}_{i:04d}"
            image.save(root / "JPEGImages" / f"{key}.png")
            write_voc(root, key, (size, size), torch.tensor(boxes, dtype=torch.float32),
                      torch.tensor(labels), CLASSES, filename=f"{key}.png")
            keys.append(key)
        atomic_write_text(root / "ImageSets" / "Main" / f"{split}.txt", "\n".join(keys) + "\n")
    atomic_write_text(root / "classes.txt", "\n".join(CLASSES) + "\n")
    return root


def jittered(gt: torch.Tensor, n: int, gen: torch.Generator) -> torch.Tensor:
    """n boxes around each ground-truth box (Tensor[G, 4]): centre moved by up to 15% of the
    size and each side scaled by up to exp(+-0.2), symmetric so that no constant shift helps."""
    g = gt.repeat_interleave(n, 0)
    size = g[:, 2:] - g[:, :2]
    centre = (g[:, :2] + g[:, 2:]) / 2 + (torch.rand(len(g), 2, generator=gen) * 0.3 - 0.15) * size
    size = size * torch.exp(torch.rand(len(g), 2, generator=gen) * 0.4 - 0.2)
    return torch.cat([centre - size / 2, centre + size / 2], 1)


def small_image_proposals() -> "ProposalConfig":
    """Selective search as the paper's (fast, 2x superpixels) but on the image as it is."""
    from proposals import ProposalConfig, SelectiveSearchConfig

    return ProposalConfig(selective_search=SelectiveSearchConfig(resize_width=0, min_size=10), min_size=10)


def make_init_classifier(run_dir: str | Path, width: float = 0.125, input_size: int = 64,
                         seed: int = 0) -> Path:
    """A randomly initialised classifier run, as `train-classifier` would leave one.

    He-normal weights and zero biases: without BatchNorm, the paper's Caffe initialisation
    leaves a 22-layer network nearly constant at the start, which a few hundred SGD steps on
    a CPU cannot get out of; He's keeps the activations' scale through the depth.
    """
    from torch import nn

    from backbone.models import ModelMeta, build_model, save_classifier

    torch.manual_seed(seed)
    model = build_model("googlenet", 10, width=width)
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            nn.init.zeros_(m.bias)
    meta = ModelMeta("googlenet", 10, [f"c{i}" for i in range(10)], width=width, input_size=input_size,
                     mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    save_classifier(run_dir, model, meta)
    return Path(run_dir)


def regression_run(root: Path, train_images: int, trainer, overrides: list[str]) -> dict:
    """A 2-member detector trained on generated shapes (`train_images` train, 6 test scenes of
    96 px) over a cache of jittered boxes (foreground) and random ones (background), for the box
    regression tests. trainer: `train_detector` of detect.finetune or detect.shared_finetune;
    overrides: the detector config's dotted overrides.
    Returns {"root", "data", "train", "test", "cache", "run"}."""
    from backbone.config import load_config
    from detect.config import DetectorConfig
    from detect.data import load_dataset
    from proposals import ProposalCache

    torch.set_num_threads(1)  # a busy 2-core machine: more threads only fight
    data = make_shapes_dataset(root / "data", {"train": train_images, "test": 6}, size=96, seed=5)
    train, test = load_dataset(data, "train"), load_dataset(data, "test")
    cache, gen = ProposalCache(root / "cache"), torch.Generator().manual_seed(0)
    for rec in train.images + test.images:
        xy = torch.rand(24, 2, generator=gen) * 60
        background = torch.cat([xy, xy + 12 + torch.rand(24, 2, generator=gen) * 24], 1)
        boxes = torch.cat([jittered(rec.boxes, 24, gen), background]).clamp(0, 96)
        cache.put(rec.key, boxes, torch.zeros(len(boxes), dtype=torch.int64))
    init = make_init_classifier(root / "init", width=0.125, input_size=64)
    run = trainer(load_config(DetectorConfig, None, overrides), train, None, root / "cache", init, root / "run",
                  members=2, device="cpu")
    return {"root": root, "data": data, "train": train, "test": test, "cache": cache, "run": run}
