import math
from collections import Counter

import numpy as np
import pytest
import torch

from backbone import transforms
from backbone.transforms import (INTERPOLATIONS, EvalTransform, TrainTransform, photometric_distort,
                                 random_crop_box, to_tensor)

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def test_random_crop_box_respects_area_and_aspect():
    rng = np.random.default_rng(0)
    for _ in range(500):
        x1, y1, x2, y2 = random_crop_box(120, 200, rng, (0.08, 1.0), (3 / 4, 4 / 3))
        w, h = x2 - x1, y2 - y1
        assert 0 <= x1 < x2 <= 200 and 0 <= y1 < y2 <= 120
        assert 0.08 * 0.9 <= w * h / (120 * 200) <= 1.0
        assert 3 / 4 - 0.05 <= w / h <= 4 / 3 + 0.05  # rounding to whole pixels


def test_random_crop_box_fallback_is_centred_with_clamped_aspect():
    # No tries: a 100 x 400 (h x w) image gives the centred box of aspect 4/3, full height.
    box = random_crop_box(100, 400, np.random.default_rng(0), tries=0)
    assert box == (133, 0, 266, 100)
    # A tall image: full width, height = width / (3/4).
    assert random_crop_box(400, 90, np.random.default_rng(0), tries=0) == (0, 140, 90, 260)


def test_interpolations_are_drawn_with_equal_probability(monkeypatch):
    seen = Counter()
    real_resize = transforms.cv2.resize

    def spy(img, size, interpolation):
        seen[interpolation] += 1
        return real_resize(img, size, interpolation=interpolation)

    monkeypatch.setattr(transforms.cv2, "resize", spy)
    tf = TrainTransform(16, MEAN, STD)
    image = np.zeros((24, 24, 3), np.uint8)
    for i in range(800):
        tf(image, np.random.default_rng(i))
    assert set(seen) == set(INTERPOLATIONS)
    assert all(150 <= c <= 250 for c in seen.values()), seen  # 200 expected each


def test_brightness_multiplies_by_the_drawn_factor():
    pixels = np.full((4, 4, 3), 100.0, np.float32)
    out = photometric_distort(pixels, np.random.default_rng(3), 0.5, 0.0, 0.0)
    factor = np.random.default_rng(3).uniform(0.5, 1.5)  # the first draw is the brightness factor
    np.testing.assert_allclose(out, 100.0 * factor, rtol=1e-6)


def test_contrast_keeps_mean_grey_and_saturation_keeps_grey_images():
    rng = np.random.default_rng(1)
    pixels = rng.uniform(60, 190, (8, 8, 3)).astype(np.float32)
    out = photometric_distort(pixels, np.random.default_rng(5), 0.0, 0.3, 0.0)
    luma = np.array([0.299, 0.587, 0.114])
    assert math.isclose((out @ luma).mean(), (pixels @ luma).mean(), rel_tol=1e-4)
    grey = np.repeat(rng.uniform(0, 255, (8, 8, 1)), 3, axis=2).astype(np.float32)
    np.testing.assert_allclose(photometric_distort(grey, np.random.default_rng(2), 0, 0, 0.4), grey, atol=1e-3)


def test_train_transform_is_a_function_of_the_rng_seed_and_mirrors():
    image = np.random.default_rng(0).integers(0, 256, (20, 20, 3), dtype=np.uint8)
    tf = TrainTransform(20, MEAN, STD)
    a, b = tf(image, np.random.default_rng(7)), tf(image, np.random.default_rng(7))
    assert a.shape == (3, 20, 20) and a.dtype == torch.float32 and torch.equal(a, b)
    assert not torch.equal(a, tf(image, np.random.default_rng(8)))
    # Whole-image crops, no photometric change: the output is the image or its mirror.
    plain = TrainTransform(20, MEAN, STD, area=(1.0, 1.0), ratio=(1.0, 1.0), brightness=0,
                           contrast=0, saturation=0)
    straight, mirrored = to_tensor(image.astype(np.float32), MEAN, STD), to_tensor(image[:, ::-1].astype(np.float32), MEAN, STD)
    kinds = set()
    for seed in range(20):
        out = plain(image, np.random.default_rng(seed))
        kinds.add("straight" if torch.allclose(out, straight) else "mirror" if torch.allclose(out, mirrored) else "?")
    assert kinds == {"straight", "mirror"}


def test_eval_transform_is_the_centre_crop_of_the_one_crop_protocol():
    # S = 32: shorter side -> round(256 * 32 / 224) = 37, so a 37 x 37 image is cut, not resized.
    image = np.random.default_rng(0).integers(0, 256, (37, 37, 3), dtype=np.uint8)
    out = EvalTransform(32, MEAN, STD)(image)
    expected = (torch.from_numpy(image[2:34, 2:34].astype(np.float32)).permute(2, 0, 1) / 255 - 0.5) / 0.25
    assert out.shape == (3, 32, 32)
    torch.testing.assert_close(out, expected)


@pytest.mark.parametrize("shape", [(5, 300, 3), (300, 5, 3)])
def test_extreme_aspect_images_still_give_the_input_size(shape):
    image = np.zeros(shape, np.uint8)
    assert TrainTransform(16, MEAN, STD)(image, np.random.default_rng(0)).shape == (3, 16, 16)


def test_to_tensor_equals_the_torch_formula_bit_for_bit():
    """The numpy conversion computes (x / 255 - mean) / std in float32 as torch does."""
    rng = np.random.default_rng(0)
    for pixels in ((rng.random((57, 43, 3)) * 255).astype(np.uint8), (rng.random((9, 31, 3)) * 255).astype(np.float32)):
        x = torch.from_numpy(pixels.astype(np.float32)).permute(2, 0, 1) / 255.0
        expected = (x - torch.tensor(MEAN).view(3, 1, 1)) / torch.tensor(STD).view(3, 1, 1)
        out = to_tensor(pixels, MEAN, STD)
        assert out.dtype == torch.float32 and out.is_contiguous()
        assert torch.equal(out, expected)
