"""Garments on photographs, one per image: a classification folder in the demo scenes' domain.

`make_item_crops` writes `OUT/train/<class>/<n>.png` and `OUT/val/<class>/<n>.png`
(ImageNet's layout, the class names of the scenes' classes.txt) that `detect train-classifier`
reads. Each image is one Fashion-MNIST item pasted on a photograph exactly as `detect.scenes`
pastes it (same sizes, colours, blending and backgrounds), then cut out the way the detector
cuts a region:
the item's box dilated about its centre and warped to a square of `size` pixels, with as
much context as the detector's warp shows once train-classifier's single centre crop (7/8 of
the side) is taken: the box then fills 192/224 of the network input, R-CNN's 16 px of context
at 224.

Why: a classifier trained on Fashion-MNIST itself (grey garments on black) classifies the
garments of the scenes at chance (16% on the ground-truth boxes of the test scenes), so
fine-tuning had to learn the domain from scratch. Trained on these crops, the classifier
starts the detector in the scenes' own domain (docs/demo.md).

`background` F adds round(F x count) crops per split of a class `__background__`: regions of
the same kind of scene, sized like items, overlapping the pasted item with IoU < 0.3; the
detector's background row starts from that class's row (`finetune.init_head: match`).

Disjointness: train crops take items from the Fashion-MNIST train file's indices [0, 50000)
and the train half of each photograph; val crops take [50000, 60000) and the val quarter,
as the scenes of those splits do. Nothing here touches the t10k file or the test quarter of
a photograph, which only the test scenes use. Crop n of a split is drawn from
numpy.random.default_rng([seed, split, n, 7]); it uses item slot n of the split's seeded order.

`tools/make_item_crops.py` is its command line.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from detect import scenes
from detect.detector import BACKGROUND  # the class name the detector's background row is carried from

CLASSES, FASHION_MNIST_DIR, ITEM_SIZE = scenes.CLASSES, scenes.FASHION_MNIST_DIR, scenes.ITEM_SIZE

# R-CNN's warp puts the box in the middle 192/224 of the crop; the classifier's centre crop
# keeps 224/256 of the image's side: the box should fill 192/256 of a saved crop.
CONTEXT = 256 / 192


def paste(background: np.ndarray, item: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One item pasted at a random place of `background` [H, W, 3] as make_scenes pastes it.

    Returns (image [H, W, 3] uint8, box [4] xyxy of the item's opaque pixels).
    """
    height, width = background.shape[:2]
    side = float(np.exp(rng.uniform(np.log(ITEM_SIZE[0]), np.log(ITEM_SIZE[1]))))
    alpha, shade = scenes.render_item(item, side, float(np.exp(rng.uniform(-0.15, 0.15))))
    h, w = min(alpha.shape[0], height), min(alpha.shape[1], width)
    alpha, shade = alpha[:h, :w], shade[:h, :w]
    mask = alpha >= 0.5
    x, y = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
    canvas = background.astype(np.float32)
    patch = canvas[y:y + h, x:x + w]
    colour = scenes.pick_colour(float(scenes.luminance(patch[mask]).mean()) if mask.any() else 128.0, rng)
    rgb = colour[None, None, :] * (0.45 + 0.55 * shade[:, :, None])
    patch[:] = alpha[:, :, None] * rgb + (1.0 - alpha[:, :, None]) * patch
    box = scenes.opaque_box(mask)
    box = np.array([0, 0, w, h], np.float32) if box is None else box
    return np.clip(canvas + 0.5, 0, 255).astype(np.uint8), box + np.array([x, y, x, y], np.float32)


def cut_region(image: np.ndarray, box: np.ndarray, size: int) -> np.ndarray:
    """The box dilated by CONTEXT about its centre, warped to size x size (out-of-image pixels
    black, as the detector's roi_align reads zeros there). Returns [size, size, 3] uint8."""
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    hw, hh = (box[2] - box[0]) * CONTEXT / 2, (box[3] - box[1]) * CONTEXT / 2
    region = (float(cx - hw), float(cy - hh), float(cx + hw), float(cy + hh))
    return np.asarray(Image.fromarray(image).transform((size, size), Image.EXTENT, region, Image.BILINEAR))


