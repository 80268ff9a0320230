"""R-CNN box regression: the transform by hand, the closed-form fit on synthetic features that
encode the offsets, the unregularised bias, clipping, save and load."""
from __future__ import annotations

import math

import pytest
import torch
from torchvision.ops import box_iou

from backbone.errors import InputError
from detect.box_regression import (BoxRegressor, decode_boxes, encode_boxes, fit_box_regressor,
                                   match_for_regression)

H, W = 480, 640  # image size of the synthetic sets


def test_transform_by_hand():
    # P: centre (20, 40), size 20 x 40. G: centre (30, 50), size 30 x 80.
    p = torch.tensor([[10., 20, 30, 60]])
    g = torch.tensor([[15., 10, 45, 90]])
    t = encode_boxes(p, g)
    want = torch.tensor([[10 / 20, 10 / 40, math.log(30 / 20), math.log(80 / 40)]])
    torch.testing.assert_close(t, want)
    torch.testing.assert_close(decode_boxes(p, t), g)
    # Zero deltas leave the box; one set of deltas per class gives [R, K, 4].
    deltas = torch.stack([torch.zeros(1, 4), want], dim=1)  # [1, 2, 4]
    torch.testing.assert_close(decode_boxes(p, deltas), torch.stack([p, g], dim=1))


def test_inverse_on_random_boxes():
    gen = torch.Generator().manual_seed(0)
    xy = torch.rand(50, 2, generator=gen) * 400
    p = torch.cat([xy, xy + 5 + torch.rand(50, 2, generator=gen) * 200], 1)
    xy = torch.rand(50, 2, generator=gen) * 400
    g = torch.cat([xy, xy + 5 + torch.rand(50, 2, generator=gen) * 200], 1)
    torch.testing.assert_close(decode_boxes(p.double(), encode_boxes(p.double(), g.double())), g.double())


def test_match_for_regression_keeps_iou_at_least_the_threshold():
    gt = torch.tensor([[0., 0, 10, 10], [100, 100, 200, 200]])
    labels = torch.tensor([2, 1])
    props = torch.tensor([[0., 0, 10, 10], [0, 0, 10, 7], [0, 0, 10, 5], [110, 100, 200, 200], [50, 50, 60, 60]])
    keep, boxes, lab = match_for_regression(props, gt, labels)  # IoU 1, .7, .5, .9, 0
    assert keep.tolist() == [0, 1, 3] and lab.tolist() == [2, 2, 1]
    assert torch.equal(boxes, gt[[0, 0, 1]])
    assert match_for_regression(props, torch.zeros(0, 4), torch.zeros(0, dtype=torch.long))[0].numel() == 0


def synthetic(n: int, seed: int, num_classes: int = 3, dim: int = 32):
    """Ground-truth boxes, proposals jittered off them (kept at IoU >= 0.6, R-CNN's training
    overlap) and features that encode the offsets linearly, differently for each class, plus
    noise; each class's proposals sit off its boxes by a different mean offset. Returns (features [N, D], proposals [N, 4], gt boxes [N, 4], labels [N])."""
    gen = torch.Generator().manual_seed(seed)
    mixing = torch.randn(num_classes, 4, dim, generator=torch.Generator().manual_seed(123))
    xy = torch.rand(n, 2, generator=gen) * torch.tensor([W - 220., H - 220.]) + 10
    gt = torch.cat([xy, xy + 30 + torch.rand(n, 2, generator=gen) * 170], 1)
    labels = torch.randint(1, num_classes + 1, (n,), generator=gen)
    jitter = torch.cat([torch.rand(n, 2, generator=gen) * 0.4 - 0.2, torch.rand(n, 2, generator=gen) * 0.6 - 0.3], 1)
    jitter[:, 0] += 0.1 * (labels - 2)  # each class has its own mean offset
    props = decode_boxes(gt, jitter)
    keep = box_iou(props, gt).diagonal() >= 0.6
    props, gt, labels = props[keep], gt[keep], labels[keep]
    t = encode_boxes(props, gt)
    feats = torch.einsum("nc,ncd->nd", t, mixing[labels - 1]) + 0.05 * torch.randn(len(t), dim, generator=gen) + 0.5
    return feats, props, gt, labels


def mean_iou(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(box_iou(a, b).diagonal().mean())


def test_fit_recovers_the_boxes():
    feats, props, gt, labels = synthetic(1500, seed=1)
    reg = fit_box_regressor(feats, props, gt, labels, num_classes=3, ridge_lambda=1.0)
    assert reg.num_samples.tolist() == torch.bincount(labels, minlength=4)[1:].tolist()
    t = encode_boxes(props, gt)
    torch.testing.assert_close(reg.target_mean, t.mean(0), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(reg.target_std, t.std(0, unbiased=False), atol=1e-5, rtol=1e-5)

    feats, props, gt, labels = synthetic(600, seed=2)  # held out
    out = reg.regress(feats, props, (H, W))
    assert out.shape == (len(props), 3, 4)
    rows = torch.arange(len(props))
    before, after = mean_iou(props, gt), mean_iou(out[rows, labels - 1], gt)
    wrong = mean_iou(out[rows, labels % 3], gt)  # another class's regressor
    assert 0.6 < before < 0.8, before
    assert after > before + 0.15 and after > 0.9, (before, after)
    assert wrong < after - 0.1, (wrong, after)


def test_bias_is_not_shrunk():
    # With an enormous lambda the feature weights vanish and each class predicts its own mean
    # offset (the unpenalised bias), not zero and not the pooled mean.
    feats, props, gt, labels = synthetic(600, seed=3)
    reg = fit_box_regressor(feats, props, gt, labels, num_classes=3, ridge_lambda=1e12)
    deltas = reg.predict_deltas(feats)
    t = encode_boxes(props, gt)
    for k in (1, 2, 3):
        torch.testing.assert_close(deltas[0, k - 1], t[labels == k].mean(0), atol=1e-4, rtol=1e-4)


def test_class_without_pairs_and_clipping():
    feats, props, gt, labels = synthetic(300, seed=4, num_classes=2)
    reg = fit_box_regressor(feats, props, gt, labels, num_classes=3, ridge_lambda=1.0)
    assert reg.num_samples[2] == 0
    boxes = torch.tensor([[5., 5, 60, 40], [600, 400, 700, 500]])  # the second crosses the border
    out = reg.regress(feats[:2], boxes, (H, W))
    torch.testing.assert_close(out[0, 2], boxes[0])  # class 3 has no regressor: the box stays
    torch.testing.assert_close(out[1, 2], torch.tensor([600., 400, 640, 480]))  # clipped
    assert (out[..., 0::2] <= W).all() and (out[..., 1::2] <= H).all() and (out >= 0).all()


def test_save_and_load_give_identical_boxes(tmp_path):
    feats, props, gt, labels = synthetic(400, seed=5)
    reg = fit_box_regressor(feats, props, gt, labels, num_classes=3, ridge_lambda=10.0)
    reg.save(tmp_path / "box_regression.safetensors")
    back = BoxRegressor.load(tmp_path / "box_regression.safetensors")
    assert torch.equal(back.regress(feats, props, (H, W)), reg.regress(feats, props, (H, W)))
    assert back.ridge_lambda == 10.0 and back.min_iou == 0.6 and torch.equal(back.num_samples, reg.num_samples)
    (tmp_path / "bad.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(InputError, match="bad.safetensors"):
        BoxRegressor.load(tmp_path / "bad.safetensors")
    with pytest.raises(ValueError, match="features must be"):
        reg.predict_deltas(feats[:, :5])
