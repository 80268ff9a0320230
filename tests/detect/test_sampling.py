"""R-CNN region labelling and mini-batch sampling on hand-built overlaps."""
import torch

from detect.sampling import (IGNORE, EpochSteps, LabelledRegions, epoch_batches, label_regions, mix_seed,
                             sample_image_regions, sample_minibatch, split_quota)

GT = torch.tensor([[0.0, 0.0, 10.0, 10.0], [100.0, 100.0, 120.0, 120.0]])
GT_LABELS = torch.tensor([2, 1])
PROPOSALS = torch.tensor([
    [0.0, 0.0, 10.0, 5.0],       # IoU 0.5 with gt 0 -> class 2
    [0.0, 0.0, 10.0, 4.0],       # IoU 0.4 with gt 0 -> background
    [50.0, 50.0, 60.0, 60.0],    # IoU 0 -> background (with bg_iou_low 0)
    [100.0, 100.0, 120.0, 115.0],  # IoU 0.75 with gt 1 -> class 1
    [0.0, 0.0, 10.0, 4.5],       # IoU 0.45 -> between the bands in the second test
])


def test_label_regions_hand_computed():
    r = label_regions(PROPOSALS, GT, GT_LABELS, fg_iou=0.5, bg_iou_high=0.5, bg_iou_low=0.0)
    assert r.boxes.shape == (7, 4)
    assert torch.equal(r.boxes[:2], GT)  # ground truth first
    assert r.labels.tolist() == [2, 1, 2, 0, 0, 1, 0]
    assert (r.num_fg, r.num_bg) == (4, 3)


def test_label_regions_ignore_band():
    # Fast R-CNN style band: background only in [0.1, 0.42); 0.42..0.5 and below 0.1 ignored.
    r = label_regions(PROPOSALS, GT, GT_LABELS, fg_iou=0.5, bg_iou_high=0.42, bg_iou_low=0.1)
    assert r.labels.tolist() == [2, 1, 2, 0, IGNORE, 1, IGNORE]


def test_label_regions_picks_best_overlapping_class():
    gt = torch.tensor([[0.0, 0.0, 10.0, 10.0], [5.0, 0.0, 15.0, 10.0]])
    prop = torch.tensor([[4.0, 0.0, 14.0, 10.0]])  # IoU 6/14 with gt0, 9/11 with gt1
    r = label_regions(prop, gt, torch.tensor([3, 1]))
    assert r.labels.tolist() == [3, 1, 1]


def test_label_regions_without_objects_is_all_background():
    r = label_regions(PROPOSALS, torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64))
    assert r.labels.tolist() == [0] * 5


def test_split_quota():
    assert split_quota(128, 2) == [64, 64]
    assert split_quota(10, 3) == [4, 3, 3]
    assert sum(split_quota(32, 5)) == 32


def _image(num_fg: int, num_bg: int, offset: float = 0.0) -> LabelledRegions:
    n = num_fg + num_bg
    boxes = torch.arange(n, dtype=torch.float32)[:, None] + torch.tensor([0.0, 0.0, 5.0, 5.0]) + offset
    labels = torch.cat([torch.randint(1, 4, (num_fg,)), torch.zeros(num_bg, dtype=torch.int64)])
    return LabelledRegions(boxes, labels)


def test_minibatch_has_rcnn_ratio_spread_over_images():
    images = [_image(50, 200), _image(40, 300, offset=1000.0)]
    batch = sample_minibatch(images, [0, 1], batch_regions=128, fg_per_batch=32, mirror=True,
                             seed=0, epoch=0, step=0)
    assert [s.image for s in batch] == [0, 1]
    labels = torch.cat([s.labels for s in batch])
    assert len(labels) == 128 and int((labels > 0).sum()) == 32 and int((labels == 0).sum()) == 96
    for s in batch:  # uniform over images: 64 regions, 16 foreground each, no repeats
        assert len(s.labels) == 64 and int((s.labels > 0).sum()) == 16
        assert len(torch.unique(s.boxes[:, 0])) == 64
        assert s.boxes.shape == (64, 4) and s.flip.shape == (64,)


def test_minibatch_fills_missing_foreground_with_background():
    images = [_image(3, 200), _image(50, 200, offset=1000.0)]
    batch = sample_minibatch(images, [0, 1], 128, 32, True, seed=1, epoch=0, step=0)
    assert int((batch[0].labels > 0).sum()) == 3 and len(batch[0].labels) == 64
    assert int((batch[1].labels > 0).sum()) == 16


