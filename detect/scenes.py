"""Compose the demo detection scenes: Fashion-MNIST items pasted on real photographs.

`make_scenes` writes a Pascal VOC folder (JPEGImages/, Annotations/,
ImageSets/Main/{train,val,test}.txt, classes.txt) that `detect.data.load_dataset` reads. Every
choice below is documented in docs/demo.md; in short:

- Items: real 28×28 Fashion-MNIST garments (10 classes). Train scenes take items from the
  train file's indices [0, 50000), val scenes from [50000, 60000), test scenes only from the
  t10k file: no item appears in two splits. Within a split every scene owns 6 item slots of
  one seeded permutation, so two scenes of a split never share an item either (until the
  split's items run out, when the permutation wraps around).
- Blending: the item's own intensity is its alpha (soft edges, so no black square shows),
  with enclosed holes filled so dark garments stay solid. The item is colourised: a random
  colour, picked so its luminance contrasts with the photograph under it, shaded by the
  garment's intensity so its texture stays visible.
- Boxes: the tight box of the pixels the item owns (alpha >= 0.5 and not covered by a later
  item), in the project's convention (x1, y1, x2, y2), x2 = last column + 1.
- Occlusion is limited: a new item may overlap an earlier one with box IoU <= 0.3 and may
  cover at most 25% of its visible pixels, so every box stays visible.
- Backgrounds: 14 photographs bundled with scikit-image. Each is cut into a half (train) and
  two quarters (val, test); which half rotates from photograph to photograph. A scene's
  background is a random crop of its split's region, resized to 320-500 px per side.
Everything is drawn from numpy generators seeded by (seed, split, scene index), so a scene is
reproducible on its own and the output does not depend on how many scenes were asked for.

`tools/make_scenes.py` is its command line.
"""
from __future__ import annotations

import colorsys
import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image
from scipy import ndimage

from backbone.data import read_idx

CLASSES = ["tshirt_top", "trouser", "pullover", "dress", "coat",
           "sandal", "shirt", "sneaker", "bag", "ankle_boot"]  # Fashion-MNIST label order
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
# skimage.data photographs (the bundled files; the synthetic ones -- chessboard, phantom,
# logo, colour wheel -- and the right view of the motorcycle stereo pair are left out).
PHOTOS = ["astronaut", "chelsea", "coffee", "hubble_deep_field", "immunohistochemistry",
          "stereo_motorcycle", "retina", "rocket", "camera", "brick", "grass", "gravel", "moon", "coins"]
SPLITS = {"train": 0, "val": 1, "test": 2}
# Fashion-MNIST file part and index range each split draws its items from.
ITEM_SOURCES = {"train": ("train", 0, 50000), "val": ("train", 50000, 60000), "test": ("t10k", 0, 10000)}
SLOTS_PER_SCENE = 6          # most items in one scene (1..6)
ITEM_SIZE = (24.0, 160.0)    # longer side of an item's box, pixels (log-uniform)
SCENE_SIDE = (320, 500)      # scene width and height, pixels (uniform, independent)
MAX_IOU = 0.3                # box IoU allowed between two items of a scene
MAX_COVER = 0.25             # fraction of an earlier item's visible pixels a new item may hide
MIN_CONTRAST = 80.0          # wanted luminance difference item/background (0..255)
PLACEMENT_TRIES = 30         # random positions tried per item before giving up on it


@dataclass
class Scene:
    """One composed scene. N items; `owner` maps each pixel to the item that shows there."""
    image: np.ndarray    # [H, W, 3] uint8 RGB
    boxes: np.ndarray    # [N, 4] float32 xyxy, tight around each item's visible pixels
    labels: np.ndarray   # [N] int64 in 1..10 (Fashion-MNIST label + 1; 0 is background)
    owner: np.ndarray    # [H, W] int16: item index 0..N-1, or -1 for the photograph
    items: np.ndarray    # [N] int64 Fashion-MNIST index of each item (in its file part)


# ---------------------------------------------------------------- sources

def load_fashion_mnist(root: str | Path, part: str) -> tuple[np.ndarray, np.ndarray]:
    """Images [N, 28, 28] uint8 and labels [N] int64 (0..9) of part "train" or "t10k"."""
    root = Path(root)
    images = read_idx(root / f"{part}-images-idx3-ubyte.gz")
    labels = read_idx(root / f"{part}-labels-idx1-ubyte.gz").astype(np.int64)
    return images, labels


