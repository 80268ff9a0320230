"""R-CNN's region sampling for fine-tuning: label every region, draw balanced mini-batches.

Shapes: P proposals, G ground-truth boxes, N = G + P labelled regions of one image,
n regions drawn from one image, K foreground classes (labels 1..K, 0 = background).

Each image contributes its ground-truth boxes (always foreground) and its cached proposals.
A region takes the class of the ground-truth box it overlaps most when that IoU is at least
`fg_iou`; it is background when its best IoU lies in [bg_iou_low, bg_iou_high); otherwise it
is ignored (label -1). A mini-batch holds `batch_regions` regions of which `fg_per_batch` are
foreground (when the images have that many), spread evenly over its images, each region
mirrored with probability 1/2. All randomness comes from generators seeded by
(seed, epoch, step[, position]), so a resumed run draws exactly what an uninterrupted one
would, and a process under DDP draws its images' regions as one process would.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
import torch
from torch import Tensor
from torchvision.ops import box_iou

IGNORE = -1  # label of a region that is neither foreground nor background
# What a seed is for: the last part of mix_seed's tuple, so that streams never coincide.
SEED_REGIONS, SEED_HEAD, SEED_DROPOUT = 1, 2, 3


@dataclass
class LabelledRegions:
    boxes: Tensor  # [N, 4] float32 xyxy: the G ground-truth boxes first, then the P proposals
    labels: Tensor  # [N] int64: 1..K foreground, 0 background, -1 ignored

    @property
    def num_fg(self) -> int:
        return int((self.labels > 0).sum())

    @property
    def num_bg(self) -> int:
        return int((self.labels == 0).sum())


@dataclass
class RegionSample:
    image: int  # index of the image (into the list the batch was drawn from)
    boxes: Tensor  # [n, 4] float32 xyxy regions to crop from that image
    labels: Tensor  # [n] int64 targets, 0 = background
    flip: Tensor  # [n] bool: mirror the crop horizontally


def label_regions(proposals: Tensor, gt_boxes: Tensor, gt_labels: Tensor, fg_iou: float = 0.5,
                  bg_iou_high: float = 0.5, bg_iou_low: float = 0.0) -> LabelledRegions:
    """Label the ground-truth boxes and the proposals of one image (R-CNN's rule).

    proposals (Tensor[P, 4]), gt_boxes (Tensor[G, 4]) xyxy; gt_labels (Tensor[G]) in 1..K.
    Returns LabelledRegions with N = G + P rows, ground truth first.
    """
    boxes = torch.cat([gt_boxes.float().reshape(-1, 4), proposals.float().reshape(-1, 4)])
    labels = torch.full((len(boxes),), IGNORE, dtype=torch.int64)
    if len(gt_boxes) == 0:  # an image without objects: every region is background
        labels[:] = 0 if bg_iou_low <= 0.0 else IGNORE
        return LabelledRegions(boxes, labels)
    best_iou, best_gt = box_iou(boxes, gt_boxes.float().reshape(-1, 4)).max(dim=1)
    labels[(best_iou >= bg_iou_low) & (best_iou < bg_iou_high)] = 0
    fg = best_iou >= fg_iou
    labels[fg] = gt_labels.long()[best_gt[fg]]
    labels[: len(gt_boxes)] = gt_labels.long()  # a ground-truth box is its own class, always
    return LabelledRegions(boxes, labels)


def mix_seed(*parts: int) -> int:
    """A well-mixed 63-bit seed from non-negative integers, e.g. (seed, epoch, step, SEED_REGIONS)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1, np.uint64)[0] >> 1)


def split_quota(total: int, parts: int) -> list[int]:
    """`total` split into `parts` near-equal integers, the larger ones first (10, 3 -> 4, 3, 3)."""
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def epoch_batches(num_images: int, images_per_batch: int, seed: int, epoch: int) -> list[list[int]]:
    """The images of each step of one epoch: a seeded shuffle cut into groups of `images_per_batch`.

    An incomplete last group is dropped (every step then has the same number of images, which
    lets DDP split a step evenly); a data set smaller than one group gives one step of all.
    """
    g = torch.Generator().manual_seed(mix_seed(seed, epoch))
    order = torch.randperm(num_images, generator=g).tolist()
    if num_images <= images_per_batch:
        return [order]
    steps = num_images // images_per_batch
    return [order[i * images_per_batch:(i + 1) * images_per_batch] for i in range(steps)]


