"""Selective search (Uijlings et al. 2013) with the GoogLeNet paper's doubled superpixels.

Two backends produce the same thing, ranked xyxy boxes in the coordinates of the image
passed in:

- `opencv`: `cv2.ximgproc.segmentation` (opencv-contrib), modes `single`, `fast`, `quality`.
- `selectivesearch`: the PyPI package of that name (one strategy, pure Python, slow; its
  `mode` is ignored).

`superpixel_scale` multiplies the Felzenszwalb–Huttenlocher k of every segmentation: 1.0 is
R-CNN's setting, 2.0 the GoogLeNet paper's ("superpixel size increased 2x"). The minimum
segment size follows each backend's own reference: the PyPI package gets min_size = k, as in
Uijlings' code, so it scales with k; OpenCV keeps its fixed 100 pixels, because scaling it as
well removes far more than half of the boxes (measured in docs/proposals.md).

N boxes; all boxes are Tensor[N, 4] float32 (x1, y1, x2, y2) in absolute pixels.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
import warnings

import cv2
import numpy as np
import torch

from backbone.io import load_image

BACKENDS = ("opencv", "selectivesearch")
MODES = ("single", "fast", "quality")

# OpenCV's own k values at superpixel_scale 1 (its switchTo* defaults): single strategy
# k = 200; fast and quality start at 150 and step by 150 (3 and 5 segmentations).
OPENCV_SINGLE_K = 200.0
OPENCV_BASE_K = 150.0
OPENCV_STEP_K = 150.0
# The PyPI package runs one strategy; k = 100 is the larger of Uijlings' fast-mode k's.
PACKAGE_K = 100.0
SIGMA = 0.8


@functools.lru_cache(maxsize=1)
def _libc() -> ctypes.CDLL | None:
    """The C library (looked up once: find_library runs a subprocess)."""
    name = ctypes.util.find_library("c") or ctypes.util.find_library("msvcrt")
    try:
        return ctypes.CDLL(name) if name else ctypes.CDLL(None)
    except OSError:  # pragma: no cover - platform without a loadable C library
        return None


def _seed_libc_rand(seed: int) -> None:
    """Seed C `rand()`, which OpenCV's selective search uses for its random ranking factor.

    cv2.setRNGSeed does not reach it (measured: boxes differ between runs without this).
    """
    libc = _libc()
    if libc is None or not hasattr(libc, "srand"):  # pragma: no cover
        warnings.warn("cannot seed OpenCV's selective search: boxes may vary between runs")
        return
    libc.srand(ctypes.c_uint(seed & 0xFFFFFFFF))


def _opencv_rects(rgb: np.ndarray, mode: str, scale: float, seed: int) -> np.ndarray:
    """Run OpenCV's selective search; return int rects [N, 4] (x, y, w, h), ranked."""
    seg = cv2.ximgproc.segmentation.createSelectiveSearchSegmentation()
    seg.setBaseImage(np.ascontiguousarray(rgb[:, :, ::-1]))  # OpenCV wants BGR
    if mode == "single":
        seg.switchToSingleStrategy(int(round(OPENCV_SINGLE_K * scale)), SIGMA)
    elif mode == "fast":
        seg.switchToSelectiveSearchFast(int(round(OPENCV_BASE_K * scale)),
                                        int(round(OPENCV_STEP_K * scale)), SIGMA)
    else:
        seg.switchToSelectiveSearchQuality(int(round(OPENCV_BASE_K * scale)),
                                           int(round(OPENCV_STEP_K * scale)), SIGMA)
    _seed_libc_rand(seed)
    rects = seg.process()
    return np.asarray(rects, dtype=np.int64).reshape(-1, 4)