def background_box(item_box: np.ndarray, width: int, height: int, rng: np.random.Generator) -> np.ndarray:
    """A box of an item's size range at a random place of the scene that overlaps `item_box`
    with IoU < 0.3: what R-CNN's sampling calls background (IoU < 0.5), kept clear of the item.
    (After 50 draws that all overlap more, the last one is returned.)"""
    for _ in range(50):
        side = float(np.exp(rng.uniform(np.log(ITEM_SIZE[0]), np.log(ITEM_SIZE[1]))))
        w, h = side * rng.uniform(0.5, 1.0), side
        w, h = (w, h) if rng.random() < 0.5 else (h, w)
        w, h = min(w, width), min(height, h)
        x, y = rng.uniform(0, width - w), rng.uniform(0, height - h)
        box = np.array([x, y, x + w, y + h], np.float32)
        if scenes.box_iou_np(box, item_box) < 0.3:
            return box
    return box


def make_crop(split: str, n: int, seed: int, size: int, photos: list[np.ndarray],
              fmnist: dict[str, tuple[np.ndarray, np.ndarray]],
              background_class: bool = False) -> tuple[np.ndarray, int]:
    """Crop n of `split`: (pixels [size, size, 3] uint8, Fashion-MNIST label 0..9), or with
    `background_class` a region of the scene clear of the item (label -1, seeded apart)."""
    rng = np.random.default_rng([seed, scenes.SPLITS[split], n, 8 if background_class else 7])
    images, labels = fmnist[scenes.ITEM_SOURCES[split][0]]
    order = scenes.item_order(seed, split)
    k = int(order[n % len(order)])
    scene_size = (int(rng.integers(scenes.SCENE_SIDE[0], scenes.SCENE_SIDE[1] + 1)),
                  int(rng.integers(scenes.SCENE_SIDE[0], scenes.SCENE_SIDE[1] + 1)))
    p = int(rng.integers(len(photos)))
    background = scenes.crop_background(photos[p], scenes.split_region(*photos[p].shape[:2], p, split), scene_size, rng)
    image, box = paste(background, images[k], rng)
    if background_class:  # a region of the same scene away from the item: label -1
        return cut_region(image, background_box(box, *scene_size, rng), size), -1
    return cut_region(image, box, size), int(labels[k])


_SOURCES: dict = {}  # per process: the photographs and Fashion-MNIST's train file, loaded once


def _write_chunk(root: Path, split: str, first: int, stop: int, seed: int, size: int, fashion_mnist: str,
                 background: bool = False) -> int:
    """Write crops first..stop-1 of `split` (one worker's share); returns how many."""
    from backbone.io import atomic_path

    if not _SOURCES:
        _SOURCES.update(photos=scenes.load_photos(), fmnist={"train": scenes.load_fashion_mnist(fashion_mnist, "train")})
    for n in range(first, stop):
        pixels, label = make_crop(split, n, seed, size, _SOURCES["photos"], _SOURCES["fmnist"], background)
        with atomic_path(root / split / (BACKGROUND if background else CLASSES[label]) / f"{n:06d}.png") as tmp:
            Image.fromarray(pixels).save(tmp, format="PNG")
    return stop - first


def make_item_crops(out: str | Path, counts: dict[str, int], size: int = 56, seed: int = 0,
                    fashion_mnist: str | Path = FASHION_MNIST_DIR, workers: int = 1,
                    background: float = 0.0, progress: bool = True) -> dict[str, int]:
    """Write counts[split] crops per split ("train", "val") as class folders, in `workers`
    processes (the output does not depend on how many); returns the counts. `background` > 0
    adds round(background x count) crops per split of a class `__background__`: regions of the
    same kind of scene clear of its item (IoU < 0.3), which the detector's background row can
    start from (`finetune.init_head: match` carries it)."""
    import multiprocessing as mp

    from backbone.progress import progress as progress_bar

    if set(counts) - {"train", "val"}:
        raise SystemExit("item crops are made for train and val only (the test items stay unseen)")
    root = Path(out)
    extra = {s: round(background * c) for s, c in counts.items()}
    for split in counts:
        for name in CLASSES + ([BACKGROUND] if extra[split] else []):
            (root / split / name).mkdir(parents=True, exist_ok=True)
    chunks = [(root, s, a, min(a + 500, c), seed, size, str(fashion_mnist), bg)
              for bg, per_split in ((False, counts), (True, extra)) for s, c in per_split.items()
              for a in range(0, c, 500)]
    bar = progress_bar(total=sum(counts.values()) + sum(extra.values()), desc="item crops", unit="img",
                       disable=not progress)
    if workers <= 1:
        for chunk in chunks:
            bar.update(_write_chunk(*chunk))
    else:
        with mp.get_context("fork").Pool(workers) as pool:
            for done in pool.imap_unordered(_star_write, chunks):
                bar.update(done)
    bar.close()
    return counts


def _star_write(chunk: tuple) -> int:
    return _write_chunk(*chunk)
