"""Detection mAP: ILSVRC DET, Pascal VOC 2007 and 2010+, vectorised; COCO through pycocotools.

Shapes: G ground-truth boxes, D detections, P (detection, ground truth) pairs of the same image
and class, K classes. "Group" means one (image, class) pair: matching never crosses groups.

Protocols (REFERENCE section 6):
- ilsvrc: in decreasing score order a detection takes the unmatched ground-truth box of its
  group with the highest IoU among those with IoU >= min(0.5, w*h / ((w+10)(h+10))), w and h
  that box's size; widths, heights and areas use the inclusive +1 pixel convention (x2 - x1 + 1).
  Every box counts (ILSVRC annotations have no difficult flag). All-points AP.
- voc07 / voc12: the official devkit's `VOCevaldet.m`. A detection takes the box of its group
  with the highest IoU (matched or not; the first such box on a tie), IoU on inclusive pixel
  sizes (+1 on widths, heights and the intersection, as ILSVRC); IoU >= the threshold (0.5
  unless asked otherwise) to a not yet matched box is a true positive, to a matched one a false
  positive (a duplicate), to a difficult box neither. voc07: 11-point AP at the devkit's recall
  points (`VOC07_RECALLS`); voc12: area under the monotone precision envelope (`VOCap.m`).
- voc07-continuous / voc12-continuous: the same with IoU in continuous coordinates (no +1, the
  project's own box convention): what voc07 / voc12 computed before they followed the devkit,
  kept for comparison with numbers measured that way.
- coco: pycocotools' COCOeval (bbox), all 12 numbers; difficult boxes go in as iscrowd.

Ties in score keep the data set's image order, then the order within an image. A class with no
ground truth has AP NaN and is left out of the mean.
"""
from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass

import numpy as np
import torch

from detect.data import DetectionDataset
from detect.results import Detections, detections_to_coco

VOC_PROTOCOLS = ("voc07", "voc12", "voc07-continuous", "voc12-continuous")
PROTOCOLS = ("ilsvrc", *VOC_PROTOCOLS, "coco")
# VOCevaldet.m's `for t=0:0.1:1`. MATLAB builds a colon range from both ends (a + k*d up to
# the middle, b - k*d after it), so its 0.3 is 3*0.1 = 0.30000000000000004: a recall of exactly
# 3/10 does not reach that point. These are the devkit's 11 values bit for bit (np.arange's differ).
VOC07_RECALLS = np.array([k * 0.1 for k in range(6)] + [1 - k * 0.1 for k in range(4, -1, -1)])
COCO_STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl",
                   "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


@dataclass
class _Boxes:
    """Boxes of a whole data set, flat: `group` = image position * (K + 1) + label."""
    group: np.ndarray      # [n] int64
    label: np.ndarray      # [n] int64 1..K
    boxes: np.ndarray      # [n, 4] float64
    flag: np.ndarray       # [n] ground truth: difficult (bool); detections: score (float64)


