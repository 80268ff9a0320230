"""Fitting the box regressors of a detector run (R-CNN, appendix C): `detect fit-boxes` and the
last step of `detect train-detector`.

Shapes: N training pairs, R regions, K foreground classes, D a member's feature size, V views.

Features. Each member's regressor reads the region vector its own classifier reads: the
average-pooled inception 5b output (1024 x width values; `pool_features`), taken from the
same pass that scores the region, in the run's mode: R-CNN's warped crop, or in the shared mode
the region pooled from the image's trunk map (`detect.shared_mode`). R-CNN regressed from AlexNet's pool5 (its last convolutional
map, 9216 values); GoogLeNet has no fully connected layers between that map and the classifier,
so its pooled vector is both the last spatial summary and the classifier's input.

Training pairs. The cached proposals of each training image with IoU >= min_iou (R-CNN: 0.6)
to a ground-truth box (`match_for_regression`), run through the detector with its inference
settings. With inference.mirror the mirrored crops are pairs too, with the mirrored proposal and
ground truth (their tx is the unmirrored one negated), so that the regressor is fitted on both
views it is applied to at test time (`Detector` averages the two views' deltas, tx negated).

Ridge lambda. `choose_lambda` fits one regressor set per candidate on the training pairs and
keeps the one with the best COCO AP (0.5:0.95) on a validation split, scored once.
"""
from __future__ import annotations

import sys

from pathlib import Path
from typing import Iterator, Sequence

import torch
from torch import Tensor
from torchvision.ops import clip_boxes_to_image

from backbone.errors import InputError
from backbone.io import load_image
from backbone.progress import progress
from detect.box_regression import (REGRESSOR_FILE, BoxRegressor, decode_boxes, fit_box_regressor,
                                   match_for_regression, mean_deltas)
from detect.detector import RUN_JSON, Detector, select_detections
from detect.records import DetectionDataset, ImageRecord, skipped_line, usable_images
from proposals import ProposalCache


class NoPairs(InputError):
    """No proposal of the data set is close enough to a ground-truth box to train on."""


class _Pixels(torch.utils.data.Dataset):
    """Decoded images of the records, loaded by DataLoader workers while the network runs."""

    def __init__(self, records: Sequence[ImageRecord]):
        self.records = list(records)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int):
        return i, load_image(self.records[i].path)


def _as_is(item):
    """The item unchanged: the pixels stay a numpy array (the default would make a tensor)."""
    return item


def cached_images(dataset: DetectionDataset, cache: ProposalCache, workers: int = 0,
                  desc: str = "fit boxes") -> Iterator[tuple[ImageRecord, object, Tensor]]:
    """(record, pixels uint8 [H, W, 3], proposals Tensor[P, 4]) of each image of `dataset` that
    has cached proposals; the others (`detect proposals` skipped them, or was not run on them) are
    skipped and listed on stderr, as train-detector does. InputError when no image has any."""
    kept, missing = usable_images(dataset, cache)
    records = [dataset.images[i] for i in kept]
    if not records:
        raise InputError(cache.root, f"no cached proposals for the {len(missing)} images (run `detect proposals`)")
    if missing:
        print(skipped_line(missing), file=sys.stderr, flush=True)
    loader = torch.utils.data.DataLoader(_Pixels(records), batch_size=None, num_workers=workers,
                                         collate_fn=_as_is)
    for i, pixels in progress(loader, desc=desc, unit="image", total=len(records)):
        yield records[i], pixels, cache.get(records[i].key)[0].float().reshape(-1, 4)


def _mirror(boxes: Tensor, width: int) -> Tensor:
    """Boxes (Tensor[N, 4]) of an image `width` wide, flipped left-right."""
    return torch.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], dim=1)


def training_pairs(detector: Detector, dataset: DetectionDataset, cache: ProposalCache,
                   min_iou: float, workers: int = 0) -> tuple[list[Tensor], Tensor, Tensor, Tensor]:
    """Features of every member (one Tensor[N, D_m] each), proposals, ground-truth boxes
    (Tensor[N, 4] each) and labels (Tensor[N]) of the training pairs; with inference.mirror
    every pair also comes mirrored (view 1)."""
    feats: list[list[Tensor]] = [[] for _ in detector.members]
    props, gts, labels = [], [], []
    for rec, pixels, boxes in cached_images(dataset, cache, workers):
        keep, gt, lab = match_for_regression(boxes, rec.boxes, rec.labels, min_iou)
        if len(keep) == 0:
            continue
        _, member_feats = detector.score_with_features(pixels, boxes[keep])
        width = pixels.shape[1]
        for view in range(member_feats[0].shape[0]):
            for m, f in enumerate(member_feats):
                feats[m].append(f[view])
            props.append(_mirror(boxes[keep], width) if view else boxes[keep])
            gts.append(_mirror(gt, width) if view else gt)
            labels.append(lab)
    if not props:
        raise NoPairs(dataset.root, f"no proposal has IoU >= {min_iou} with a ground-truth box: nothing to fit")
    return [torch.cat(f) for f in feats], torch.cat(props), torch.cat(gts), torch.cat(labels)


