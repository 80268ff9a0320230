"""Proposal recall: the fraction of ground-truth boxes that some proposal covers.

A ground-truth box counts as recalled at IoU t when its best proposal overlaps it with
IoU >= t. Average recall (AR) is the mean recall over t = 0.50, 0.55, ..., 0.95 (Hosang et
al. 2015, as COCO reports it).

B images, P_b proposals and G_b ground-truth boxes in image b; boxes xyxy pixels.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torchvision.ops import box_iou

AR_THRESHOLDS = torch.arange(0.5, 0.951, 0.05)


def best_overlaps(proposals: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """For each ground-truth box (Tensor[G, 4]), the IoU of its best proposal (Tensor[P, 4]) -> [G]."""
    if len(gt) == 0:
        return torch.zeros(0)
    if len(proposals) == 0:
        return torch.zeros(len(gt))
    return box_iou(gt.float(), proposals.float()).max(dim=1).values


def recall_stats(proposals: Sequence[torch.Tensor], gt: Sequence[torch.Tensor]) -> dict:
    """Recall of per-image proposals against per-image ground truth.

    Args:
        proposals: B tensors [P_b, 4].
        gt: B tensors [G_b, 4] (the same images, same order).

    Returns:
        dict with images, gt_boxes, boxes_per_image, recall@0.5, recall@0.7, AR
        (recalls as fractions in [0, 1]; 0 when there is no ground truth).
    """
    if len(proposals) != len(gt):
        raise ValueError(f"{len(proposals)} proposal sets but {len(gt)} ground-truth sets")
    best = torch.cat([best_overlaps(p, g) for p, g in zip(proposals, gt)] or [torch.zeros(0)])
    n_boxes = sum(len(p) for p in proposals)

    def recall_at(t: float) -> float:
        # The tolerance keeps an IoU of exactly t (e.g. 0.5 computed as 0.49999997) recalled.
        return float((best >= t - 1e-6).float().mean()) if len(best) else 0.0

    return {
        "images": len(proposals),
        "gt_boxes": len(best),
        "boxes_per_image": n_boxes / max(len(proposals), 1),
        "recall@0.5": recall_at(0.5),
        "recall@0.7": recall_at(0.7),
        "AR": sum(recall_at(float(t)) for t in AR_THRESHOLDS) / len(AR_THRESHOLDS),
    }