def evaluate_map(dataset: DetectionDataset, detections: Detections, protocol: str,
                 iou_threshold: float = 0.5) -> dict:
    """Mean average precision of `detections` on `dataset` under `protocol`; `iou_threshold`
    (0 < t <= 1) is the VOC protocols' match threshold (the others fix their own).

    Returns {"protocol", "iou_threshold" (VOC protocols), "mAP", "per_class": {name: AP}, "num_gt": {name: n}, "num_det":
    {name: n}, "curves": {name: {"recall": ndarray, "precision": ndarray}}}; for coco also
    "stats": {the 12 COCOeval numbers by name}; its per-class AP and mAP are AP@[.5:.95] and
    its curves are at IoU 0.5 over the 101 recall points. Images missing from `detections`
    have no detections.
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol '{protocol}', expected one of {PROTOCOLS}")
    if protocol in VOC_PROTOCOLS and not 0.0 < iou_threshold <= 1.0:
        raise ValueError(f"IoU threshold must be in (0, 1], got {iou_threshold}")
    if protocol not in VOC_PROTOCOLS and iou_threshold != 0.5:
        raise ValueError(f"protocol '{protocol}' fixes its own IoU thresholds; only the VOC "
                         f"protocols {VOC_PROTOCOLS} take another")
    if protocol == "coco":
        return _evaluate_coco(dataset, detections)
    gt, det = _flatten(dataset, detections)
    order = np.argsort(-det.flag, kind="stable")
    group, label = det.group[order], det.label[order]
    # Only detections whose group has ground truth need matching; the rest are false positives.
    idx = np.flatnonzero(_has_ground_truth(group, gt.group))
    tp, counted = np.zeros(len(group), bool), np.ones(len(group), bool)
    if protocol == "ilsvrc":
        tp[idx] = _match_ilsvrc(group[idx], det.boxes[order[idx]], gt)
        npos = np.bincount(gt.label, minlength=len(dataset.classes) + 1)
    else:
        plus_one = not protocol.endswith("-continuous")
        tp[idx], counted[idx] = _match_voc(group[idx], det.boxes[order[idx]], gt, plus_one, iou_threshold)
        npos = np.bincount(gt.label[~gt.flag], minlength=len(dataset.classes) + 1)
    report = _summarise(dataset, protocol, label[counted], tp[counted], npos)
    if protocol in VOC_PROTOCOLS:
        report["iou_threshold"] = float(iou_threshold)
    return report


def _has_ground_truth(group: np.ndarray, gt_group: np.ndarray) -> np.ndarray:
    """[D] bool: does the group of each detection hold ground truth? A lookup table over group
    ids (images x (K+1) bytes) when that is small, else a sorted search."""
    size = int(max(group.max(initial=0), gt_group.max(initial=0))) + 1
    if size <= 200_000_000:
        table = np.zeros(size, bool)
        table[gt_group] = True
        return table[group]
    known = np.unique(gt_group)
    found = np.searchsorted(known, group).clip(max=max(len(known) - 1, 0))
    return known[found] == group if len(known) else np.zeros(len(group), bool)


def _flatten(dataset: DetectionDataset, detections: Detections) -> tuple[_Boxes, _Boxes]:
    """Concatenate ground truth and detections of all images, in data set order."""
    unknown = set(detections) - {rec.image_id for rec in dataset.images}
    if unknown:
        raise ValueError(f"detections for image ids not in the data set: {sorted(unknown)[:5]}")
    recs = dataset.images
    gt = _stack(dataset, list(range(len(recs))), [r.labels for r in recs], [r.boxes for r in recs],
                _cat([r.difficult for r in recs], bool))
    have = [(pos, detections[r.image_id]) for pos, r in enumerate(recs) if r.image_id in detections]
    det = _stack(dataset, [pos for pos, _ in have], [d["labels"] for _, d in have],
                 [d["boxes"] for _, d in have], _cat([d["scores"] for _, d in have], np.float64))
    return gt, det


def _stack(dataset: DetectionDataset, positions: list[int], labels: list, boxes: list,
           flag: np.ndarray) -> _Boxes:
    k1 = len(dataset.classes) + 1
    label = _cat(labels, np.int64)
    if len(label) and (label.min() < 1 or label.max() >= k1):
        raise ValueError(f"labels must be in 1..{k1 - 1}")
    counts = np.fromiter((t.shape[0] for t in labels), np.int64, len(labels))
    image = np.repeat(np.asarray(positions, np.int64), counts)
    box = _cat(boxes, np.float64).reshape(-1, 4)
    if not len(image) == len(label) == len(box) == len(flag):
        raise ValueError("boxes, labels and scores (or difficult flags) differ in length")
    return _Boxes(group=image * k1 + label, label=label, boxes=box, flag=flag)


def _cat(tensors: list, dtype: type) -> np.ndarray:
    """One flat array of a list of tensors (empty when the list is)."""
    if not tensors:
        return np.zeros(0, dtype)
    return torch.cat(tensors).detach().cpu().numpy().astype(dtype).reshape(-1)


def _pairs(det_group: np.ndarray, gt: _Boxes) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every (detection, ground truth) pair of the same group.

    Returns pair_det [P], pair_gt [P] (ground-truth indices in annotation order within a
    detection's run) and count [D], the number of pairs of each detection; pairs come ordered
    by detection, so detection i owns the run starting at cumsum(count)[i] - count[i].
    """
    gt_order = np.argsort(gt.group, kind="stable")
    sorted_groups = gt.group[gt_order]
    start = np.searchsorted(sorted_groups, det_group, "left")
    count = np.searchsorted(sorted_groups, det_group, "right") - start
    pair_det = np.repeat(np.arange(len(det_group)), count)
    offset = np.arange(len(pair_det)) - np.repeat(np.cumsum(count) - count, count)
    return pair_det, gt_order[np.repeat(start, count) + offset], count


