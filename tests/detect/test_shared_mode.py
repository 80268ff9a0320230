"""The shared-computation mode: geometry, whole-image reproduction, the ensemble, mirroring, counting."""
import numpy as np
import pytest
import torch
from torch import nn

from backbone.models import build_model
from detect.regions import scaled_context_pad, to_tensor, warp_regions
from detect.shared_mode import (SPLITS, check_member, ensemble_scores, grid_size, image_scale, multiply_adds_per_image,
                                region_rois, split_geometry, trunk_features, trunk_layers)

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
K = 10


def member(width: float, seed: int, spread: float = 20.0) -> nn.Module:
    """A random-init GoogLeNet with K+1 outputs whose classifier tells classes apart."""
    torch.manual_seed(seed)
    model = build_model("googlenet", K + 1, width=width, aux_logits=False, dropout=0.0)
    with torch.no_grad():
        model.fc.weight.mul_(spread)
    return model.eval()


def random_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def test_grid_size_is_the_networks_grid_at_each_split():
    net = member(0.125, 0)
    assert grid_size(224) == 14 and grid_size(48) == 3 and grid_size(48, "stem") == 6 and grid_size(224, "pool4") == 7
    for split in SPLITS:
        for size in (48, 64, 100, 224):
            with torch.no_grad():
                features, scales = trunk_features(net, torch.zeros(1, 3, size, size), split=split)
            assert features.shape[-2:] == (grid_size(size, split), grid_size(size, split)) and scales == (1.0, 1.0)
    assert trunk_layers("stem") == () and trunk_layers()[-1] == "inception4e"


@pytest.mark.parametrize("split", SPLITS)
def test_cell_centre_composes_from_the_layers(split):
    # Each conv / pool maps output j to input s*j + (k-1)/2 - p (its window's centre); compose
    # through the stem and the pools up to the split (the inception blocks are stride 1 and symmetric).
    net = member(0.125, 0)
    stride, offset = 1, 0.0
    for layer in [*net.stem.modules(), *(getattr(net, name) for name in trunk_layers(split))]:
        if isinstance(layer, (nn.Conv2d, nn.MaxPool2d)) and layer.stride not in (1, (1, 1)):
            k, s, p = (v if isinstance(v, int) else v[0] for v in (layer.kernel_size, layer.stride, layer.padding))
            offset += stride * ((k - 1) / 2 - p)
            stride *= s
    assert (stride, offset + 0.5) == split_geometry(split)
    assert split_geometry() == (16, 14.5) and split_geometry("stem") == (8, 6.5)


def test_region_rois_hand_computed():
    # [16, 16, 208, 208] with 16 px context at 224 dilates to [0, 0, 224, 224]; at scale 0.5 it
    # spans 112 px: a = 0 - 6.5 * (1 - 112 / 224) = -3.25, b = 16 * 14 * 112 / 224 = 112.
    boxes = torch.tensor([[16.0, 16.0, 208.0, 208.0]])
    torch.testing.assert_close(region_rois(boxes, (0.5, 0.5), 224, 16), torch.tensor([[-3.25, -3.25, 108.75, 108.75]]))
    # At the member's scale the roi is the dilated box itself.
    torch.testing.assert_close(region_rois(boxes, (1.0, 1.0), 224, 16), torch.tensor([[0.0, 0.0, 224.0, 224.0]]))
    # x and y scale separately: sx = 2 (a 112 px wide region spans the input), sy = 1.
    rois = region_rois(torch.tensor([[0.0, 0.0, 112.0, 224.0]]), (1.0, 2.0), 224, 0)
    torch.testing.assert_close(rois, torch.tensor([[0.0, 0.0, 224.0, 224.0]]))


def test_image_scale_follows_fast_rcnn():
    assert image_scale(375, 500, 600, 1000) == 1.6  # VOC's typical image: 600 x 800
    assert image_scale(200, 1000, 600, 1000) == 1.0  # the longer side caps it
    assert image_scale(375, 500, 0) == 1.0


@pytest.mark.parametrize("width,size,split", [(1.0, 224, "inception4e"), (0.25, 48, "inception4e"), (0.25, 48, "stem"),
                                              (0.25, 64, "inception3b"), (0.25, 64, "pool4")])
