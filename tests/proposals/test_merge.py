"""Merging selective search and MultiBox: priorities, sizes, clipping, recall never lower."""
import sys
import types

import numpy as np
import pytest
import torch
from proposal_scenes import random_scene, rectangles_image

from backbone.config import load_config
from backbone.errors import InputError
from proposals import (MultiBoxSourceConfig, ProposalConfig, SelectiveSearchConfig, build_proposer, merge_boxes,
                       propose, propose_with_sources, recall_stats)


class FakeMultiBox:
    """Stands in for proposals.multibox.MultiBox: returns fixed boxes and scores."""

    def __init__(self, boxes, scores):
        self.boxes, self.scores = torch.as_tensor(boxes, dtype=torch.float32), torch.as_tensor(scores)
        self.calls = []

    def predict(self, image, top_k=200):
        self.calls.append(top_k)
        return self.boxes, self.scores


def _config(ss=True, mb=True, top_k=200, **kw) -> ProposalConfig:
    return ProposalConfig(
        selective_search=SelectiveSearchConfig(enabled=ss, mode="fast", resize_width=0, min_size=5),
        multibox=MultiBoxSourceConfig(enabled=mb, model="fake", top_k=top_k), **kw)


def test_merge_boxes_hand_computed():
    ss = torch.tensor([[0, 0, 10, 10], [0, 0, 10, 10.1], [20, 20, 40, 40], [0, 0, 3, 30]])
    mb = torch.tensor([[20, 20, 40, 40.5], [50, 50, 70, 70], [20, 20, 30, 40]])
    boxes, sources = merge_boxes([ss, mb], dedup_iou=0.95, min_size=5)
    # ss[1] duplicates ss[0] (IoU 0.990); ss[3] is 3 px wide; mb[0] duplicates ss[2] (IoU 0.976);
    # mb[2] overlaps ss[2] at IoU 0.5 only, so it stays.
    expected = torch.tensor([[0, 0, 10, 10], [20, 20, 40, 40], [50, 50, 70, 70], [20, 20, 30, 40]])
    assert torch.equal(boxes, expected.float())
    assert sources.tolist() == [0, 0, 1, 1] and sources.dtype == torch.uint8


def test_multibox_never_removes_a_selective_search_box():
    rng = np.random.default_rng(0)
    for _ in range(20):
        xy = torch.from_numpy(rng.uniform(0, 80, (60, 2))).float()
        wh = torch.from_numpy(rng.uniform(10, 40, (60, 2))).float()
        ss, mb = torch.cat([xy, xy + wh], 1)[:30], torch.cat([xy, xy + wh], 1)[30:]
        ss_only, _ = merge_boxes([ss, torch.zeros((0, 4))], 0.7, 5)
        merged, sources = merge_boxes([ss, mb], 0.7, 5)
        assert torch.equal(merged[sources == 0], ss_only)


def test_propose_with_sources_clips_and_keeps_top_k():
    image = rectangles_image()
    boxes = [[-10, -10, 50, 50], [100, 80, 400, 300], [30, 30, 60, 60], [5, 5, 100, 100]]
    fake = FakeMultiBox(boxes, [0.1, 0.9, 0.5, 0.05])
    out, sources = propose_with_sources(image, _config(ss=False, top_k=3), fake)
    # best three by score, clipped to the 160x120 image
    assert torch.equal(out, torch.tensor([[100, 80, 160, 120], [30, 30, 60, 60], [0, 0, 50, 50]]).float())
    assert sources.tolist() == [1, 1, 1] and fake.calls == [3]


def test_sources_switch_off():
    image = rectangles_image()
    fake = FakeMultiBox([[30, 30, 60, 60]], [1.0])
    only_ss, src = propose_with_sources(image, _config(mb=False), fake)
    assert len(only_ss) > 3 and (src == 0).all() and fake.calls == []
    assert len(propose(image, _config(ss=False, mb=False))) == 0
    with pytest.raises(ValueError, match="MultiBox"):
        propose(image, _config(ss=False, mb=True), None)


def test_merged_recall_never_below_selective_search_recall():
    rng = np.random.default_rng(1)
    scenes = [random_scene(rng) for _ in range(4)]
    ss_sets, merged_sets, gts = [], [], []
    for image, gt in scenes:
        # A MultiBox stand-in: jittered ground truth and random boxes, some duplicating selective search.
        noisy = gt + torch.from_numpy(rng.normal(0, 4, gt.shape)).float()
        rand = torch.from_numpy(rng.uniform(0, 90, (20, 2))).float()
        fake = FakeMultiBox(torch.cat([noisy, torch.cat([rand, rand + 30], 1)]), torch.rand(len(gt) + 20))
        ss_sets.append(propose(image, _config(mb=False)))
        merged_sets.append(propose(image, _config(), fake))
        gts.append(gt)
    ss, merged = recall_stats(ss_sets, gts), recall_stats(merged_sets, gts)
    for key in ("recall@0.5", "recall@0.7", "AR"):
        assert merged[key] >= ss[key]
    assert merged["boxes_per_image"] > ss["boxes_per_image"]


def test_build_proposer_loads_multibox_once(monkeypatch):
    loads = []

    class FakeClass:
        @staticmethod
        def load(run_dir, device="cpu"):
            loads.append((run_dir, device))
            return FakeMultiBox([[30, 30, 60, 60]], [1.0])

    monkeypatch.setitem(sys.modules, "proposals.multibox", types.SimpleNamespace(MultiBox=FakeClass))
    proposer = build_proposer(_config())
    for _ in range(2):
        boxes, sources = proposer(rectangles_image())
        assert (sources == 1).sum() == 1 and (sources == 0).sum() > 3
    assert loads == [("fake", "cpu")]
    config = _config()
    config.multibox.model = ""
    with pytest.raises(InputError, match="multibox.model"):
        build_proposer(config)


def test_config_from_yaml_and_overrides(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("selective_search:\n  mode: quality\nmultibox:\n  top_k: 100\n")
    cfg = load_config(ProposalConfig, path, ["selective_search.superpixel_scale=1.0", "dedup_iou=0.9"])
    assert cfg.selective_search.mode == "quality" and cfg.selective_search.superpixel_scale == 1.0
    assert cfg.multibox.top_k == 100 and cfg.dedup_iou == 0.9 and not cfg.multibox.enabled
    with pytest.raises(InputError, match="superpixels"):
        load_config(ProposalConfig, path, ["selective_search.superpixels=2"])
    with pytest.raises(InputError, match="mode"):
        load_config(ProposalConfig, path, ["selective_search.mode=slow"])