def load_photos(names: Sequence[str] = PHOTOS) -> list[np.ndarray]:
    """scikit-image's photographs `names` (default: the scenes' backgrounds) as [H, W, 3] uint8
    RGB (grayscale ones repeated)."""
    import skimage.data

    photos = []
    for name in names:
        img = getattr(skimage.data, name)()
        if isinstance(img, tuple):  # stereo_motorcycle-style returns; keep the left view
            img = img[0]
        img = np.asarray(img)
        if img.ndim == 2:
            img = np.repeat(img[:, :, None], 3, axis=2)
        photos.append(np.ascontiguousarray(img[:, :, :3]).astype(np.uint8))
    return photos


def split_region(height: int, width: int, photo_index: int, split: str) -> tuple[int, int, int, int]:
    """The (x1, y1, x2, y2) part of a photograph reserved for `split`.

    One half goes to train and the other half is cut in two quarters for val and test; the
    train half is the left, right, top or bottom one depending on the photograph, so each
    split sees every part of the picture set somewhere. The three regions never overlap.
    """
    side = photo_index % 4
    hx, hy = width // 2, height // 2
    if side == 0:    # train left, val top-right, test bottom-right
        regions = {"train": (0, 0, hx, height), "val": (hx, 0, width, hy), "test": (hx, hy, width, height)}
    elif side == 1:  # train right, val bottom-left, test top-left
        regions = {"train": (hx, 0, width, height), "val": (0, hy, hx, height), "test": (0, 0, hx, hy)}
    elif side == 2:  # train top, val bottom-left, test bottom-right
        regions = {"train": (0, 0, width, hy), "val": (0, hy, hx, height), "test": (hx, hy, width, height)}
    else:            # train bottom, val top-right, test top-left
        regions = {"train": (0, hy, width, height), "val": (hx, 0, width, hy), "test": (0, 0, hx, hy)}
    return regions[split]


def crop_background(photo: np.ndarray, region: tuple[int, int, int, int], size: tuple[int, int],
                    rng: np.random.Generator) -> np.ndarray:
    """A random crop of `region` with the scene's aspect ratio, resized to size=(W, H), maybe mirrored."""
    x1, y1, x2, y2 = region
    rw, rh = x2 - x1, y2 - y1
    w, h = size
    scale = min(rw / w, rh / h) * rng.uniform(0.6, 1.0)  # crop side = scene side * scale
    cw, ch = max(1, min(rw, round(w * scale))), max(1, min(rh, round(h * scale)))
    cx = x1 + int(rng.integers(0, rw - cw + 1))
    cy = y1 + int(rng.integers(0, rh - ch + 1))
    crop = Image.fromarray(photo[cy:cy + ch, cx:cx + cw]).resize((w, h), Image.BILINEAR)
    out = np.asarray(crop)
    return np.ascontiguousarray(out[:, ::-1]) if rng.random() < 0.5 else out.copy()


# ---------------------------------------------------------------- one item

