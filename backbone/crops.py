"""Test-time crops of the paper (section 7): 1, 10 or 144 crops per image.

Every scheme first resizes the whole image so that its shorter side has a given length
(aspect ratio kept), then cuts integer boxes out of the resized image, each box resized to
`S x S` (S = the model's input size) and possibly mirrored. A crop is therefore a pure
description, `Crop(resize, box, flip)`, that tests can check by hand; `crop_image` turns an
image and a list of them into one tensor.

Lengths are given for S = 224, as in the paper, and scaled by S / 224 (rounded) otherwise:

- 1 crop:   shorter side -> 256, the centre S x S crop (the usual single-crop protocol).
- 10 crops: shorter side -> 256, the 4 corner and the centre S x S crops of the whole
  resized image, then the same 5 mirrored.
- 144 crops: shorter side -> 256, 288, 320 and 352; in each resized image the left, centre
  and right squares (top, centre, bottom for a portrait image); in each square the 4 corner
  and the centre S x S crops and the whole square resized to S x S; each of these 6 also
  mirrored: 4 x 3 x 6 x 2 = 144.

Conventions: boxes are `(x1, y1, x2, y2)` integer pixels of the resized image with x2, y2
exclusive (width = x2 - x1); a centred box starts at `(L - S) // 2` (the extra pixel of an
odd margin goes to the right / bottom). Order: scale, square, mirror, then the 6 crops in
the order top-left, top-right, bottom-left, bottom-right, centre, whole square.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

PAPER_SIZE = 224  # the input size the paper's lengths refer to
SINGLE_SCALE = 256  # shorter side for the 1 and 10 crop schemes (at S = 224)
MULTI_SCALES = (256, 288, 320, 352)  # shorter sides for the 144 crop scheme (at S = 224)
CROP_COUNTS = (1, 10, 144)

Box = tuple[int, int, int, int]


class Crop(NamedTuple):
    resize: tuple[int, int]  # (height, width) the whole image is resized to first
    box: Box  # (x1, y1, x2, y2) in the resized image, x2 / y2 exclusive
    flip: bool  # mirrored left-right after cropping


def scaled_length(length_at_224: int, input_size: int) -> int:
    """A paper length (given for 224 inputs) for a model of another input size."""
    return int(round(length_at_224 * input_size / PAPER_SIZE))


def resize_shorter(height: int, width: int, shorter: int) -> tuple[int, int]:
    """(height, width) after resizing so the shorter side is `shorter`, aspect kept (rounded)."""
    if height <= width:
        return shorter, max(shorter, int(round(width * shorter / height)))
    return max(shorter, int(round(height * shorter / width))), shorter


def five_boxes(region: Box, size: int) -> list[Box]:
    """The 4 corner and the centre `size x size` boxes of a region (tl, tr, bl, br, centre)."""
    x1, y1, x2, y2 = region
    right, bottom = x2 - size, y2 - size
    cx, cy = x1 + (x2 - x1 - size) // 2, y1 + (y2 - y1 - size) // 2
    corners = [(x1, y1), (right, y1), (x1, bottom), (right, bottom), (cx, cy)]
    return [(x, y, x + size, y + size) for x, y in corners]


def three_squares(height: int, width: int) -> list[Box]:
    """Left, centre, right squares of a landscape image (top, centre, bottom of a portrait one)."""
    side = min(height, width)
    if width >= height:
        starts = [0, (width - side) // 2, width - side]
        return [(x, 0, x + side, side) for x in starts]
    starts = [0, (height - side) // 2, height - side]
    return [(0, y, side, y + side) for y in starts]


def one_crop(height: int, width: int, input_size: int) -> list[Crop]:
    """The centre crop after resizing the shorter side to 256 (scaled by input_size / 224)."""
    shape = resize_shorter(height, width, scaled_length(SINGLE_SCALE, input_size))
    return [Crop(shape, five_boxes((0, 0, shape[1], shape[0]), input_size)[4], False)]


def ten_crops(height: int, width: int, input_size: int) -> list[Crop]:
    """4 corners + centre of the image resized to shorter side 256 (scaled), then their mirrors."""
    shape = resize_shorter(height, width, scaled_length(SINGLE_SCALE, input_size))
    boxes = five_boxes((0, 0, shape[1], shape[0]), input_size)
    return [Crop(shape, b, flip) for flip in (False, True) for b in boxes]


def multi_crops(height: int, width: int, input_size: int) -> list[Crop]:
    """The paper's 144 crops: 4 scales x 3 squares x 2 mirrors x 6 crops (see module doc)."""
    crops = []
    for scale in MULTI_SCALES:
        shape = resize_shorter(height, width, scaled_length(scale, input_size))
        for square in three_squares(*shape):
            boxes = five_boxes(square, input_size) + [square]
            crops += [Crop(shape, b, flip) for flip in (False, True) for b in boxes]
    return crops


def crop_specs(height: int, width: int, n_crops: int, input_size: int) -> list[Crop]:
    """The crops of the 1, 10 or 144 crop scheme for an image of `height x width`."""
    schemes = {1: one_crop, 10: ten_crops, 144: multi_crops}
    if n_crops not in schemes:
        raise ValueError(f"crops must be one of {CROP_COUNTS}, got {n_crops}")
    return schemes[n_crops](height, width, input_size)


def _resize(image: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear resize of `[3, H, W]` float pixels, antialiased when shrinking."""
    if tuple(image.shape[-2:]) == size:
        return image
    return F.interpolate(image[None], size=size, mode="bilinear", align_corners=False,
                         antialias=True)[0]


def crop_image(image: np.ndarray, crops: list[Crop], input_size: int) -> Tensor:
    """Cut `crops` out of an RGB image `[H, W, 3]` uint8: `Tensor[n_crops, 3, S, S]` uint8."""
    pixels = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float()
    resized: dict[tuple[int, int], Tensor] = {}
    out = torch.empty(len(crops), 3, input_size, input_size, dtype=torch.uint8)
    for i, (shape, (x1, y1, x2, y2), flip) in enumerate(crops):
        if shape not in resized:
            resized[shape] = _resize(pixels, shape)
        patch = _resize(resized[shape][:, y1:y2, x1:x2], (input_size, input_size))
        if flip:
            patch = patch.flip(-1)
        out[i] = patch.round().clamp_(0, 255).to(torch.uint8)
    return out


def image_crops(image: np.ndarray, n_crops: int, input_size: int) -> Tensor:
    """One image `[H, W, 3]` uint8 as its 1, 10 or 144 crops: `Tensor[n_crops, 3, S, S]` uint8."""
    return crop_image(image, crop_specs(image.shape[0], image.shape[1], n_crops, input_size),
                      input_size)


def normalize(crops: Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> Tensor:
    """uint8 crops `[N, 3, S, S]` as model input: float `(x / 255 - mean) / std`."""
    m = torch.tensor(mean, device=crops.device).view(1, 3, 1, 1)
    s = torch.tensor(std, device=crops.device).view(1, 3, 1, 1)
    return (crops.float() / 255.0 - m) / s