def _pair_iou(a: np.ndarray, b: np.ndarray, plus_one: bool) -> np.ndarray:
    """IoU of boxes a[i] and b[i] (both [P, 4]); `plus_one`: the devkits' inclusive pixel sizes
    (ILSVRC and VOC). Pairs that do not overlap have IoU 0.

    Element-wise rather than torchvision's box_iou matrix: pairs exist only within a group.
    """
    one = 1.0 if plus_one else 0.0
    iw = np.minimum(a[:, 2], b[:, 2]) - np.maximum(a[:, 0], b[:, 0]) + one
    ih = np.minimum(a[:, 3], b[:, 3]) - np.maximum(a[:, 1], b[:, 1]) + one
    inter = np.where((iw > 0) & (ih > 0), iw * ih, 0.0)
    union = ((a[:, 2] - a[:, 0] + one) * (a[:, 3] - a[:, 1] + one)
             + (b[:, 2] - b[:, 0] + one) * (b[:, 3] - b[:, 1] + one) - inter)
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def _segment_argmax(values: np.ndarray, count: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Max and first arg-max of each consecutive run of `values` ([P]); run lengths `count`
    ([S], all > 0). Returns (max [S], position in `values` [S])."""
    starts = np.cumsum(count) - count
    best = np.maximum.reduceat(values, starts)
    hits = np.flatnonzero(values == np.repeat(best, count))
    run = np.repeat(np.arange(len(count)), count)[hits]
    first = np.r_[True, run[1:] != run[:-1]]
    return best, hits[first]


def _match_voc(group: np.ndarray, boxes: np.ndarray, gt: _Boxes, plus_one: bool,
               threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """VOC matching of score-sorted detections (group [H], boxes [H, 4]) that all have ground
    truth in their group: (true positive [H], counted [H]); a detection whose best box is
    difficult is not counted at all. `plus_one`: inclusive pixel sizes in IoU (the devkit)."""
    tp, counted = np.zeros(len(group), bool), np.ones(len(group), bool)
    pair_det, pair_gt, count = _pairs(group, gt)
    if len(pair_det) == 0:
        return tp, counted
    best, pos = _segment_argmax(_pair_iou(boxes[pair_det], gt.boxes[pair_gt], plus_one), count)
    best_gt = pair_gt[pos]
    hit = best >= threshold  # >=, as the devkit; threshold > 0, so boxes apart never match
    counted[hit & gt.flag[best_gt]] = False
    claim = np.flatnonzero(hit & ~gt.flag[best_gt])
    # The first (highest-scoring) detection to claim a box takes it; later ones are duplicates.
    _, first = np.unique(best_gt[claim], return_index=True)
    tp[claim[first]] = True
    return tp, counted


def _match_ilsvrc(group: np.ndarray, boxes: np.ndarray, gt: _Boxes) -> np.ndarray:
    """ILSVRC greedy matching of score-sorted detections (group [H], boxes [H, 4]) that all
    have ground truth in their group: true positive [H].

    A detection's choice depends on which boxes earlier detections of its group took, so the
    groups advance in lock step: round r matches the r-th best detection of every group at
    once, vectorised over groups. Rounds = the largest number of detections in one group.
    """
    gw = gt.boxes[:, 2] - gt.boxes[:, 0] + 1.0
    gh = gt.boxes[:, 3] - gt.boxes[:, 1] + 1.0
    thr = np.minimum(0.5, gw * gh / ((gw + 10.0) * (gh + 10.0)))
    tp = np.zeros(len(group), bool)
    pair_det, pair_gt, count = _pairs(group, gt)
    if len(pair_det) == 0:
        return tp
    iou = _pair_iou(boxes[pair_det], gt.boxes[pair_gt], plus_one=True)
    ok = iou >= thr[pair_gt]
    starts = np.cumsum(count) - count
    # Detections that reach no box's threshold are false positives whatever happens before them.
    live = np.flatnonzero(np.logical_or.reduceat(ok, starts))
    if len(live) == 0:
        return tp
    rank = _rank_in_group(group[live])
    by_round = np.lexsort((group[live], rank))
    live, rank, n = live[by_round], rank[by_round], count[live[by_round]]
    # Pair runs of the live detections in round order: run j holds the pairs of live[j].
    run_start = np.cumsum(n) - n
    run_pairs = np.repeat(starts[live], n) + np.arange(n.sum()) - np.repeat(run_start, n)
    matched = np.zeros(len(gt.label), bool)
    bounds = np.searchsorted(rank, np.arange(rank[-1] + 2))
    for r in range(rank[-1] + 1):
        lo, hi = bounds[r], bounds[r + 1]
        p = run_pairs[run_start[lo]:run_start[hi - 1] + n[hi - 1]]
        cand = np.where(ok[p] & ~matched[pair_gt[p]], iou[p], -np.inf)
        best, pos = _segment_argmax(cand, n[lo:hi])
        hit = best > -np.inf
        matched[pair_gt[p[pos[hit]]]] = True
        tp[live[lo:hi][hit]] = True
    return tp


def _rank_in_group(group: np.ndarray) -> np.ndarray:
    """Position of each element among the elements of its group, in the given order."""
    order = np.argsort(group, kind="stable")
    g = group[order]
    first = np.searchsorted(g, g, "left")
    rank = np.empty(len(group), np.int64)
    rank[order] = np.arange(len(group)) - first
    return rank


def average_precision(tp: np.ndarray, npos: int, protocol: str) -> tuple[float, np.ndarray, np.ndarray]:
    """AP of one class from its score-sorted true-positive flags tp [n] and `npos` ground
    truth boxes: voc07 (and voc07-continuous) 11-point at `VOC07_RECALLS`, else all points
    under the monotone envelope.
    Returns (AP, recall [n], precision [n]); AP is NaN when npos is 0."""
    ctp = np.cumsum(tp, dtype=np.float64)
    cfp = np.cumsum(~tp, dtype=np.float64)
    precision = ctp / np.maximum(ctp + cfp, np.finfo(np.float64).eps)
    recall = ctp / npos if npos > 0 else np.zeros_like(ctp)
    if npos == 0:
        return float("nan"), recall, precision
    if protocol.startswith("voc07"):
        # The devkit adds p/11 point by point; summing first differs only in the last bits.
        points = [precision[recall >= t].max(initial=0.0) for t in VOC07_RECALLS]
        return float(np.sum(points) / 11.0), recall, precision
    mrec = np.concatenate([[0.0], recall, [1.0]])
    mpre = np.concatenate([[0.0], precision, [0.0]])
    envelope = np.maximum.accumulate(mpre[::-1])[::-1]
    return float(np.sum((mrec[1:] - mrec[:-1]) * envelope[1:])), recall, precision


def _summarise(dataset: DetectionDataset, protocol: str, label: np.ndarray, tp: np.ndarray,
               npos: np.ndarray) -> dict:
    """Per-class AP from score-sorted labels [D] and true-positive flags [D]."""
    # Stable sort keeps score order within a class; int16 keys let numpy use a radix sort.
    by_class = np.argsort(label.astype(np.int16) if len(dataset.classes) < 2 ** 15 else label, kind="stable")
    bounds = np.searchsorted(label[by_class], np.arange(len(dataset.classes) + 2))
    per_class, num_gt, num_det, curves = {}, {}, {}, {}
    for k, name in enumerate(dataset.classes, 1):
        flags = tp[by_class[bounds[k]:bounds[k + 1]]]
        ap, recall, precision = average_precision(flags, int(npos[k]), protocol)
        per_class[name], num_gt[name], num_det[name] = ap, int(npos[k]), len(flags)
        curves[name] = {"recall": recall, "precision": precision}
    aps = [ap for ap in per_class.values() if not np.isnan(ap)]
    return {"protocol": protocol, "mAP": float(np.mean(aps)) if aps else float("nan"),
            "per_class": per_class, "num_gt": num_gt, "num_det": num_det, "curves": curves}


def _evaluate_coco(dataset: DetectionDataset, detections: Detections) -> dict:
    """pycocotools' COCOeval on in-memory copies of the files `write_coco` and
    `write_detections` would write (the same numbers as running it on those files)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    from detect.data_coco import coco_dict

    gt_doc = coco_dict(dataset)
    results = detections_to_coco(detections, dataset)
    for n, r in enumerate(results, 1):  # what COCO.loadRes adds to bbox results
        r.update(id=n, area=r["bbox"][2] * r["bbox"][3], iscrowd=0)
    quiet = contextlib.redirect_stdout(io.StringIO())
    with quiet:
        coco_gt, coco_dt = COCO(), COCO()
        coco_gt.dataset = gt_doc
        coco_dt.dataset = {"images": gt_doc["images"], "categories": gt_doc["categories"],
                           "annotations": results}
        coco_gt.createIndex()
        coco_dt.createIndex()
        ev = COCOeval(coco_gt, coco_dt, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return _coco_report(dataset, ev)


def _coco_report(dataset: DetectionDataset, ev) -> dict:
    precision = ev.eval["precision"]  # [T IoUs, R recall points, K, A areas, M max dets]
    cat_index = {cid: i for i, cid in enumerate(ev.params.catIds)}
    per_class, num_gt, num_det, curves = {}, {}, {}, {}
    for name, cid in zip(dataset.classes, dataset.category_ids):
        p = precision[:, :, cat_index[cid], 0, -1]
        per_class[name] = float(p[p > -1].mean()) if (p > -1).any() else float("nan")
        num_gt[name] = len(ev.cocoGt.getAnnIds(catIds=[cid], iscrowd=False))
        num_det[name] = len(ev.cocoDt.getAnnIds(catIds=[cid]))
        curves[name] = {"recall": np.asarray(ev.params.recThrs), "precision": np.maximum(p[0], 0.0)}
    return {"protocol": "coco", "mAP": float(ev.stats[0]), "per_class": per_class,
            "num_gt": num_gt, "num_det": num_det, "curves": curves,
            "stats": {name: float(v) for name, v in zip(COCO_STAT_NAMES, ev.stats)}}