def item_alpha(item: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Alpha and shading of a 28×28 item, both [28, 28] float32 in [0, 1].

    The intensity, stretched so that a quarter of the item's maximum is already opaque, is
    the alpha: the black surround is transparent and the edges stay soft. Holes enclosed by
    the silhouette are filled so dark parts of a garment do not let the photograph through.
    """
    v = item.astype(np.float32)
    vmax = max(float(v.max()), 1.0)
    alpha = np.clip(v / (0.25 * vmax), 0.0, 1.0)
    solid = ndimage.binary_fill_holes(v > 0.1 * vmax)
    alpha = np.maximum(alpha, solid.astype(np.float32))
    return alpha, v / vmax


def render_item(item: np.ndarray, longer_side: float, aspect: float) -> tuple[np.ndarray, np.ndarray]:
    """Alpha and shading [h, w] of an item resized so its opaque box has the given longer side.

    `aspect` stretches the width and squeezes the height by that factor (a little variety).
    """
    alpha, shade = item_alpha(item)
    ys, xs = np.nonzero(alpha >= 0.5)
    y1, y2 = max(int(ys.min()) - 1, 0), min(int(ys.max()) + 2, 28)  # 1 px margin for soft edges
    x1, x2 = max(int(xs.min()) - 1, 0), min(int(xs.max()) + 2, 28)
    f = longer_side / max((xs.max() - xs.min() + 1) * aspect, (ys.max() - ys.min() + 1) / aspect)
    w = max(2, round((x2 - x1) * f * aspect))
    h = max(2, round((y2 - y1) * f / aspect))
    a = Image.fromarray(alpha[y1:y2, x1:x2]).resize((w, h), Image.BILINEAR)
    s = Image.fromarray(shade[y1:y2, x1:x2]).resize((w, h), Image.BILINEAR)
    return np.clip(np.asarray(a), 0.0, 1.0), np.clip(np.asarray(s), 0.0, 1.0)


def luminance(rgb: np.ndarray) -> np.ndarray:
    """Rec. 601 luma of [..., 3] values."""
    return rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114


def pick_colour(background_luma: float, rng: np.random.Generator) -> np.ndarray:
    """An item colour [3] in 0..255 whose luminance differs from the background's.

    Random hue, saturation and value; the first of a few candidates with a luminance
    difference of MIN_CONTRAST or more is kept, else the best one. The item's shading
    (0.45..1 of the colour) is accounted for with its mean, 0.8.
    """
    best, best_diff = None, -1.0
    for _ in range(12):
        hsv = (rng.random(), rng.uniform(0.2, 1.0), rng.uniform(0.2, 1.0))
        rgb = np.array(colorsys.hsv_to_rgb(*hsv), dtype=np.float32) * 255.0
        diff = abs(float(luminance(rgb)) * 0.8 - background_luma)
        if diff > best_diff:
            best, best_diff = rgb, diff
        if diff >= MIN_CONTRAST:
            break
    return best


# ---------------------------------------------------------------- one scene

def opaque_box(mask: np.ndarray) -> np.ndarray | None:
    """Tight (x1, y1, x2, y2) of the True pixels of [H, W] mask, x2/y2 exclusive; None if empty."""
    ys, xs = np.nonzero(mask)
    if len(ys) == 0:
        return None
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=np.float32)


def box_iou_np(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two xyxy boxes [4]."""
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def fits(owner: np.ndarray, boxes: list[np.ndarray], mask: np.ndarray, x: int, y: int,
         box: np.ndarray) -> bool:
    """Whether an item with opaque `mask` at (x, y) keeps every earlier item visible enough."""
    if any(box_iou_np(box, b) > MAX_IOU for b in boxes):
        return False
    under = owner[y:y + mask.shape[0], x:x + mask.shape[1]][mask]
    for j in np.unique(under[under >= 0]):
        if (under == j).sum() > MAX_COVER * (owner == j).sum():
            return False
    return True


def compose_scene(background: np.ndarray, items: list[np.ndarray], labels: list[int],
                  rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Paste items on `background` [H, W, 3]; returns (image [H, W, 3] uint8, owner [H, W], kept).

    Items are placed in order at random positions (fully inside the image) and scales; one
    that cannot be placed within the occlusion limits after PLACEMENT_TRIES is dropped.
    `kept` lists the indices into `items` that were pasted, in paste order (= owner index).
    """
    height, width = background.shape[:2]
    canvas = background.astype(np.float32)
    owner = np.full((height, width), -1, dtype=np.int16)
    boxes, kept = [], []
    for i, item in enumerate(items):
        side = float(np.exp(rng.uniform(np.log(ITEM_SIZE[0]), np.log(ITEM_SIZE[1]))))
        alpha, shade = render_item(item, side, float(np.exp(rng.uniform(-0.15, 0.15))))
        h, w = alpha.shape
        if h > height or w > width:
            continue
        mask = alpha >= 0.5
        local = opaque_box(mask)
        for _ in range(PLACEMENT_TRIES):
            x, y = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
            box = local + np.array([x, y, x, y], dtype=np.float32)
            if fits(owner, boxes, mask, x, y, box):
                break
        else:
            continue
        patch = canvas[y:y + h, x:x + w]
        colour = pick_colour(float(luminance(patch[mask]).mean()), rng)
        rgb = colour[None, None, :] * (0.45 + 0.55 * shade[:, :, None])
        patch[:] = alpha[:, :, None] * rgb + (1.0 - alpha[:, :, None]) * patch
        owner[y:y + h, x:x + w][mask] = len(kept)
        boxes.append(box)
        kept.append(i)
    image = np.clip(canvas + 0.5, 0, 255).astype(np.uint8)
    return image, owner, kept


def scene_rng(seed: int, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, SPLITS[split], index])


@functools.lru_cache(maxsize=8)
def item_order(seed: int, split: str) -> np.ndarray:
    """The seeded permutation of the split's Fashion-MNIST index range, [n] int64."""
    _, start, stop = ITEM_SOURCES[split]
    return np.random.default_rng([seed, SPLITS[split], 2**31]).permutation(np.arange(start, stop))


def item_slots(seed: int, split: str, index: int) -> np.ndarray:
    """The SLOTS_PER_SCENE Fashion-MNIST indices reserved for scene `index` of `split`."""
    order = item_order(seed, split)
    pos = (index * SLOTS_PER_SCENE + np.arange(SLOTS_PER_SCENE)) % len(order)
    return order[pos]


def make_scene(split: str, index: int, seed: int, photos: list[np.ndarray],
               fmnist: dict[str, tuple[np.ndarray, np.ndarray]]) -> Scene:
    """Scene `index` of `split`: a pure function of (split, index, seed) and the sources."""
    rng = scene_rng(seed, split, index)
    size = (int(rng.integers(SCENE_SIDE[0], SCENE_SIDE[1] + 1)),
            int(rng.integers(SCENE_SIDE[0], SCENE_SIDE[1] + 1)))
    p = int(rng.integers(len(photos)))
    photo = photos[p]
    background = crop_background(photo, split_region(photo.shape[0], photo.shape[1], p, split), size, rng)
    images, labels = fmnist[ITEM_SOURCES[split][0]]
    chosen = item_slots(seed, split, index)[: int(rng.integers(1, SLOTS_PER_SCENE + 1))]
    image, owner, kept = compose_scene(background, [images[k] for k in chosen],
                                       [int(labels[k]) for k in chosen], rng)
    boxes = np.stack([opaque_box(owner == j) for j in range(len(kept))]) if kept \
        else np.zeros((0, 4), np.float32)
    return Scene(image=image, boxes=boxes.astype(np.float32),
                 labels=np.array([int(labels[chosen[i]]) + 1 for i in kept], dtype=np.int64),
                 owner=owner, items=np.array([int(chosen[i]) for i in kept], dtype=np.int64))


# ---------------------------------------------------------------- writing

def scene_key(split: str, index: int) -> str:
    return f"{split}_{index:05d}"


def write_scene(root: Path, key: str, scene: Scene, quality: int) -> None:
    """JPEGImages/<key>.jpg and Annotations/<key>.xml, each written atomically."""
    import torch

    from backbone.io import atomic_path
    from detect.data import write_voc

    with atomic_path(root / "JPEGImages" / f"{key}.jpg") as tmp:
        Image.fromarray(scene.image).save(tmp, format="JPEG", quality=quality)
    h, w = scene.image.shape[:2]
    write_voc(root, key, (w, h), torch.from_numpy(scene.boxes), torch.from_numpy(scene.labels),
              CLASSES, filename=f"{key}.jpg")


def make_scenes(out: str | Path, counts: dict[str, int], seed: int = 0, first: int = 0,
                quality: int = 90, fashion_mnist: str | Path = FASHION_MNIST_DIR,
                progress: bool = True) -> dict[str, list[str]]:
    """Write counts[split] scenes per split (indices first..first+n-1) as a VOC folder.

    Returns the keys written per split. The split lists and classes.txt are rewritten for
    the requested splits only (a split asked with 0 scenes keeps its old list, if any).
    """
    from backbone.io import atomic_write_text
    from backbone.progress import progress as progress_bar

    root = Path(out)
    photos = load_photos()
    fmnist = {part: load_fashion_mnist(fashion_mnist, part)
              for part in {ITEM_SOURCES[s][0] for s, n in counts.items() if n > 0}}
    atomic_write_text(root / "classes.txt", "\n".join(CLASSES) + "\n")
    jobs = [(s, i) for s, n in counts.items() for i in range(first, first + n)]
    keys: dict[str, list[str]] = {s: [] for s, n in counts.items() if n > 0}
    for split, index in progress_bar(jobs, desc="scenes", unit="img", disable=not progress):
        scene = make_scene(split, index, seed, photos, fmnist)
        write_scene(root, scene_key(split, index), scene, quality)
        keys[split].append(scene_key(split, index))
    for split, split_keys in keys.items():
        atomic_write_text(root / "ImageSets" / "Main" / f"{split}.txt", "\n".join(split_keys) + "\n")
    return keys
