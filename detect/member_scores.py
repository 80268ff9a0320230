"""Each member of an ensemble scoring cached proposals on its own: what the demo build's
evaluate step needs to measure members and their mean
without running the network twice (the ensemble's scores are the mean of its members',
exactly `Detector.score_regions`)."""
from __future__ import annotations

from typing import Iterator, Sequence

import torch
from torch import Tensor

from backbone.errors import InputError
from backbone.progress import progress
from detect.data import ImageRecord
from detect.detector import Detector
from proposals import ProposalCache


def single_members(detectors: Sequence[Detector]) -> list[Detector]:
    """One single-member Detector per member of `detectors`, in order, all with the first
    detector's classes and config (its inference settings, mirror included)."""
    first = detectors[0]
    return [Detector([member], first.classes, first.config) for det in detectors for member in det.members]


def member_probs(singles: Sequence[Detector], records: Sequence[ImageRecord], cache_dir: str,
                 desc: str = "score regions", position: int = 0) -> Iterator[tuple[ImageRecord, Tensor, Tensor]]:
    """(record, boxes [R, 4], probs [M, R, K+1]) per image: every member's softmax over the
    image's cached proposals."""
    cache = ProposalCache(cache_dir)
    for rec in progress(records, desc=desc, unit="image", position=position):
        cached = cache.get(rec.key)
        if cached is None:
            raise InputError(cache_dir, f"no cached proposals for image '{rec.key}' (run `detect proposals`)")
        boxes = cached[0].float()
        yield rec, boxes, torch.stack([single.score_regions(rec.path, boxes) for single in singles])