def test_whole_image_box_reproduces_the_classifier(width, size, split):
    """Pooled from the member's own map at its scale, a box covering the whole image is the
    classifier's forward pass; so is the R-CNN warp of that box."""
    net = member(width, 1)
    pixels = random_image(size, size)
    x = to_tensor(pixels, MEAN, STD)
    with torch.no_grad():
        expected = net(x.unsqueeze(0)).softmax(1)
    whole = torch.tensor([[0.0, 0.0, size, size]])
    got = ensemble_scores([net], [size], x, whole, context_pad=0, split=split)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)
    assert (expected.max() - expected.min()) > 0.1  # not a flat softmax that anything would match
    # With R-CNN's 16 px context, the box whose dilation is the image; both modes agree.
    p = scaled_context_pad(16, size)
    inner = torch.tensor([[p, p, size - p, size - p]], dtype=torch.float32)
    torch.testing.assert_close(ensemble_scores([net], [size], x, inner, context_pad=16, split=split), expected,
                               atol=1e-5, rtol=0)
    with torch.no_grad():
        rcnn = net(warp_regions(x, inner, size, 16)).softmax(1)
    torch.testing.assert_close(rcnn, expected, atol=1e-5, rtol=0)


BOXES = torch.tensor([[0.0, 0.0, 60.0, 50.0], [30.0, 20.0, 119.0, 89.0], [10.0, 40.0, 40.0, 70.0],
                      [-10.0, -5.0, 20.0, 30.0], [50.0, 10.0, 90.0, 30.0]])


def test_scores_are_probabilities_and_batching_is_invisible():
    members = [member(0.125, 2), member(0.125, 3)]
    x = to_tensor(random_image(90, 120), MEAN, STD)
    scores = ensemble_scores(members, [64, 64], x, BOXES, batch_size=2)
    assert scores.shape == (5, K + 1) and scores.dtype == torch.float32
    torch.testing.assert_close(scores.sum(1), torch.ones(5))
    assert (scores >= 0).all()
    torch.testing.assert_close(ensemble_scores(members, [64, 64], x, BOXES, batch_size=64), scores)
    each = [ensemble_scores([m], [64], x, BOXES) for m in members]
    torch.testing.assert_close(scores, (each[0] + each[1]) / 2)  # the mean of the members
    assert ensemble_scores(members, [64, 64], x, torch.zeros(0, 4)).shape == (0, K + 1)


def test_mirror_averages_each_region_with_its_mirror():
    members = [member(0.125, 4), member(0.125, 5)]
    pixels = random_image(90, 120, seed=1)
    x, flipped = to_tensor(pixels, MEAN, STD), to_tensor(np.ascontiguousarray(pixels[:, ::-1]), MEAN, STD)
    mirrored = torch.stack([120 - BOXES[:, 2], BOXES[:, 1], 120 - BOXES[:, 0], BOXES[:, 3]], 1)
    plain = ensemble_scores(members, [64, 64], x, BOXES)
    expected = (plain + ensemble_scores(members, [64, 64], flipped, mirrored)) / 2
    assert (plain - expected).abs().max() > 1e-3  # the mirror changes the scores
    torch.testing.assert_close(ensemble_scores(members, [64, 64], x, BOXES, mirror=True), expected)
    # Of the whole image at the member's scale: the classifier on the image and its mirror.
    net, side = members[0], 64
    square = to_tensor(random_image(side, side, seed=2), MEAN, STD).unsqueeze(0)
    with torch.no_grad():
        both = (net(square).softmax(1) + net(square.flip(-1)).softmax(1)) / 2
    whole = torch.tensor([[0.0, 0.0, side, side]])
    torch.testing.assert_close(ensemble_scores([net], [side], square[0], whole, context_pad=0, mirror=True),
                               both, atol=1e-6, rtol=0)


@pytest.mark.parametrize("split", ["stem", "inception4e"])
def test_multiply_adds_split_the_forward_pass(split):
    net = member(0.25, 0)
    counts = multiply_adds_per_image(net, 48, 48, 48, regions=1, split=split)
    assert counts["shared"] == counts["rcnn"]  # one region covering the image: the same network
    early, late = (multiply_adds_per_image(net, 48, 96, 144, 10, split=s) for s in ("stem", "inception4e"))
    assert early["shared_trunk"] < late["shared_trunk"] and early["shared_regions"] > late["shared_regions"]
    counts = multiply_adds_per_image(net, 48, 96, 144, regions=10, mirror=True)
    one = multiply_adds_per_image(net, 48, 48, 48, regions=1)["rcnn"]
    assert counts["rcnn"] == 2 * 10 * one
    assert counts["shared"] == counts["shared_trunk"] + counts["shared_regions"]
    assert counts["shared_regions"] % 20 == 0 and counts["shared_trunk"] < 6 * 2 * one  # 6x the pixels


def test_full_width_network_counts_the_papers_multiply_adds():
    counts = multiply_adds_per_image(build_model("googlenet", 1000, aux_logits=False).eval(), 224, 224, 224, 1)
    assert abs(counts["rcnn"] / 1e9 - 1.583) < 0.001  # as `detect summary` and the paper (~1.58 G)


def test_other_architectures_are_refused():
    with pytest.raises(ValueError, match="GoogLeNet"):
        check_member(build_model("torchvision_googlenet", 11, aux_logits=False))
