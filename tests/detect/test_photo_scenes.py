"""Textured shapes on photographs (detect/photo_scenes.py): exact boxes, counts, reproducible."""
from __future__ import annotations

import numpy as np
import pytest

from detect import photo_scenes as ps
from detect.data import load_dataset


@pytest.fixture(scope="module")
def photos():
    return ps.load_photos()


def test_disc_touches_its_box_on_every_side_and_leaves_the_corners_clear():
    _, alpha = ps.draw_object(1, 40, np.random.default_rng(0))
    assert alpha.shape == (40, 40)
    mid = slice(19, 21)
    for edge in (alpha[0, mid], alpha[-1, mid], alpha[mid, 0], alpha[mid, -1]):
        assert edge.min() > 0.3  # the box is tight: the disc reaches all four sides
    assert alpha[0, 0] == alpha[0, -1] == alpha[-1, 0] == alpha[-1, -1] == 0.0
    assert 0.75 <= alpha[20, 20] <= 1.0


def test_square_fills_its_box_with_two_colours_in_a_checkerboard():
    colour, alpha = ps.draw_object(2, 30, np.random.default_rng(1))
    assert np.ptp(alpha) == 0 and 0.75 <= alpha[0, 0] <= 1.0
    colours = np.unique(colour.reshape(-1, 3), axis=0)
    assert len(colours) == 2
    # 3..6 cells a side: the top row changes colour at least twice, at most 5 times.
    changes = int((np.abs(np.diff(colour[0], axis=0)).sum(1) > 0).sum())
    assert 2 <= changes <= 5


def test_boxes_inside_the_image_apart_and_sized(photos):
    for index in range(12):
        image, boxes, labels = ps.make_photo_scene("train", index, 3, photos)
        h, w = image.shape[:2]
        assert ps.SCENE_SIDE[0] <= min(h, w) and max(h, w) <= ps.SCENE_SIDE[1]
        assert 1 <= len(boxes) <= ps.OBJECTS_PER_SCENE[1] and len(labels) == len(boxes)
        assert set(labels.tolist()) <= {1, 2}
        assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= w).all() and (boxes[:, 3] <= h).all()
        sides = boxes[:, 2:] - boxes[:, :2]
        assert (sides[:, 0] == sides[:, 1]).all()
        assert (sides >= ps.OBJECT_SIDE[0]).all() and (sides <= ps.OBJECT_SIDE[1]).all()
        for i in range(len(boxes)):
            for j in range(i):
                a, b = boxes[i], boxes[j]
                apart = (a[2] + ps.GAP <= b[0] or b[2] + ps.GAP <= a[0]
                         or a[3] + ps.GAP <= b[1] or b[3] + ps.GAP <= a[1])
                assert apart, (index, a, b)


def test_objects_change_only_the_pixels_inside_their_boxes(photos, monkeypatch):
    image, boxes, _ = ps.make_photo_scene("test", 5, 0, photos)
    draw = ps.draw_object

    def invisible(label, side, rng):  # the same random draws, nothing painted
        colour, alpha = draw(label, side, rng)
        return colour, alpha * 0

    monkeypatch.setattr(ps, "draw_object", invisible)
    background, same_boxes, _ = ps.make_photo_scene("test", 5, 0, photos)
    assert same_boxes.tolist() == boxes.tolist()
    changed = (image != background).any(axis=2)
    inside = np.zeros_like(changed)
    for x1, y1, x2, y2 in boxes.astype(int):
        inside[y1:y2, x1:x2] = True
        assert changed[y1:y2, x1:x2].mean() > 0.5
    assert not changed[~inside].any()


def test_written_set_counts_round_trip_and_determinism(tmp_path, photos):
    small = {"scene_side": (96, 128), "object_side": (40, 60), "photos": photos}
    root = ps.make_photo_scenes(tmp_path / "a", {"train": 5, "test": 3}, seed=7, **small)
    assert (root / "classes.txt").read_text().split() == ps.CLASSES
    assert len(list((root / "JPEGImages").glob("*.jpg"))) == 8
    assert len(list((root / "Annotations").glob("*.xml"))) == 8
    train, test = load_dataset(root, "train"), load_dataset(root, "test")
    assert [r.key for r in train.images] == [f"train_{i:04d}" for i in range(5)] and len(test.images) == 3
    assert train.classes == ps.CLASSES
    for rec in train.images:
        _, boxes, labels = ps.make_photo_scene("train", int(rec.key[-4:]), 7, photos, small["scene_side"],
                                               small["object_side"])
        assert rec.boxes.tolist() == boxes.tolist() and rec.labels.tolist() == labels.tolist()
    again = ps.make_photo_scenes(tmp_path / "b", {"train": 5, "test": 3}, seed=7, **small)
    other = ps.make_photo_scenes(tmp_path / "c", {"train": 5, "test": 3}, seed=8, **small)
    for name in ("JPEGImages/train_0004.jpg", "JPEGImages/test_0002.jpg"):  # the XMLs name their folder
        assert (root / name).read_bytes() == (again / name).read_bytes()
    assert (root / "JPEGImages/train_0000.jpg").read_bytes() != (other / "JPEGImages/train_0000.jpg").read_bytes()
