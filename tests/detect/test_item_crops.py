"""Garment crops for the demo classifier (detect/item_crops.py): geometry, reproducibility, layout."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from backbone.data import scan_image_folder
from detect import item_crops as ic

FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
needs_fmnist = pytest.mark.skipif(not (FASHION_MNIST / "train-images-idx3-ubyte.gz").is_file(),
                                  reason="Fashion-MNIST IDX files (Debian dataset-fashion-mnist) not installed")


def test_cut_region_leaves_the_context_the_classifier_centre_crop_expects():
    # A 60 px white box on black, cut to 64 px: the box fills 192/256 of the side = 48 px,
    # centred (pixels 8..55); the classifier's centre crop (7/8) then shows it at 48/56 = 192/224.
    image = np.zeros((200, 300, 3), np.uint8)
    image[50:110, 100:160] = 255
    out = ic.cut_region(image, np.array([100, 50, 160, 110], np.float32), 64)
    assert out.shape == (64, 64, 3)
    inside = out[:, :, 0] > 127
    rows, cols = np.nonzero(inside)
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (8, 55, 8, 55)


def test_cut_region_outside_the_image_is_black():
    image = np.full((100, 100, 3), 200, np.uint8)
    out = ic.cut_region(image, np.array([0, 0, 60, 60], np.float32), 32)  # dilated box starts at -10
    assert out[0, 0].max() == 0 and out[31, 31].min() == 200


def test_paste_box_is_the_opaque_item():
    item = np.zeros((28, 28), np.uint8)
    item[10:18, 6:22] = 255
    image, box = ic.paste(np.full((300, 300, 3), 128, np.uint8), item, np.random.default_rng(0))
    x1, y1, x2, y2 = box.astype(int)
    changed = np.abs(image.astype(int) - 128).max(axis=2) >= 15
    assert changed[y1:y2, x1:x2].all()          # the item's opaque block is painted
    assert 1.4 <= (x2 - x1) / (y2 - y1) <= 2.8  # a 16 x 8 block, stretched by up to 15% each way
    assert 23 <= max(x2 - x1, y2 - y1) <= 161   # the scenes' item sizes


def test_background_boxes_stay_clear_of_the_item():
    rng = np.random.default_rng(0)
    item = np.array([100, 80, 180, 200], np.float32)
    boxes = [ic.background_box(item, 400, 350, rng) for _ in range(200)]
    assert all(ic.scenes.box_iou_np(b, item) < 0.3 for b in boxes)
    assert all(0 <= b[0] < b[2] <= 400 and 0 <= b[1] < b[3] <= 350 for b in boxes)
    sides = [max(b[2] - b[0], b[3] - b[1]) for b in boxes]
    assert min(sides) >= 24 - 1e-3 and max(sides) <= 160 + 1e-3  # the items' size range


@needs_fmnist
def test_background_crops_get_their_own_class(tmp_path):
    ic.make_item_crops(tmp_path / "bg", {"train": 10, "val": 5}, size=32, background=0.4, progress=False)
    classes, samples = scan_image_folder(tmp_path / "bg" / "train")
    assert classes[0] == "__background__" and len(samples) == 14
    assert sum(k == 0 for _, k in samples) == 4 and len(list((tmp_path / "bg" / "val" / "__background__").iterdir())) == 2


@needs_fmnist
def test_crops_are_reproducible_class_folders_whatever_the_workers(tmp_path):
    one = ic.make_item_crops(tmp_path / "one", {"train": 12, "val": 4}, size=40, progress=False)
    two = ic.make_item_crops(tmp_path / "two", {"train": 12, "val": 4}, size=40, workers=2, progress=False)
    assert one == two == {"train": 12, "val": 4}
    classes, samples = scan_image_folder(tmp_path / "one" / "train")
    assert classes == sorted(ic.CLASSES) and len(samples) == 12
    files = sorted(p.relative_to(tmp_path / "one") for p in (tmp_path / "one").rglob("*.png"))
    assert files == sorted(p.relative_to(tmp_path / "two") for p in (tmp_path / "two").rglob("*.png"))
    assert all((tmp_path / "one" / f).read_bytes() == (tmp_path / "two" / f).read_bytes() for f in files)
    photos, fm = ic.scenes.load_photos(), {"train": ic.scenes.load_fashion_mnist(FASHION_MNIST, "train")}
    pixels, label = ic.make_crop("val", 3, 0, 40, photos, fm)
    assert pixels.shape == (40, 40, 3) and (tmp_path / "one" / "val" / ic.CLASSES[label] / "000003.png").is_file()
    with pytest.raises(SystemExit, match="test items"):
        ic.make_item_crops(tmp_path / "bad", {"test": 1}, progress=False)
