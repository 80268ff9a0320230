"""The paper's training augmentation (section 6) and the matching evaluation transform.

Training: a random crop covering 8-100% of the image area with aspect ratio in [3/4, 4/3],
resized to S x S with an interpolation drawn uniformly from bilinear, area, nearest and
bicubic; photometric distortions after Howard 2013 (brightness, contrast, colour saturation,
applied in a random order); a horizontal mirror with probability 1/2. Evaluation: the single
centre crop of `backbone.crops` (shorter side to 256 * S / 224), so that the accuracy logged
during training is the one `detect eval --accuracy --crops 1` reports.

Every random choice comes from the `np.random.Generator` passed in, which the dataset seeds
from (seed, epoch, image index): augmentation is reproducible and independent of worker and
process counts.

Shapes: an image is uint8 `[H, W, 3]` RGB; a transform returns float32 `Tensor[3, S, S]`
normalised as `(x / 255 - mean) / std`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
import torch
from torch import Tensor

from backbone.crops import image_crops

# The paper's "random interpolation methods (bilinear, area, nearest neighbor and cubic, with
# equal probability)".
INTERPOLATIONS = (cv2.INTER_LINEAR, cv2.INTER_AREA, cv2.INTER_NEAREST, cv2.INTER_CUBIC)

# Rec. 601 luma weights: the grey image that contrast and saturation changes blend towards.
LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def random_crop_box(height: int, width: int, rng: np.random.Generator,
                    area: tuple[float, float] = (0.08, 1.0),
                    ratio: tuple[float, float] = (3 / 4, 4 / 3), tries: int = 10
                    ) -> tuple[int, int, int, int]:
    """An `(x1, y1, x2, y2)` integer box (x2, y2 exclusive) of random area and aspect ratio.

    Area fraction is uniform in `area`, aspect (w / h) log-uniform in `ratio`. After `tries`
    boxes that do not fit, falls back to the largest centred box of the clamped aspect ratio.
    """
    total = height * width
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(tries):
        target = total * rng.uniform(area[0], area[1])
        aspect = math.exp(rng.uniform(log_lo, log_hi))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            x = int(rng.integers(0, width - w + 1))
            y = int(rng.integers(0, height - h + 1))
            return x, y, x + w, y + h
    aspect = min(max(width / height, ratio[0]), ratio[1])
    w, h = (width, int(round(width / aspect))) if width / height < aspect else (int(round(height * aspect)), height)
    w, h = min(w, width), min(h, height)
    x, y = (width - w) // 2, (height - h) // 2
    return x, y, x + w, y + h


def _blend(a: np.ndarray, b: np.ndarray | float, alpha: float) -> np.ndarray:
    """alpha * a + (1 - alpha) * b (alpha 1 keeps `a`)."""
    return alpha * a + (1.0 - alpha) * b


def photometric_distort(pixels: np.ndarray, rng: np.random.Generator, brightness: float,
                        contrast: float, saturation: float) -> np.ndarray:
    """Random brightness, contrast and saturation of float pixels `[H, W, 3]` in 0..255.

    Each factor is uniform in [1 - s, 1 + s] (s = 0 disables it); the three are applied in a
    random order. Returns float32 clipped to 0..255.
    """
    factors = [rng.uniform(1 - s, 1 + s) if s > 0 else 1.0 for s in (brightness, contrast, saturation)]
    for k in rng.permutation(3):
        f = factors[k]
        if f == 1.0:
            continue
        if k == 0:
            pixels = pixels * f
        elif k == 1:
            pixels = _blend(pixels, float((pixels @ LUMA).mean()), f)
        else:
            pixels = _blend(pixels, (pixels @ LUMA)[:, :, None], f)
    return np.clip(pixels, 0.0, 255.0).astype(np.float32)


def to_tensor(pixels: np.ndarray, mean: tuple[float, ...], std: tuple[float, ...]) -> Tensor:
    """Pixels `[H, W, 3]` in 0..255 -> normalised float32 `Tensor[3, H, W]`.

    In numpy, one float32 operation at a time (so the values are those of the same sums in
    torch, bit for bit): a loader worker converts thousands of small crops a second, and
    torch's per-call overhead made this 108 of the ~620 us per 48 px crop."""
    x = np.asarray(pixels, dtype=np.float32) / np.float32(255.0)
    x = (x - np.asarray(mean, dtype=np.float32)) / np.asarray(std, dtype=np.float32)
    return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))


@dataclass
class TrainTransform:
    """The paper's training augmentation; call as `transform(image, rng)`."""

    size: int  # side of the square network input
    mean: tuple[float, float, float]  # RGB mean on the 0..1 scale
    std: tuple[float, float, float]  # RGB std on the 0..1 scale
    area: tuple[float, float] = (0.08, 1.0)  # crop area as a fraction of the image
    ratio: tuple[float, float] = (3 / 4, 4 / 3)  # crop aspect ratio (w / h) range
    brightness: float = 0.4  # brightness factor range 1 +- this
    contrast: float = 0.4  # contrast factor range 1 +- this
    saturation: float = 0.4  # colour saturation factor range 1 +- this
    mirror: bool = True  # horizontal flip with probability 1/2

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> Tensor:
        """uint8 `[H, W, 3]` -> float32 `Tensor[3, size, size]`."""
        x1, y1, x2, y2 = random_crop_box(image.shape[0], image.shape[1], rng, self.area, self.ratio)
        interp = INTERPOLATIONS[int(rng.integers(len(INTERPOLATIONS)))]
        crop = np.ascontiguousarray(image[y1:y2, x1:x2])
        pixels = cv2.resize(crop, (self.size, self.size), interpolation=interp).astype(np.float32)
        pixels = photometric_distort(pixels, rng, self.brightness, self.contrast, self.saturation)
        if self.mirror and rng.random() < 0.5:
            pixels = pixels[:, ::-1]
        return to_tensor(pixels, self.mean, self.std)


@dataclass
class EvalTransform:
    """The single centre crop of `backbone.crops` (deterministic; the rng is ignored)."""

    size: int  # side of the square network input
    mean: tuple[float, float, float]  # RGB mean on the 0..1 scale
    std: tuple[float, float, float]  # RGB std on the 0..1 scale

    def __call__(self, image: np.ndarray, rng: np.random.Generator | None = None) -> Tensor:
        """uint8 `[H, W, 3]` -> float32 `Tensor[3, size, size]`."""
        crop = image_crops(image, 1, self.size)[0]  # uint8 [3, S, S]
        return to_tensor(crop.permute(1, 2, 0).numpy(), self.mean, self.std)
