"""A small Pascal VOC data set of drawn textured shapes on real photographs: a stand-in for
"your own data" in tests and quick tries of the `custom_*` recipes.

Why these objects: two classes, a striped disc and a checkered square, each painted in two
random colours (one light, one dark) and partly transparent (alpha 0.75-1), at a random
position and a random size (longer side 40-160 px by default). Colour carries no class
information, so a classifier has to learn shape and texture, yet both are plain enough for a
narrow network trained from scratch for about a minute on one CPU core. Shapes drawn by
formula give exact boxes, and nothing is downloaded: the backgrounds are scikit-image's
bundled photographs (`detect.scenes.PHOTOS`), train scenes cut from one half of each
photograph and test scenes from a quarter of the other half (`detect.scenes.split_region`),
so no test background was seen in training.

Objects of a scene never overlap (their boxes keep a few pixels apart), so every box is the
tight box of its drawn shape, (x1, y1, x2, y2) with x2 = last column + 1. Each scene is drawn
from a numpy generator seeded by (seed, split, index): the same seed writes the same files.
"""
from __future__ import annotations

import colorsys
from pathlib import Path

import numpy as np
from PIL import Image

from detect.scenes import crop_background, load_photos, split_region

CLASSES = ["striped_disc", "checkered_square"]
SPLITS = {"train": 0, "test": 2}       # split_region's train half and test quarter
OBJECT_SIDE = (40, 160)                # default longer side of an object's box, pixels
SCENE_SIDE = (320, 480)                # default scene width and height, pixels
OBJECTS_PER_SCENE = (1, 3)             # objects tried per scene (fewer when they do not fit)
GAP = 4                                # pixels kept between two objects' boxes
PLACEMENT_TRIES = 30


def two_colours(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A light and a dark RGB colour [3] (0..255) of random hues: the texture always shows."""
    light = colorsys.hsv_to_rgb(rng.random(), rng.uniform(0.3, 1.0), rng.uniform(0.75, 1.0))
    dark = colorsys.hsv_to_rgb(rng.random(), rng.uniform(0.3, 1.0), rng.uniform(0.05, 0.35))
    return np.array(light) * 255.0, np.array(dark) * 255.0


def draw_object(label: int, side: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Colour [side, side, 3] float32 and alpha [side, side] float32 (0..1) of class `label`.

    1 (striped disc): stripes of random angle, 4-8 across, in a disc with a 1 px soft edge.
    2 (checkered square): 3-6 cells a side filling the square. Both take a random opacity.
    """
    light, dark = two_colours(rng)
    yy, xx = np.mgrid[:side, :side].astype(np.float32) + 0.5
    if label == 1:
        angle, stripes = rng.uniform(0, np.pi), rng.uniform(4, 8)
        u = (xx * np.cos(angle) + yy * np.sin(angle)) * stripes / side
        light_part = (u % 1.0) < 0.5
        radius = side / 2.0
        shape = np.clip(radius - np.hypot(xx - radius, yy - radius) + 0.5, 0.0, 1.0)
    else:
        cell = side / int(rng.integers(3, 7))
        light_part = ((xx // cell + yy // cell) % 2) == 0
        shape = np.ones((side, side), np.float32)
    colour = np.where(light_part[:, :, None], light, dark).astype(np.float32)
    return colour, (shape * rng.uniform(0.75, 1.0)).astype(np.float32)


def place(boxes: list[list[int]], side: int, width: int, height: int,
          rng: np.random.Generator) -> list[int] | None:
    """A box [x1, y1, x2, y2] of `side` inside the image, GAP px clear of `boxes`, or None."""
    for _ in range(PLACEMENT_TRIES):
        x, y = int(rng.integers(0, width - side + 1)), int(rng.integers(0, height - side + 1))
        box = [x, y, x + side, y + side]
        if all(box[2] + GAP <= b[0] or b[2] + GAP <= box[0] or box[3] + GAP <= b[1] or b[3] + GAP <= box[1]
               for b in boxes):
            return box
    return None


def make_photo_scene(split: str, index: int, seed: int, photos: list[np.ndarray],
                     scene_side: tuple[int, int] = SCENE_SIDE, object_side: tuple[int, int] = OBJECT_SIDE
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Scene `index` of `split` ("train" or "test"): image [H, W, 3] uint8, boxes [N, 4]
    float32 xyxy, labels [N] int64 in 1..2. A pure function of its arguments."""
    rng = np.random.default_rng([seed, SPLITS[split], index])
    width, height = (int(rng.integers(scene_side[0], scene_side[1] + 1)) for _ in range(2))
    p = int(rng.integers(len(photos)))
    region = split_region(photos[p].shape[0], photos[p].shape[1], p, split)
    canvas = crop_background(photos[p], region, (width, height), rng).astype(np.float32)
    boxes, labels = [], []
    for _ in range(int(rng.integers(OBJECTS_PER_SCENE[0], OBJECTS_PER_SCENE[1] + 1))):
        side = min(int(rng.integers(object_side[0], object_side[1] + 1)), width, height)
        label = int(rng.integers(1, len(CLASSES) + 1))
        box = place(boxes, side, width, height, rng)
        if box is None:
            continue
        colour, alpha = draw_object(label, side, rng)
        patch = canvas[box[1]:box[3], box[0]:box[2]]
        patch[:] = alpha[:, :, None] * colour + (1.0 - alpha[:, :, None]) * patch
        boxes.append(box)
        labels.append(label)
    image = np.clip(canvas + 0.5, 0, 255).astype(np.uint8)
    return (image, np.array(boxes, np.float32).reshape(-1, 4), np.array(labels, np.int64))


def make_photo_scenes(out: str | Path, counts: dict[str, int], seed: int = 0,
                      scene_side: tuple[int, int] = SCENE_SIDE, object_side: tuple[int, int] = OBJECT_SIDE,
                      quality: int = 90, photos: list[np.ndarray] | None = None) -> Path:
    """Write counts[split] scenes per split ("train", "test") as a Pascal VOC folder under `out`:
    JPEGImages/<split>_NNNN.jpg, Annotations/<split>_NNNN.xml, ImageSets/Main/<split>.txt and
    classes.txt. Returns the folder. The same arguments write the same files. `photos`: the
    backgrounds as `load_photos()` returns them (loaded here if None)."""
    import torch

    from backbone.io import atomic_path, atomic_write_text
    from detect.data import write_voc

    root = Path(out)
    photos = load_photos() if photos is None else photos
    for split, count in counts.items():
        keys = [f"{split}_{i:04d}" for i in range(count)]
        for index, key in enumerate(keys):
            image, boxes, labels = make_photo_scene(split, index, seed, photos, scene_side, object_side)
            with atomic_path(root / "JPEGImages" / f"{key}.jpg") as tmp:
                Image.fromarray(image).save(tmp, format="JPEG", quality=quality)
            write_voc(root, key, (image.shape[1], image.shape[0]), torch.from_numpy(boxes),
                      torch.from_numpy(labels), CLASSES)
        atomic_write_text(root / "ImageSets" / "Main" / f"{split}.txt", "\n".join(keys) + "\n")
    atomic_write_text(root / "classes.txt", "\n".join(CLASSES) + "\n")
    return root