def test_sample_repeats_when_an_image_is_short_of_regions():
    g = torch.Generator().manual_seed(0)
    labels = torch.tensor([1, 2, 0, 0, IGNORE])
    idx = sample_image_regions(labels, 20, 8, g)
    assert len(idx) == 20 and 4 not in idx.tolist()  # never an ignored region
    assert int((labels[idx] > 0).sum()) == 2  # both foreground once, background repeated
    only_fg = sample_image_regions(torch.tensor([1, 1, 2]), 10, 2, g)
    assert len(only_fg) == 10 and bool((torch.tensor([1, 1, 2])[only_fg] > 0).all())


def test_sampling_is_deterministic_in_seed_epoch_step():
    images = [_image(50, 200), _image(40, 300, offset=1000.0)]
    a = sample_minibatch(images, [0, 1], 128, 32, True, seed=0, epoch=2, step=5)
    b = sample_minibatch(images, [0, 1], 128, 32, True, seed=0, epoch=2, step=5)
    c = sample_minibatch(images, [0, 1], 128, 32, True, seed=0, epoch=2, step=6)
    d = sample_minibatch(images, [0, 1], 128, 32, True, seed=1, epoch=2, step=5)
    assert all(torch.equal(x.boxes, y.boxes) and torch.equal(x.flip, y.flip) for x, y in zip(a, b))
    assert not torch.equal(a[0].boxes, c[0].boxes)
    assert not torch.equal(a[0].boxes, d[0].boxes)
    assert mix_seed(0, 1) != mix_seed(1, 0)


def test_mirroring_flips_about_half_and_can_be_off():
    images = [_image(50, 2000)]
    batch = sample_minibatch(images, [0], 1000, 32, True, seed=0, epoch=0, step=0)
    assert 400 < int(batch[0].flip.sum()) < 600
    batch = sample_minibatch(images, [0], 100, 32, False, seed=0, epoch=0, step=0)
    assert not bool(batch[0].flip.any())


def test_epoch_batches_shuffle_and_drop_the_incomplete_last_group():
    steps = epoch_batches(7, 2, seed=0, epoch=0)
    assert len(steps) == 3 and all(len(s) == 2 for s in steps)
    flat = [i for s in steps for i in s]
    assert len(set(flat)) == 6 and set(flat) <= set(range(7))
    assert epoch_batches(7, 2, 0, 0) == steps and epoch_batches(7, 2, 0, 1) != steps
    assert sorted(epoch_batches(3, 4, 0, 0)[0]) == [0, 1, 2]  # smaller than a batch: one step


def test_a_share_of_the_images_is_drawn_as_in_the_whole_batch():
    images = {7: _image(50, 200), 3: _image(40, 300, offset=1000.0), 5: _image(2, 10, offset=2000.0)}
    whole = sample_minibatch(images, [7, 3, 5], 96, 24, True, seed=0, epoch=1, step=2)
    share = sample_minibatch({5: images[5], 7: images[7]}, [7, 3, 5], 96, 24, True, seed=0, epoch=1,
                             step=2, positions=[0, 2])
    assert [s.image for s in share] == [7, 5]
    for a, b in zip(share, [whole[0], whole[2]]):
        assert torch.equal(a.boxes, b.boxes) and torch.equal(a.flip, b.flip) and len(a.labels) == 32


def test_an_image_without_labelled_regions_gives_none():
    empty = LabelledRegions(torch.zeros(2, 4), torch.tensor([IGNORE, IGNORE]))
    batch = sample_minibatch([empty, _image(10, 50)], [0, 1], 32, 8, False, seed=0, epoch=0, step=0)
    assert [s.image for s in batch] == [1] and len(batch[0].labels) == 16


def test_epoch_steps_share_each_step_between_processes():
    ranks = [EpochSteps(9, 4, rank=r, world_size=2) for r in range(2)]
    assert list(ranks[0]) == [] and len(ranks[0]) == 0  # nothing before set_epoch
    for r in ranks:
        r.set_epoch(seed=1, epoch=2)
    steps = epoch_batches(9, 4, 1, 2)
    assert ranks[0].steps == steps and len(ranks[1]) == 2
    assert list(ranks[0]) == [s[0::2] for s in steps] and list(ranks[1]) == [s[1::2] for s in steps]
    ranks[0].set_epoch(seed=1, epoch=3)
    assert ranks[0].steps == epoch_batches(9, 4, 1, 3) != steps
