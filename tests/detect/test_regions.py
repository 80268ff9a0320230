"""R-CNN region warp: hand-computed geometry and a cross-check against crop-pad-resize."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import roi_align

from detect.regions import dilate_boxes, scaled_context_pad, to_tensor, warp_regions


def test_context_pad_scales_with_crop():
    assert scaled_context_pad(16, 224) == 16
    assert scaled_context_pad(16, 64) == 5  # 16 * 64 / 224 = 4.57
    assert scaled_context_pad(16, 112) == 8
    assert scaled_context_pad(0, 224) == 0


def test_dilation_hand_computed():
    # At 224 with 16 px of context the box is scaled by 224/192 about its centre.
    boxes = torch.tensor([[0.0, 0.0, 192.0, 96.0], [100.0, 50.0, 100.0, 50.0]])
    d = dilate_boxes(boxes, 224, 16)
    torch.testing.assert_close(d[0], torch.tensor([-16.0, -8.0, 208.0, 104.0]))
    torch.testing.assert_close(d[1], torch.tensor([100.0, 50.0, 100.0, 50.0]))  # a point stays put
    with pytest.raises(ValueError):
        dilate_boxes(boxes, 32, 16)


def _crop_pad_resize(image: torch.Tensor, box: list[int], size: int) -> torch.Tensor:
    """Independent reference: zero-pad the image, slice the (integer) box, bilinear resize."""
    p = 64
    big = F.pad(image, (p, p, p, p))
    x1, y1, x2, y2 = box
    crop = big[:, y1 + p:y2 + p, x1 + p:x2 + p]
    return F.interpolate(crop[None], size=(size, size), mode="bilinear", align_corners=False)[0]


def test_warp_matches_crop_pad_resize():
    torch.manual_seed(0)
    image = torch.randn(3, 40, 50)
    size = 16  # pad = round(16 * 16 / 224) = 1: dilation 16/14, so boxes 28 px wide become 32
    boxes = torch.tensor([[10.0, 5.0, 38.0, 33.0],  # inside
                          [-7.0, -7.0, 21.0, 21.0],  # over the top-left corner
                          [30.0, 20.0, 58.0, 34.0]])  # over the right edge, 2:1 aspect
    out = warp_regions(image, boxes, crop_size=size, context_pad=16)
    assert out.shape == (3, 3, size, size)
    dilated = dilate_boxes(boxes, size, 1)
    torch.testing.assert_close(dilated[1], torch.tensor([-9.0, -9.0, 23.0, 23.0]))
    for i, box in enumerate(dilated.round().long().tolist()):
        torch.testing.assert_close(out[i], _crop_pad_resize(image, box, size), atol=5e-5, rtol=0)


def test_warp_equals_roi_align_on_the_zero_padded_image():
    """The grid_sample warp against torchvision's roi_align (one sample per pixel, aligned) on
    the image with a 1 px ring of zeros: the same bilinear resize up to float rounding."""
    g = torch.Generator().manual_seed(1)
    image = torch.randn(3, 375, 500, generator=g)
    xy = torch.rand(64, 2, generator=g) * torch.tensor([560.0, 430.0]) - 30  # some boxes leave the image
    boxes = torch.cat([xy, xy + 4 + torch.rand(64, 2, generator=g) * 300], 1)
    padded = F.pad(image[None], (1, 1, 1, 1))
    rois = [dilate_boxes(boxes, 56, scaled_context_pad(16, 56)) + 1.0]
    out = warp_regions(image, boxes, crop_size=56, context_pad=16)
    expected = roi_align(padded, rois, output_size=(56, 56), spatial_scale=1.0, sampling_ratio=1, aligned=True)
    torch.testing.assert_close(out, expected, atol=1e-3, rtol=0)
    assert (out - expected).abs().mean() < 5e-5  # coordinates rounded differently: ~1e-5 on N(0, 1) noise
    # sampling_ratio 2 (four samples averaged per output pixel) is roi_align itself
    expected = roi_align(padded, rois, output_size=(56, 56), spatial_scale=1.0, sampling_ratio=2, aligned=True)
    torch.testing.assert_close(warp_regions(image, boxes, 56, 16, sampling_ratio=2), expected)


def test_outside_is_mean_and_context_visible():
    image = torch.ones(3, 20, 20)
    out = warp_regions(image, torch.tensor([[100.0, 100.0, 120.0, 120.0]]), 16, 16)
    assert out.abs().max() == 0  # entirely outside the image: all mean (0)
    # A box covering the whole image: the central part is image (1), the 1 px context ring is
    # mostly outside (near 0).
    out = warp_regions(image, torch.tensor([[0.0, 0.0, 20.0, 20.0]]), 16, 16)[0]
    assert torch.allclose(out[:, 2:-2, 2:-2], torch.ones(3, 12, 12))
    assert out[:, 0, :].max() < 0.5 and out[:, :, -1].max() < 0.5


def test_empty_boxes_and_dtype():
    out = warp_regions(torch.zeros(3, 8, 8), torch.zeros(0, 4), 32)
    assert out.shape == (0, 3, 32, 32)


def test_to_tensor_normalises():
    img = np.zeros((2, 3, 3), np.uint8)
    img[..., 0] = 255
    x = to_tensor(img, mean=(0.5, 0.0, 0.0), std=(0.5, 1.0, 1.0))
    assert x.shape == (3, 2, 3) and x.dtype == torch.float32
    assert torch.allclose(x[0], torch.ones(2, 3)) and torch.allclose(x[1], torch.zeros(2, 3))
