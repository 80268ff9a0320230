"""The demo scenes (detect/scenes.py): reproducible, exact boxes, disjoint splits, VOC round trip."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.ops import box_iou

from detect import scenes as ms
from detect.data import load_dataset

ROOT = Path(__file__).resolve().parents[2]
FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
needs_fmnist = pytest.mark.skipif(not (FASHION_MNIST / "t10k-images-idx3-ubyte.gz").is_file(),
                                  reason="Fashion-MNIST IDX files (Debian dataset-fashion-mnist) not installed")


@pytest.fixture(scope="module")
def sources():
    photos = ms.load_photos()
    fmnist = {part: ms.load_fashion_mnist(FASHION_MNIST, part) for part in ("train", "t10k")}
    return photos, fmnist


def _square_item() -> np.ndarray:
    """A 28x28 item: an 8-row x 16-column block of full intensity at rows 10..17, cols 6..21."""
    item = np.zeros((28, 28), np.uint8)
    item[10:18, 6:22] = 255
    return item


def test_render_item_box_is_exact():
    # Opaque block 16 wide, 8 high; longer side 64 -> scale 4; the 1 px margin becomes 4 px.
    alpha, shade = ms.render_item(_square_item(), 64.0, 1.0)
    assert alpha.shape == (40, 72)
    assert ms.opaque_box(alpha >= 0.5).tolist() == [4.0, 4.0, 68.0, 36.0]
    assert shade.max() <= 1.0 and alpha.min() >= 0.0


def test_item_alpha_fills_holes_and_keeps_background_transparent():
    item = np.zeros((28, 28), np.uint8)
    item[5:20, 5:20] = 200
    item[9:15, 9:15] = 3          # a dark patch enclosed by the garment
    alpha, _ = ms.item_alpha(item)
    assert alpha[0, 0] == 0.0 and alpha[27, 27] == 0.0
    assert (alpha[9:15, 9:15] == 1.0).all()


def test_compose_on_flat_background_changes_exactly_the_owned_pixels():
    rng = np.random.default_rng(3)
    background = np.full((200, 240, 3), 128, np.uint8)
    image, owner, kept = ms.compose_scene(background, [_square_item()], [0], rng)
    assert kept == [0]
    box = ms.opaque_box(owner == 0)
    w, h = box[2] - box[0], box[3] - box[1]
    assert max(w, h) >= 23 and max(w, h) <= 161
    # Owned pixels (alpha >= 0.5) are moved by at least half the chosen contrast from grey...
    diff = np.abs(image.astype(int) - 128).max(axis=2)
    assert diff[owner == 0].min() >= 15
    # ...and the photograph is untouched outside the box but for the soft edge (alpha < 0.5),
    # at most half a source pixel wide: <= 5 px at the largest scale, 160 px / 16 px.
    x1, y1, x2, y2 = box.astype(int)
    outside = np.ones(owner.shape, bool)
    outside[max(y1 - 6, 0):y2 + 6, max(x1 - 6, 0):x2 + 6] = False
    assert (diff[outside] == 0).all()


@needs_fmnist
def test_scene_is_reproducible_from_the_seed(sources):
    photos, fmnist = sources
    a = ms.make_scene("train", 7, 0, photos, fmnist)
    b = ms.make_scene("train", 7, 0, photos, fmnist)
    c = ms.make_scene("train", 7, 1, photos, fmnist)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.boxes, b.boxes)
    assert np.array_equal(a.labels, b.labels)
    assert not np.array_equal(a.items, c.items)


@needs_fmnist
def test_boxes_inside_image_and_tight_around_each_item(sources):
    photos, fmnist = sources
    for index in range(12):
        scene = ms.make_scene("test", index, 0, photos, fmnist)
        h, w = scene.image.shape[:2]
        assert 320 <= h <= 500 and 320 <= w <= 500
        assert 1 <= len(scene.boxes) <= 6
        assert (scene.boxes[:, :2] >= 0).all() and (scene.boxes[:, 2] <= w).all() and (scene.boxes[:, 3] <= h).all()
        assert ((scene.boxes[:, 2:] - scene.boxes[:, :2]) >= 8).all()
        assert ((scene.labels >= 1) & (scene.labels <= 10)).all()
        for j, box in enumerate(scene.boxes):
            ys, xs = np.nonzero(scene.owner == j)
            assert box.tolist() == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
        labels_from_items = fmnist["t10k"][1][scene.items] + 1
        assert np.array_equal(scene.labels, labels_from_items)


@needs_fmnist
def test_occlusion_is_limited(sources):
    photos, fmnist = sources
    for index in range(20):
        boxes = torch.from_numpy(ms.make_scene("val", index, 0, photos, fmnist).boxes)
        iou = box_iou(boxes, boxes).fill_diagonal_(0)
        assert iou.max() <= ms.MAX_IOU + 1e-6


def test_splits_use_disjoint_items():
    train = np.concatenate([ms.item_slots(0, "train", i) for i in range(300)])
    val = np.concatenate([ms.item_slots(0, "val", i) for i in range(300)])
    test = np.concatenate([ms.item_slots(0, "test", i) for i in range(300)])
    assert train.max() < 50000 and val.min() >= 50000 and val.max() < 60000
    assert test.max() < 10000 and ms.ITEM_SOURCES["test"][0] == "t10k"
    assert ms.ITEM_SOURCES["train"][0] == ms.ITEM_SOURCES["val"][0] == "train"
    for slots in (train, val, test):  # no item twice within a split either
        assert len(np.unique(slots)) == len(slots)


@pytest.mark.parametrize("shape", [(512, 512), (300, 451), (427, 640), (1411, 1411), (303, 384)])
def test_background_regions_are_disjoint(shape):
    h, w = shape
    for photo_index in range(4):
        cover = np.zeros((h, w), np.int32)
        for split in ms.SPLITS:
            x1, y1, x2, y2 = ms.split_region(h, w, photo_index, split)
            assert 0 <= x1 < x2 <= w and 0 <= y1 < y2 <= h
            cover[y1:y2, x1:x2] += 1
        assert cover.max() == 1


@needs_fmnist
def test_written_voc_round_trip(tmp_path):
    keys = ms.make_scenes(tmp_path, {"train": 2, "val": 1, "test": 2}, seed=5, progress=False)
    assert keys == {"train": ["train_00000", "train_00001"], "val": ["val_00000"],
                    "test": ["test_00000", "test_00001"]}
    photos = ms.load_photos()
    fmnist = {part: ms.load_fashion_mnist(FASHION_MNIST, part) for part in ("train", "t10k")}
    for split, split_keys in keys.items():
        data = load_dataset(tmp_path, split)
        assert data.classes == ms.CLASSES
        assert [r.key for r in data.images] == split_keys
        for index, record in enumerate(data.images):
            scene = ms.make_scene(split, index, 5, photos, fmnist)
            assert torch.equal(record.boxes, torch.from_numpy(scene.boxes))
            assert torch.equal(record.labels, torch.from_numpy(scene.labels))
            assert Image.open(record.path).size == (record.width, record.height)


def test_examples_parse_with_load_dataset():
    data = load_dataset(ROOT / "examples", "test")
    assert data.classes == ms.CLASSES
    assert 15 <= len(data.images) <= 30 and not data.fixups
    assert all(r.key.startswith("test_") for r in data.images)  # test-split items only
    total_bytes = sum(p.stat().st_size for p in (ROOT / "examples").rglob("*") if p.is_file())
    assert total_bytes < 5_000_000
    for record in data.images:
        assert len(record.boxes) >= 1
        assert Image.open(record.path).size == (record.width, record.height)
        assert (record.boxes[:, 2] <= record.width).all() and (record.boxes[:, 3] <= record.height).all()
