"""Test-time crops: the 144 crop boxes of a 300 x 400 image worked out by hand."""
import numpy as np
import pytest
import torch

from backbone.crops import (Crop, crop_image, crop_specs, image_crops, multi_crops, normalize,
                            one_crop, resize_shorter, scaled_length, ten_crops, three_squares)

# A 300 x 400 (H x W) landscape image at S = 224. Per scale: the resized shape (400 * s / 300
# rounded), the x of the left / centre / right squares (0, (W - s) // 2, W - s), the offset of
# the far corner crops (s - 224) and of the centre crop ((s - 224) // 2) inside a square.
BY_HAND = {
    256: ((256, 341), (0, 42, 85), 32, 16),
    288: ((288, 384), (0, 48, 96), 64, 32),
    320: ((320, 427), (0, 53, 107), 96, 48),
    352: ((352, 469), (0, 58, 117), 128, 64),
}


def expected_144():
    crops = []
    for scale, (shape, starts, far, mid) in BY_HAND.items():
        for x0 in starts:
            boxes = [(x0, 0, x0 + 224, 224), (x0 + far, 0, x0 + far + 224, 224),
                     (x0, far, x0 + 224, far + 224), (x0 + far, far, x0 + far + 224, far + 224),
                     (x0 + mid, mid, x0 + mid + 224, mid + 224), (x0, 0, x0 + scale, scale)]
            crops += [Crop(shape, b, flip) for flip in (False, True) for b in boxes]
    return crops


def test_144_crops_by_hand():
    crops = multi_crops(300, 400, 224)
    assert len(crops) == 144 == len(set(crops))
    assert crops == expected_144()
    assert crops[0] == Crop((256, 341), (0, 0, 224, 224), False)
    assert crops[17] == Crop((256, 341), (42, 0, 298, 256), False)  # centre square, whole
    assert crops[-1] == Crop((352, 469), (117, 0, 469, 352), True)  # right square, whole, mirrored


def test_portrait_image_uses_top_centre_bottom_squares():
    portrait = multi_crops(400, 300, 224)
    swapped = [Crop((w, h), (y1, x1, y2, x2), f) for (h, w), (x1, y1, x2, y2), f in expected_144()]
    assert set(portrait) == set(swapped)  # the same crops transposed (the corner order differs)
    assert portrait[17] == Crop((341, 256), (0, 42, 256, 298), False)  # centre square, whole
    assert three_squares(10, 4) == [(0, 0, 4, 4), (0, 3, 4, 7), (0, 6, 4, 10)]


def test_one_and_ten_crops_by_hand():
    assert one_crop(300, 400, 224) == [Crop((256, 341), (58, 16, 282, 240), False)]
    ten = ten_crops(300, 400, 224)
    boxes = [(0, 0, 224, 224), (117, 0, 341, 224), (0, 32, 224, 256), (117, 32, 341, 256),
             (58, 16, 282, 240)]
    assert ten == [Crop((256, 341), b, f) for f in (False, True) for b in boxes]
    with pytest.raises(ValueError):
        crop_specs(300, 400, 5, 224)


def test_lengths_scale_with_the_input_size():
    assert [scaled_length(s, 32) for s in (256, 288, 320, 352)] == [37, 41, 46, 50]
    assert resize_shorter(28, 28, 32) == (32, 32)
    assert one_crop(28, 28, 28) == [Crop((32, 32), (2, 2, 30, 30), False)]
    crops = crop_specs(50, 20, 144, 32)
    assert len(crops) == 144
    assert crops[0].resize == (92, 37)  # 50 * 37 / 20 = 92.5, rounded half to even
    assert all(c.box[2] <= c.resize[1] and c.box[3] <= c.resize[0] for c in crops)


def test_crop_pixels_are_the_boxes_of_the_image():
    # 256 x 341 is already the 256-scale shape: the 1 and 10 crops are plain slices of it.
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (256, 341, 3), dtype=np.uint8)
    crops = ten_crops(256, 341, 224)
    out = crop_image(image, crops, 224)
    assert out.shape == (10, 3, 224, 224) and out.dtype == torch.uint8
    for tensor, (_, (x1, y1, x2, y2), flip) in zip(out, crops):
        patch = image[y1:y2, x1:x2]
        patch = patch[:, ::-1] if flip else patch
        assert np.array_equal(tensor.permute(1, 2, 0).numpy(), patch)


def test_whole_square_is_resized_and_constant_colour_survives():
    image = np.full((60, 90, 3), (10, 200, 30), dtype=np.uint8)
    out = image_crops(image, 144, 32)
    assert out.shape == (144, 3, 32, 32)
    assert torch.equal(out, torch.tensor([10, 200, 30], dtype=torch.uint8).view(1, 3, 1, 1).expand_as(out))


def test_normalize():
    x = torch.tensor([0, 255, 51], dtype=torch.uint8).view(1, 3, 1, 1)
    y = normalize(x, (0.0, 0.5, 0.2), (1.0, 0.5, 0.1))
    assert torch.allclose(y.flatten(), torch.tensor([0.0, 1.0, 0.0]), atol=1e-6)
