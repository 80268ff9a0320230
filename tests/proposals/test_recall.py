"""Recall: hand-computed IoUs, empty cases, a cross-check against a plain numpy loop."""
import numpy as np
import pytest
import torch

from proposals import recall_stats
from proposals.recall import best_overlaps


def test_hand_computed():
    gt = [torch.tensor([[0, 0, 10, 10]]), torch.tensor([[0, 0, 10, 10]])]
    # IoU 0.5 (half the box) in image 0, IoU 0.8 in image 1.
    props = [torch.tensor([[0, 0, 10, 5], [50, 50, 60, 60]]), torch.tensor([[0, 0, 10, 8]])]
    stats = recall_stats(props, gt)
    assert stats["images"] == 2 and stats["gt_boxes"] == 2 and stats["boxes_per_image"] == 1.5
    assert stats["recall@0.5"] == 1.0 and stats["recall@0.7"] == 0.5
    # thresholds 0.50..0.95: the 0.5 box passes 1 of 10, the 0.8 box passes 7 of 10.
    assert stats["AR"] == pytest.approx((1 + 7) / 20)


def test_empty_cases():
    assert recall_stats([torch.zeros((0, 4))], [torch.tensor([[0, 0, 5, 5]])])["recall@0.5"] == 0.0
    stats = recall_stats([torch.tensor([[0, 0, 5, 5]])], [torch.zeros((0, 4))])
    assert stats["gt_boxes"] == 0 and stats["AR"] == 0.0 and stats["boxes_per_image"] == 1.0
    assert best_overlaps(torch.zeros((0, 4)), torch.zeros((0, 4))).shape == (0,)
    with pytest.raises(ValueError):
        recall_stats([torch.zeros((0, 4))], [])


def _iou(a, b):
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def test_matches_a_plain_loop():
    rng = np.random.default_rng(0)
    props, gts = [], []
    for _ in range(5):
        p = rng.uniform(0, 50, (30, 2)); g = rng.uniform(0, 50, (4, 2))
        props.append(np.hstack([p, p + rng.uniform(5, 40, (30, 2))]))
        gts.append(np.hstack([g, g + rng.uniform(5, 40, (4, 2))]))
    best = np.array([max(_iou(gb, pb) for pb in p) for p, g in zip(props, gts) for gb in g])
    stats = recall_stats([torch.tensor(p) for p in props], [torch.tensor(g) for g in gts])
    assert stats["recall@0.5"] == pytest.approx((best >= 0.5).mean())
    assert stats["recall@0.7"] == pytest.approx((best >= 0.7).mean())
    assert stats["AR"] == pytest.approx(np.mean([(best >= t).mean() for t in np.arange(0.5, 0.951, 0.05)]))
