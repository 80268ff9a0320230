"""Selective search: rectangles recovered by both backends, seeds, scaling, the 2x rule."""
import pytest
import torch
from proposal_scenes import rectangles_gt, rectangles_image
from torchvision.ops import box_iou

from proposals import selective_search
from proposals.selective_search import unique_boxes


def _best_iou(boxes: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    return box_iou(gt, boxes).max(dim=1).values


@pytest.mark.parametrize("backend,mode", [("opencv", "single"), ("opencv", "fast"), ("opencv", "quality"),
                                          ("selectivesearch", "single")])
def test_rectangles_recovered(backend, mode):
    image = rectangles_image()
    boxes = selective_search(image, backend=backend, mode=mode, resize_width=0, min_size=5)
    assert boxes.dtype == torch.float32 and boxes.shape[1] == 4
    assert (_best_iou(boxes, rectangles_gt()) >= 0.7).all()
    assert len(torch.unique(boxes, dim=0)) == len(boxes)


def test_boxes_in_coordinates_of_the_image_passed_in():
    # Segment a copy 80 wide; boxes must come back in the 160-wide image's pixels.
    image = rectangles_image()
    boxes = selective_search(image, mode="fast", resize_width=80, min_size=5)
    assert (_best_iou(boxes, rectangles_gt()) >= 0.7).all()
    assert boxes[:, 0::2].max() <= 160 and boxes[:, 1::2].max() <= 120 and boxes.min() >= 0
    assert boxes[:, 2:].max() > 100  # not left in the 80-wide copy's coordinates


def test_same_seed_same_boxes():
    import skimage.data

    image = skimage.data.astronaut()
    for backend in ("opencv", "selectivesearch"):
        a = selective_search(image, backend=backend, resize_width=120, min_size=0, seed=7)
        b = selective_search(image, backend=backend, resize_width=120, min_size=0, seed=7)
        c = selective_search(image, backend=backend, resize_width=120, min_size=0, seed=8)
        assert len(a) > 10 and torch.equal(a, b)
        # The seed only reorders: same set of boxes, different ranking.
        assert not torch.equal(a, c) and torch.equal(a.unique(dim=0), c.unique(dim=0))


def test_min_size_drops_small_boxes():
    image = rectangles_image()
    boxes = selective_search(image, mode="fast", resize_width=0, min_size=45)
    sides = torch.minimum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
    assert len(boxes) > 0 and (sides >= 45).all()


def test_unique_boxes_keeps_first_of_each():
    boxes = torch.tensor([[0, 0, 5, 5], [1, 1, 6, 6], [0, 0, 5, 5], [2, 2, 9, 9], [1, 1, 6, 6]], dtype=torch.float32)
    expected = torch.tensor([[0, 0, 5, 5], [1, 1, 6, 6], [2, 2, 9, 9]], dtype=torch.float32)
    assert torch.equal(unique_boxes(boxes), expected)
    assert unique_boxes(torch.zeros((0, 4))).shape == (0, 4)


def test_bad_arguments():
    image = rectangles_image()
    with pytest.raises(ValueError, match="backend"):
        selective_search(image, backend="nope")
    with pytest.raises(ValueError, match="mode"):
        selective_search(image, mode="slow")


@pytest.mark.parametrize("backend,mode", [("opencv", "fast"), ("selectivesearch", "single")])
def test_doubled_superpixels_roughly_halve_the_boxes_on_photographs(backend, mode):
    """The paper: superpixel size 2x halves the boxes. Accept 40-65% over three photographs."""
    import skimage.data

    photos = [skimage.data.astronaut(), skimage.data.coffee(), skimage.data.rocket()]
    one = sum(len(selective_search(p, backend=backend, mode=mode, superpixel_scale=1.0)) for p in photos)
    two = sum(len(selective_search(p, backend=backend, mode=mode, superpixel_scale=2.0)) for p in photos)
    assert 0.40 <= two / one <= 0.65, (one, two)
