"""Region crops: R-CNN's "warp" of each proposal box to the network's square input.

Shapes: R regions, S crop side, H x W image.

Each box is dilated about its centre so that, once warped to S x S, exactly `p` pixels of
image context surround the original box (R-CNN's context padding, p = 16 at S = 224 and
scaled with S). The dilated box is then resized to S x S whatever its aspect ratio. Pixels
outside the image take the mean, which is 0 after mean subtraction. The crop is a bilinear
resize (half-pixel centres, as cv2.resize and `F.interpolate(align_corners=False)`) of the
zero-padded image: all R crops come from one batched `F.grid_sample` call on the image's
device, one bilinear sample per output pixel. That is `torchvision.ops.roi_align` with
sampling_ratio 1 and aligned=True up to float rounding, and faster on the CPU (the crops of
1,200 regions at 224 in `tools/bench/one_image.py`: 0.27 s, against 1.03 s with roi_align
in the run just before the change). sampling_ratio > 1 (several
samples averaged per output pixel) goes through roi_align.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import roi_align

REFERENCE_CROP = 224  # the crop size at which `context_pad` is given (R-CNN: 16 px at 227/224)


def scaled_context_pad(context_pad: int, crop_size: int) -> int:
    """Context pixels at `crop_size`, given `context_pad` pixels at 224 (16 -> 16 at 224, 5 at 64)."""
    return int(round(context_pad * crop_size / REFERENCE_CROP))


def dilate_boxes(boxes: Tensor, crop_size: int, pad: int) -> Tensor:
    """Grow boxes about their centres by crop/(crop - 2*pad), so `pad` px of context surround them.

    boxes (Tensor[R, 4]) xyxy -> Tensor[R, 4] xyxy, the region that is warped to crop x crop.
    """
    if 2 * pad >= crop_size:
        raise ValueError(f"context pad {pad} leaves no room in a {crop_size} px crop")
    scale = crop_size / (crop_size - 2 * pad)
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2
    half = (boxes[:, 2:] - boxes[:, :2]) * (scale / 2)
    return torch.cat([centre - half, centre + half], dim=1)


def warp_regions(image: Tensor, boxes: Tensor, crop_size: int = 224, context_pad: int = 16,
                 sampling_ratio: int = 1) -> Tensor:
    """R-CNN warped crops of `boxes` from one normalised image.

    image (Tensor[3, H, W]): float, mean-subtracted (0 == the mean colour), on any device.
    boxes (Tensor[R, 4]): xyxy absolute pixels; may extend beyond the image.
    context_pad: context pixels at a 224 crop; scaled to `crop_size` (see `scaled_context_pad`).
    sampling_ratio: bilinear samples per output pixel and axis (1 = a plain bilinear resize).
    Returns Tensor[R, 3, crop_size, crop_size] on the image's device, dtype of the image.
    """
    if boxes.numel() == 0:
        return image.new_zeros((0, image.shape[0], crop_size, crop_size))
    pad = scaled_context_pad(context_pad, crop_size)
    # non_blocking: a blocking copy to a GPU first waits for all the work queued on it
    rois = dilate_boxes(boxes.to(device=image.device, dtype=torch.float32, non_blocking=True), crop_size, pad)
    if sampling_ratio == 1:
        return _bilinear_warp(image, rois, crop_size)
    # roi_align replicates the edge pixel for samples up to 1 px outside the image; a 1 px ring
    # of zeros makes every outside sample blend towards the mean, as an infinitely padded image.
    padded = F.pad(image.unsqueeze(0), (1, 1, 1, 1))
    return roi_align(padded, [rois + 1.0], output_size=(crop_size, crop_size), spatial_scale=1.0,
                     sampling_ratio=sampling_ratio, aligned=True)


def _bilinear_warp(image: Tensor, rois: Tensor, size: int) -> Tensor:
    """Each of `rois` (Tensor[R, 4] xyxy, continuous pixel coordinates) resized to size x size
    by one bilinear sample at each output pixel's centre; zeros outside the image."""
    height, width = image.shape[-2:]
    t = (torch.arange(size, device=rois.device, dtype=torch.float32) + 0.5) / size  # bin centres
    # Pixel i covers [i, i + 1); grid_sample (align_corners=False) maps -1..1 onto [0, W].
    xs = (rois[:, 0:1] + t * (rois[:, 2:3] - rois[:, 0:1])) * (2.0 / width) - 1.0
    ys = (rois[:, 1:2] + t * (rois[:, 3:4] - rois[:, 1:2])) * (2.0 / height) - 1.0
    r = len(rois)
    grid = torch.stack([xs[:, None, :].expand(r, size, size), ys[:, :, None].expand(r, size, size)], dim=-1)
    source = image.unsqueeze(0).expand(r, -1, -1, -1)  # a view: the image is not copied
    return F.grid_sample(source, grid.to(image.dtype), mode="bilinear", padding_mode="zeros",
                         align_corners=False)


def to_tensor(image: np.ndarray, mean: Sequence[float], std: Sequence[float],
              device: str | torch.device = "cpu") -> Tensor:
    """uint8 RGB [H, W, 3] -> float Tensor[3, H, W] on `device`, normalised (x/255 - mean)/std.

    mean, std: per-channel RGB on the 0..1 scale (a model's `ModelMeta.mean` / `.std`).
    The uint8 image travels to the device first (4x fewer bytes than float), without waiting for
    the work queued on a GPU (non_blocking; the host memory is staged before the call returns).
    """
    x = torch.from_numpy(np.ascontiguousarray(image)).to(device, non_blocking=True).permute(2, 0, 1).float()
    m = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1).to(x.device, non_blocking=True) * 255.0
    s = torch.tensor(std, dtype=torch.float32).view(3, 1, 1).to(x.device, non_blocking=True) * 255.0
    return (x - m) / s