class EpochSteps:
    """Batch sampler of fine-tuning: per step, this process's share of `epoch_batches`.

    Yields nothing until `set_epoch(seed, epoch)` (so a persistent loader's workers can be
    started early, `backbone.loaders.start_workers`); `steps` is the whole epoch's image
    groups (every process's), which the sampling of each step needs.
    """

    def __init__(self, num_images: int, images_per_batch: int, rank: int = 0, world_size: int = 1):
        self.num_images, self.images_per_batch = num_images, images_per_batch
        self.rank, self.world_size = rank, world_size
        self.steps: list[list[int]] = []

    def set_epoch(self, seed: int, epoch: int) -> None:
        self.steps = epoch_batches(self.num_images, self.images_per_batch, seed, epoch)

    def __iter__(self):
        return iter([s[self.rank::self.world_size] for s in self.steps])

    def __len__(self) -> int:
        return len(self.steps)


def _draw(pool: Tensor, k: int, g: torch.Generator) -> Tensor:
    """`k` indices from `pool`: without replacement when it is big enough, else all plus repeats."""
    if k <= 0 or len(pool) == 0:
        return pool[:0]
    if k <= len(pool):
        return pool[torch.randperm(len(pool), generator=g)[:k]]
    extra = pool[torch.randint(len(pool), (k - len(pool),), generator=g)]
    return torch.cat([pool, extra])


def sample_image_regions(labels: Tensor, num_regions: int, num_fg: int, g: torch.Generator) -> Tensor:
    """Indices of `num_regions` regions of one image, up to `num_fg` of them foreground.

    labels (Tensor[N]) as in LabelledRegions. Missing foreground is made up with background;
    a shortage of both is made up by repeating regions. Returns Tensor[num_regions] int64.
    """
    fg_pool = torch.nonzero(labels > 0).flatten()
    bg_pool = torch.nonzero(labels == 0).flatten()
    if len(fg_pool) + len(bg_pool) == 0:
        raise ValueError("image has no labelled regions")
    fg = _draw(fg_pool, min(num_fg, len(fg_pool)), g)
    bg = _draw(bg_pool, num_regions - len(fg), g)
    if len(fg) + len(bg) < num_regions:  # no background at all: repeat foreground
        fg = torch.cat([fg, _draw(fg_pool, num_regions - len(fg) - len(bg), g)])
    return torch.cat([fg, bg])


def sample_minibatch(images: Mapping[int, LabelledRegions] | Sequence[LabelledRegions],
                     image_indices: Sequence[int], batch_regions: int, fg_per_batch: int, mirror: bool,
                     seed: int, epoch: int, step: int,
                     positions: Sequence[int] | None = None) -> list[RegionSample]:
    """One R-CNN mini-batch: `batch_regions` regions over `image_indices`, `fg_per_batch` foreground.

    images: labelled regions by image index (at least those drawn); image_indices: the images
    of this step; positions: draw only for these positions in `image_indices` (a process's
    share under DDP; default all). Each image has its own generator, seeded by (seed, epoch,
    step, position), so a share is drawn exactly as in the whole batch. Returns one
    RegionSample per image drawn; an image without labelled regions gives none.
    """
    quotas = split_quota(batch_regions, len(image_indices))
    fg_quotas = split_quota(fg_per_batch, len(image_indices))
    out = []
    for pos in (range(len(image_indices)) if positions is None else positions):
        i, n = image_indices[pos], quotas[pos]
        if images[i].num_fg + images[i].num_bg == 0:
            continue
        g = torch.Generator().manual_seed(mix_seed(seed, epoch, step, SEED_REGIONS, pos))
        idx = sample_image_regions(images[i].labels, n, fg_quotas[pos], g)
        flip = torch.rand(n, generator=g) < 0.5 if mirror else torch.zeros(n, dtype=torch.bool)
        out.append(RegionSample(i, images[i].boxes[idx], images[i].labels[idx], flip))
    return out