def _package_rects(rgb: np.ndarray, scale: float, seed: int) -> np.ndarray:
    """Run the `selectivesearch` package; return int rects [N, 4] (x, y, w, h), ranked.

    The package returns regions in the order they were created (segments, then merges) and
    writes w = max_x - min_x, one pixel short; both are fixed here. Ranking follows Uijlings:
    a region's level counts back from the last merge, times a random factor, ascending.
    """
    import selectivesearch

    k = PACKAGE_K * scale
    with warnings.catch_warnings():  # its texture code warns on float input
        warnings.simplefilter("ignore")
        _, regions = selectivesearch.selective_search(rgb, scale=k, sigma=SIGMA, min_size=int(round(k)))
    if not regions:
        return np.zeros((0, 4), dtype=np.int64)
    rects = np.array([r["rect"] for r in regions], dtype=np.int64).reshape(-1, 4)
    rects[:, 2:] += 1
    level = np.arange(len(rects), 0, -1, dtype=np.float64)
    rank = np.random.default_rng(seed).random(len(rects)) * level
    return rects[np.argsort(rank, kind="stable")]


def _resize_to_width(image: np.ndarray, width: int) -> np.ndarray:
    """Resize `image` [H, W, 3] to `width` columns, keeping the aspect ratio (0: unchanged)."""
    h, w = image.shape[:2]
    if width <= 0 or w == width:
        return image
    new_h = max(1, int(round(h * width / w)))
    interp = cv2.INTER_AREA if width < w else cv2.INTER_LINEAR
    return cv2.resize(image, (width, new_h), interpolation=interp)


def unique_boxes(boxes: torch.Tensor) -> torch.Tensor:
    """Drop exact duplicates of `boxes` (Tensor[N, 4]), keeping the first (best ranked) one."""
    if len(boxes) == 0:
        return boxes
    _, inverse = torch.unique(boxes, dim=0, return_inverse=True)
    first = torch.full((int(inverse.max()) + 1,), len(boxes), dtype=torch.long)
    first.scatter_reduce_(0, inverse, torch.arange(len(boxes)), reduce="amin")
    return boxes[first.sort().values]


def selective_search(image: np.ndarray, backend: str = "opencv", mode: str = "fast",
                     superpixel_scale: float = 2.0, resize_width: int = 500,
                     min_size: int = 20, seed: int = 0) -> torch.Tensor:
    """Selective-search boxes of one image, ranked best first.

    Args:
        image: RGB uint8 array [H, W, 3] (or a path, read with backbone.io.load_image).
        backend: "opencv" or "selectivesearch".
        mode: "single", "fast" or "quality" (opencv; the package has a single strategy).
        superpixel_scale: multiplies the segmentation's k (2.0: the GoogLeNet paper).
        resize_width: segment a copy resized to this width, as R-CNN did (0: as given).
        min_size: drop boxes with a side shorter than this, in the pixels of `image`.
        seed: seed of the random factor in the ranking; same seed, same boxes.

    Returns:
        boxes (Tensor[N, 4]): float32 xyxy in the pixels of `image`, duplicates removed.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown selective search backend {backend!r} (choose from {BACKENDS})")
    if mode not in MODES:
        raise ValueError(f"unknown selective search mode {mode!r} (choose from {MODES})")
    if superpixel_scale <= 0:
        raise ValueError(f"superpixel_scale must be positive, got {superpixel_scale}")
    image = load_image(image)
    h, w = image.shape[:2]
    small = _resize_to_width(image, resize_width)
    if backend == "opencv":
        rects = _opencv_rects(small, mode, superpixel_scale, seed)
    else:
        rects = _package_rects(small, superpixel_scale, seed)
    boxes = torch.from_numpy(rects).float()
    boxes[:, 2:] += boxes[:, :2]
    boxes *= torch.tensor([w / small.shape[1], h / small.shape[0]] * 2)
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, w)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, h)
    boxes = boxes.round()  # whole pixels, so that rescaled near-copies become exact duplicates
    keep = torch.minimum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]) >= min_size
    return unique_boxes(boxes[keep]).contiguous()
