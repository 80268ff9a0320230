"""detect.visualize: which detections a picture shows, and where their labels go."""
from __future__ import annotations

import numpy as np
import torch

from detect.visualize import DISPLAY_THRESHOLD, draw_detections, place_labels


def _overlap(a, b) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def test_a_label_goes_above_its_box_when_there_is_room():
    assert place_labels([(50, 40, 90, 80)], [(30, 10)], (200, 100)) == [(50, 30, 80, 40)]


def test_a_label_at_the_top_edge_goes_inside_the_box():
    assert place_labels([(50, 0, 90, 80)], [(30, 10)], (200, 100)) == [(50, 0, 80, 10)]


def test_a_label_at_the_right_edge_is_shifted_into_the_picture():
    # the box starts 10 px from the right edge; a 30 px label there would be cut off by 20 px
    assert place_labels([(190, 40, 200, 60)], [(30, 10)], (200, 100)) == [(170, 30, 200, 40)]


def test_stacked_boxes_get_labels_that_do_not_overlap():
    # three boxes with the same top-left corner: the second label cannot sit above the box
    # (the first is there), so it goes inside; the third goes one label further down
    boxes = [(20, 30, 120, 90)] * 3
    spots = place_labels(boxes, [(40, 10)] * 3, (200, 100))
    assert spots == [(20, 20, 60, 30), (80, 20, 120, 30), (20, 30, 60, 40)]


def test_many_labels_never_overlap_and_stay_inside():
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 180, (60, 2))
    boxes = [(x, y, x + 30, y + 25) for x, y in xy]
    spots = place_labels(boxes, [(45, 12)] * 60, (200, 200))
    kept = [s for s in spots if s is not None]
    assert 10 < len(kept) < 60  # crowded: some labels are left off
    for i, a in enumerate(kept):
        assert 0 <= a[0] and a[2] <= 200 and 0 <= a[1] and a[3] <= 200
        assert not any(_overlap(a, b) for b in kept[i + 1:])


def test_a_label_larger_than_the_picture_is_left_off():
    assert place_labels([(0, 0, 1, 1)], [(30, 10)], (1, 1)) == [None]


def test_the_picture_shows_only_detections_above_the_display_threshold():
    image = np.full((60, 80, 3), 255, np.uint8)
    dets = {"boxes": torch.tensor([[10.0, 20.0, 30.0, 40.0], [45.0, 20.0, 70.0, 40.0]]),
            "scores": torch.tensor([0.9, DISPLAY_THRESHOLD - 0.01]), "labels": torch.tensor([1, 2])}
    drawn = np.asarray(draw_detections(image, dets, ["a", "b"], line_width=1))
    assert (drawn[30, 10] != 255).any()  # the left edge of the shown box
    assert (drawn[30, 45] == 255).all()  # the left edge of the one below the threshold: not drawn
    every = np.asarray(draw_detections(image, dets, ["a", "b"], line_width=1, display_threshold=0.0))
    assert (every[30, 45] != 255).any()