def fit_members(pairs: tuple[list[Tensor], Tensor, Tensor, Tensor], num_classes: int,
                ridge_lambda: float, min_iou: float) -> list[BoxRegressor]:
    """One BoxRegressor per member from `training_pairs`' output."""
    feats, props, gts, labels = pairs
    return [fit_box_regressor(f, props, gts, labels, num_classes, ridge_lambda, min_iou) for f in feats]


def ensemble_boxes(regressors: Sequence[BoxRegressor], features: Sequence[Tensor], boxes: Tensor,
                   image_size: tuple[int, int]) -> Tensor:
    """The boxes (Tensor[R, 4]) moved by the mean deltas of every member and view (features:
    one Tensor[V, R, D_m] per member; view 1 mirrored), clipped: Tensor[R, K, 4]. The same
    arithmetic as `Detector.detect`, on features already computed."""
    return clip_boxes_to_image(decode_boxes(boxes, mean_deltas(regressors, features)), image_size)


def choose_lambda(detector: Detector, pairs: tuple, val: DetectionDataset, cache: ProposalCache,
                  lambdas: Sequence[float], min_iou: float, workers: int = 0) -> tuple[float, list[dict]]:
    """The lambda of `lambdas` whose regressors give the best COCO AP on `val` (every image's
    regions scored once). Returns (best lambda, one row per lambda and one for no regression:
    {"lambda", "coco_ap", "voc12_map50", "voc12_map70"})."""
    from detect.metrics import evaluate_map

    inf = detector.config.inference
    scored = [(rec.image_id, boxes, pixels.shape[:2], *detector.score_with_features(pixels, boxes))
              for rec, pixels, boxes in cached_images(val, cache, workers, desc="score val")]
    rows = []
    for lam in [None, *lambdas]:
        regs = fit_members(pairs, len(detector.classes), lam, min_iou) if lam is not None else None
        dets = {image_id: select_detections(ensemble_boxes(regs, feats, boxes, size) if regs else boxes,
                                            scores, inf.nms_iou, inf.score_threshold, inf.max_detections)
                for image_id, boxes, size, scores, feats in scored}
        rows.append({"lambda": lam, "coco_ap": evaluate_map(val, dets, "coco")["mAP"],
                     "voc12_map50": evaluate_map(val, dets, "voc12")["mAP"],
                     "voc12_map70": evaluate_map(val, dets, "voc12", iou_threshold=0.7)["mAP"]})
    best = max(rows[1:], key=lambda r: r["coco_ap"])
    return best["lambda"], rows


def save_regressors(run: str | Path, regressors: Sequence[BoxRegressor]) -> list[Path]:
    """Write member i's regressor into the run's i-th member folder (RUN/members/<i>/)."""
    from backbone.io import read_json

    members = read_json(Path(run) / RUN_JSON)["members"]
    if len(members) != len(regressors):
        raise ValueError(f"{len(regressors)} regressors for {len(members)} members")
    paths = [Path(run) / m / REGRESSOR_FILE for m in members]
    for reg, path in zip(regressors, paths):
        reg.save(path)
    return paths


def fit_run(run: str | Path, dataset: DetectionDataset, cache_dir: str | Path, ridge_lambda: float,
            min_iou: float, device: str = "auto", batch_size: int = 0, workers: int = 0,
            val: DetectionDataset | None = None, lambdas: Sequence[float] = (), required: bool = True) -> dict | None:
    """Fit and save the box regressors of the detector run `run` on `dataset`'s cached proposals.

    With `val` and `lambdas` the lambda is chosen on `val` (`choose_lambda`), else `ridge_lambda`.
    Returns {"lambda", "pairs", "files", "table" (rows of choose_lambda or [])}; with
    required=False None (and nothing written) when no proposal makes a training pair.
    """
    cache = ProposalCache(cache_dir)
    if not cache.entries.is_dir():
        raise InputError(cache_dir, "not a proposal cache (no boxes/ folder); make one with `detect proposals`")
    settings = {"batch_size": batch_size} if batch_size else {}
    detector = Detector.load(run, device, box_regression=False, **settings)
    if dataset.classes != detector.classes:
        raise InputError(dataset.root, f"classes {dataset.classes} differ from the run's {detector.classes}")
    try:
        pairs = training_pairs(detector, dataset, cache, min_iou, workers)
    except NoPairs:
        if required:
            raise
        return None
    table = []
    if val is not None and lambdas:
        ridge_lambda, table = choose_lambda(detector, pairs, val, cache, lambdas, min_iou, workers)
    files = save_regressors(run, fit_members(pairs, len(detector.classes), ridge_lambda, min_iou))
    return {"lambda": ridge_lambda, "pairs": len(pairs[1]), "files": files, "table": table}
