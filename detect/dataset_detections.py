"""A detector over every image of a data set (`detect eval --map --model`, validation mAP)."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from torch import Tensor

if TYPE_CHECKING:
    from detect.detector import Detector


def detect_dataset(detector: "Detector", dataset: Any, batch_size: int | None = None,
                   proposals_cache: Any = None, progress: bool = True,
                   proposal_workers: int | None = None) -> dict[int, dict[str, Tensor]]:
    """Run `detector` over every image of a DetectionDataset: {image_id: detections}.

    proposals_cache: a proposals.ProposalCache; images it lacks get proposals computed here.
    batch_size: regions per forward pass for this call (default: the detector's config).
    proposal_workers: without a cache, processes that compute the next images' proposals while
        the network scores this one (detect.overlap; 0 = inline; default cores - 1, at least 1).
    Raises InputError on an unreadable image (an evaluation must not skip images silently).
    """
    from tqdm import tqdm

    from detect.overlap import default_proposal_workers, proposals_ahead

    inf = detector.config.inference
    saved, inf.batch_size = inf.batch_size, batch_size or inf.batch_size
    workers = default_proposal_workers() if proposal_workers is None else proposal_workers
    ahead = proposals_ahead(detector, [rec.path for rec in dataset.images],
                            workers if proposals_cache is None else 0)
    results = {}
    try:
        for rec, boxes in tqdm(zip(dataset.images, ahead), desc="detect", unit="image",
                               total=len(dataset.images), disable=not progress):
            cached = proposals_cache.get(rec.key) if proposals_cache is not None else None
            boxes = cached[0] if cached is not None else boxes
            results[rec.image_id] = detector.detect(rec.path, boxes)
    finally:
        ahead.close()
        inf.batch_size = saved
    return results
