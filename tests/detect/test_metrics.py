"""mAP: hand-computed cases per protocol, plain-loop cross-checks (ILSVRC's rule and a line by
line port of the VOC devkit's VOCevaldet.m), pycocotools cross-check."""
from __future__ import annotations

import json

import contextlib
import io
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from detect.data import DetectionDataset, ImageRecord, load_dataset, write_coco
from detect.metrics import COCO_STAT_NAMES, VOC07_RECALLS, average_precision, evaluate_map
from detect.results import read_detections, write_detections


def make_dataset(images: list[list[tuple]], classes=("a", "b", "c")) -> DetectionDataset:
    """images[i] = [(box, label, difficult), ...]."""
    records = []
    for i, objs in enumerate(images):
        records.append(ImageRecord(
            image_id=i, key=f"{i:06d}", path=Path(f"/nowhere/{i:06d}.jpg"), width=1000, height=1000,
            boxes=torch.tensor([o[0] for o in objs], dtype=torch.float32).reshape(-1, 4),
            labels=torch.tensor([o[1] for o in objs], dtype=torch.int64),
            difficult=torch.tensor([o[2] for o in objs], dtype=torch.bool)))
    return DetectionDataset(list(classes), records, Path("/nowhere"), list(range(1, len(classes) + 1)), [])


def dets(rows: list[tuple]) -> dict:
    """rows = [(box, score, label), ...] -> one image's detections."""
    return {"boxes": torch.tensor([r[0] for r in rows], dtype=torch.float32).reshape(-1, 4),
            "scores": torch.tensor([r[1] for r in rows], dtype=torch.float32),
            "labels": torch.tensor([r[2] for r in rows], dtype=torch.int64)}


# ----------------------------------------------------------------------------- hand-computed


def test_small_box_ilsvrc_threshold():
    # GT [0,0,9,9] is 10x10 inclusive: threshold min(.5, 100/400) = .25. The detection [0,0,9,2]
    # is 10x3 inclusive: IoU 30/100 = .3 -> correct under ILSVRC, below VOC's fixed .5 (and
    # 18/81 = .22 in continuous coordinates) -> a false positive.
    ds = make_dataset([[([0, 0, 9, 9], 1, False)]], classes=("a",))
    d = {0: dets([([0, 0, 9, 2], 0.9, 1)])}
    assert evaluate_map(ds, d, "ilsvrc")["per_class"]["a"] == 1.0
    assert evaluate_map(ds, d, "voc12")["per_class"]["a"] == 0.0
    assert evaluate_map(ds, d, "voc12-continuous")["per_class"]["a"] == 0.0
    # A large box keeps the 0.5 threshold: 100x100 box, detection of IoU 0.49 fails.
    ds = make_dataset([[([0, 0, 99, 99], 1, False)]], classes=("a",))
    assert evaluate_map(ds, {0: dets([([0, 0, 99, 48], 0.9, 1)])}, "ilsvrc")["mAP"] == 0.0  # 4900/10000


def test_iou_exactly_half_counts():
    ds = make_dataset([[([0, 0, 10, 10], 1, False)]], classes=("a",))
    d = {0: dets([([0, 0, 10, 5], 0.9, 1)])}  # continuous IoU 50/100 exactly
    assert evaluate_map(ds, d, "voc12-continuous")["mAP"] == 1.0
    assert evaluate_map(ds, d, "voc07-continuous")["mAP"] == 1.0


def test_plus_one_turns_a_miss_into_a_match_at_exactly_half():
    # GT [0,0,9,9], detection [0,0,9,4]: the devkit's inclusive sizes give 10x10 and 10x5, IoU
    # 50/100 = .5 exactly -> a match (>=, not >). Continuous: 9x9 and 9x4, 36/81 = .44 -> a miss.
    ds = make_dataset([[([0, 0, 9, 9], 1, False)]], classes=("a",))
    d = {0: dets([([0, 0, 9, 4], 0.9, 1)])}
    for protocol in ("voc07", "voc12"):
        assert evaluate_map(ds, d, protocol)["mAP"] == 1.0
        assert evaluate_map(ds, d, protocol + "-continuous")["mAP"] == 0.0
    assert evaluate_map(ds, d, "voc12", iou_threshold=0.51)["mAP"] == 0.0
    assert evaluate_map(ds, d, "voc12", iou_threshold=0.5)["iou_threshold"] == 0.5


def test_plus_one_changes_which_box_is_best():
    # Detection [0,0,10,10] against A = [0,0,6,13] and B = [0,0,5,10]. Continuous IoU: A 60/118
    # = .508, B 50/100 = .5 -> A is best. Inclusive (+1): A 77/142 = .542, B 66/121 = .545 ->
    # B is best. A is taken first by an exact detection, so the second detection is a duplicate
    # of A in continuous coordinates (TP, FP: AP .5) and finds the free B the devkit's way (AP 1).
    ds = make_dataset([[([0, 0, 6, 13], 1, False), ([0, 0, 5, 10], 1, False)]], classes=("a",))
    d = {0: dets([([0, 0, 6, 13], .9, 1), ([0, 0, 10, 10], .8, 1)])}
    assert evaluate_map(ds, d, "voc12")["mAP"] == pytest.approx(1.0, abs=1e-12)
    assert evaluate_map(ds, d, "voc12-continuous")["mAP"] == pytest.approx(0.5, abs=1e-12)


def test_other_iou_threshold():
    # GT 100x100 (inclusive 101x101). Detections: [0,0,99,74] IoU 100*75/10201 = .735 and
    # [0,0,99,60] IoU 100*61/10201 = .598 -> both match at .5 (two boxes), only the first at .7.
    ds = make_dataset([[([0, 0, 100, 100], 1, False)], [([0, 0, 100, 100], 1, False)]], classes=("a",))
    d = {0: dets([([0, 0, 99, 74], .9, 1)]), 1: dets([([0, 0, 99, 60], .8, 1)])}
    assert evaluate_map(ds, d, "voc12")["mAP"] == pytest.approx(1.0, abs=1e-12)
    assert evaluate_map(ds, d, "voc12", iou_threshold=0.7)["mAP"] == pytest.approx(0.5, abs=1e-12)
    for bad in (0.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="IoU threshold"):
            evaluate_map(ds, d, "voc12", iou_threshold=bad)
    for protocol in ("ilsvrc", "coco"):
        with pytest.raises(ValueError, match="fixes its own"):
            evaluate_map(ds, d, protocol, iou_threshold=0.7)


def test_voc07_recall_points_are_matlabs():
    # The devkit's `t=0:0.1:1` has 3*0.1 = 0.30000000000000004 as its fourth point: a recall of
    # exactly 3/10 misses it. Flags T T T F T with 10 boxes: recall .1 .2 .3 .3 .4, precision
    # 1 1 1 .75 .8. Points 0, .1, .2 -> 1; .3 and .4 -> .8 (only recall .4 reaches them); rest 0.
    assert VOC07_RECALLS[3] == 3 * 0.1 != 0.3 and VOC07_RECALLS[7] == 0.7
    tp = np.array([True, True, True, False, True])
    assert average_precision(tp, 10, "voc07")[0] == pytest.approx((3 + 0.8 + 0.8) / 11, abs=1e-12)


def test_difficult_object_ignored_by_voc_counted_by_ilsvrc():
    # A (normal) and B (difficult); detections: on A (.9), a false positive (.8), on B (.7).
    ds = make_dataset([[([0, 0, 100, 100], 1, False), ([300, 300, 400, 400], 1, True)]], classes=("a",))
    d = {0: dets([([0, 0, 100, 100], .9, 1), ([600, 600, 700, 700], .8, 1), ([300, 300, 400, 400], .7, 1)])}
    # VOC: B's detection is neither TP nor FP, npos = 1 -> TP, FP -> AP 1.
    assert evaluate_map(ds, d, "voc12")["mAP"] == pytest.approx(1.0, abs=1e-12)
    assert evaluate_map(ds, d, "voc07")["mAP"] == pytest.approx(1.0, abs=1e-12)
    assert evaluate_map(ds, d, "voc12")["num_gt"]["a"] == 1
    # ILSVRC counts B: TP, FP, TP; recall .5 .5 1, precision 1 .5 .667 -> .5 * 1 + .5 * 2/3.
    assert evaluate_map(ds, d, "ilsvrc")["mAP"] == pytest.approx(0.5 + 1 / 3, abs=1e-12)


def test_duplicates_are_false_positives():
    # GT1, GT2; detections: on GT1 (.9), again on GT1 (.8), on GT2 (.7): TP FP TP.
    ds = make_dataset([[([0, 0, 100, 100], 1, False), ([500, 500, 600, 600], 1, False)]], classes=("a",))
    d = {0: dets([([0, 0, 100, 100], .9, 1), ([1, 1, 100, 100], .8, 1), ([500, 500, 600, 600], .7, 1)])}
    # all points: recall .5 at precision 1, then up to 1 at precision 2/3.
    for protocol in ("voc12", "ilsvrc"):
        assert evaluate_map(ds, d, protocol)["mAP"] == pytest.approx(0.5 + 1 / 3, abs=1e-12)
    # 11 points: recall 0..0.5 -> 1 (six points), 0.6..1.0 -> 2/3 (five points).
    assert evaluate_map(ds, d, "voc07")["mAP"] == pytest.approx((6 + 5 * 2 / 3) / 11, abs=1e-12)


def test_ilsvrc_takes_best_unmatched_box_voc_best_box():
    # GT1 [0,0,100,100], GT2 [20,0,120,100]. d1 = GT1 (.9). d2 = [5,0,105,100] (.8) overlaps
    # GT1 most (.905) and GT2 with .739: ILSVRC gives d2 to the still free GT2 (TP);
    # VOC takes its best box GT1, already matched -> a duplicate (FP).
    ds = make_dataset([[([0, 0, 100, 100], 1, False), ([20, 0, 120, 100], 1, False)]], classes=("a",))
    d = {0: dets([([0, 0, 100, 100], .9, 1), ([5, 0, 105, 100], .8, 1)])}
    assert evaluate_map(ds, d, "ilsvrc")["mAP"] == pytest.approx(1.0, abs=1e-12)
    assert evaluate_map(ds, d, "voc12")["mAP"] == pytest.approx(0.5, abs=1e-12)


def test_class_without_ground_truth_is_nan_and_left_out():
    ds = make_dataset([[([0, 0, 100, 100], 1, False)]], classes=("a", "b", "c"))
    d = {0: dets([([0, 0, 100, 100], .9, 1), ([0, 0, 50, 50], .8, 2)])}
    for protocol in ("ilsvrc", "voc07", "voc12"):
        r = evaluate_map(ds, d, protocol)
        assert math.isnan(r["per_class"]["b"]) and math.isnan(r["per_class"]["c"])
        assert r["mAP"] == 1.0 and r["num_det"]["b"] == 1
    # A class with ground truth and no detections scores 0 and counts in the mean.
    ds = make_dataset([[([0, 0, 100, 100], 1, False), ([0, 0, 10, 10], 2, False)]], classes=("a", "b"))
    assert evaluate_map(ds, {0: dets([([0, 0, 100, 100], .9, 1)])}, "voc12")["mAP"] == 0.5


def test_average_precision_hand_values():
    tp = np.array([True, False, True, False])
    ap, rec, prec = average_precision(tp, 4, "voc12")
    assert rec.tolist() == [.25, .25, .5, .5] and prec.tolist() == [1, .5, 2 / 3, .5]
    assert ap == pytest.approx(.25 * 1 + .25 * 2 / 3, abs=1e-12)
    # 11 points: r = 0, .1, .2 -> 1; .3 .. .5 -> 2/3 (recall .5 is past the devkit's .3); .6 .. 1 -> 0.
    assert average_precision(tp, 4, "voc07")[0] == pytest.approx((3 + 3 * 2 / 3) / 11, abs=1e-12)
    assert math.isnan(average_precision(tp, 0, "voc12")[0])


# ----------------------------------------------------------------------------- plain loop


def loop_iou(a, b, one):
    iw = min(a[2], b[2]) - max(a[0], b[0]) + one
    ih = min(a[3], b[3]) - max(a[1], b[1]) + one
    inter = iw * ih if iw > 0 and ih > 0 else 0.0
    union = (a[2] - a[0] + one) * (a[3] - a[1] + one) + (b[2] - b[0] + one) * (b[3] - b[1] + one) - inter
    return inter / union if union > 0 else 0.0


def loop_map(ds: DetectionDataset, detections: dict, protocol: str, iou_threshold=0.5) -> dict:
    """The protocols as plain loops, one class, one detection, one box at a time."""
    if protocol.startswith("voc"):
        return {name: devkit_ap(ds, detections, k, protocol, iou_threshold)
                for k, name in enumerate(ds.classes, 1)}
    out = {}
    for k, name in enumerate(ds.classes, 1):
        gt = {rec.image_id: [rec.boxes[i].tolist() for i in range(len(rec.labels)) if int(rec.labels[i]) == k]
              for rec in ds.images}
        npos = sum(len(rows) for rows in gt.values())  # ILSVRC counts every box
        cand = []
        for rec in ds.images:
            d = detections.get(rec.image_id)
            for i in range(0 if d is None else len(d["labels"])):
                if int(d["labels"][i]) == k:
                    cand.append((float(d["scores"][i]), rec.image_id, d["boxes"][i].tolist()))
        cand.sort(key=lambda c: -c[0])
        used = {iid: [False] * len(rows) for iid, rows in gt.items()}
        flags = []
        for _, iid, box in cand:
            best, jbest = -math.inf, -1
            for j, g in enumerate(gt[iid]):
                if used[iid][j]:
                    continue
                iou = loop_iou(box, g, 1.0)
                w, h = g[2] - g[0] + 1, g[3] - g[1] + 1
                if iou >= min(0.5, w * h / ((w + 10) * (h + 10))) and iou > best:
                    best, jbest = iou, j
            if jbest >= 0:
                used[iid][jbest] = True
            flags.append(jbest >= 0)
        out[name] = loop_ap(flags, npos)
    return out


def loop_ap(flags, npos):
    """All-points AP under the monotone envelope."""
    if npos == 0:
        return math.nan
    prec, rec, tp, fp = [], [], 0, 0
    for f in flags:
        tp, fp = tp + f, fp + (not f)
        prec.append(tp / (tp + fp))
        rec.append(tp / npos)
    mrec, mpre = [0.0] + rec + [1.0], [0.0] + prec + [0.0]
    for i in range(len(mpre) - 2, -1, -1):
        mpre[i] = max(mpre[i], mpre[i + 1])
    return sum((mrec[i + 1] - mrec[i]) * mpre[i + 1] for i in range(len(mrec) - 1) if mrec[i + 1] != mrec[i])


def matlab_colon(a, d, b):
    """MATLAB's a:d:b for a whole number of steps: built from both ends (MathWorks' colonop)."""
    n = round((b - a) / d)
    out = [0.0] * (n + 1)
    for k in range(n // 2 + 1):
        out[k] = a + k * d
        out[n - k] = b - k * d
    if n % 2 == 0:
        out[n // 2] = (a + b) / 2
    return out


def devkit_ap(ds: DetectionDataset, detections: dict, cls: int, protocol: str, minoverlap: float) -> float:
    """VOCevaldet.m (and VOCap.m for VOC 2010+) for class `cls`, line by line; `-continuous`
    protocols drop the devkit's +1. Detections are listed image by image as a results file
    would hold them; MATLAB's sort is stable."""
    one = 0.0 if protocol.endswith("-continuous") else 1.0
    gt, npos = {}, 0
    for rec in ds.images:
        keep = [i for i in range(len(rec.labels)) if int(rec.labels[i]) == cls]
        gt[rec.image_id] = {"BB": [rec.boxes[i].tolist() for i in keep],
                            "diff": [bool(rec.difficult[i]) for i in keep], "det": [False] * len(keep)}
        npos += sum(not f for f in gt[rec.image_id]["diff"])
    ids, confidence, BB = [], [], []
    for rec in ds.images:
        d = detections.get(rec.image_id)
        for i in range(0 if d is None else len(d["labels"])):
            if int(d["labels"][i]) == cls:
                ids.append(rec.image_id)
                confidence.append(float(d["scores"][i]))
                BB.append(d["boxes"][i].tolist())
    si = sorted(range(len(confidence)), key=lambda i: -confidence[i])
    nd = len(si)
    tp, fp = [0] * nd, [0] * nd
    for d in range(nd):
        g, bb = gt[ids[si[d]]], BB[si[d]]
        ovmax, jmax = -math.inf, -1
        for j, bbgt in enumerate(g["BB"]):
            bi = [max(bb[0], bbgt[0]), max(bb[1], bbgt[1]), min(bb[2], bbgt[2]), min(bb[3], bbgt[3])]
            iw = bi[2] - bi[0] + one
            ih = bi[3] - bi[1] + one
            if iw > 0 and ih > 0:
                ua = ((bb[2] - bb[0] + one) * (bb[3] - bb[1] + one)
                      + (bbgt[2] - bbgt[0] + one) * (bbgt[3] - bbgt[1] + one) - iw * ih)
                ov = iw * ih / ua
                if ov > ovmax:
                    ovmax, jmax = ov, j
        if ovmax >= minoverlap:
            if not g["diff"][jmax]:
                if not g["det"][jmax]:
                    tp[d] = 1
                    g["det"][jmax] = True
                else:
                    fp[d] = 1
        else:
            fp[d] = 1
    if npos == 0:
        return math.nan
    rec, prec, ctp, cfp = [], [], 0, 0
    for d in range(nd):
        ctp, cfp = ctp + tp[d], cfp + fp[d]
        rec.append(ctp / npos)
        prec.append(ctp / (cfp + ctp) if cfp + ctp else math.nan)  # 0/0: a don't-care first
    if protocol.startswith("voc07"):
        ap = 0.0
        for t in matlab_colon(0, 0.1, 1):
            p = [q for q, r in zip(prec, rec) if r >= t and not math.isnan(q)]
            ap += (max(p) if p else 0.0) / 11
        return ap
    mrec, mpre = [0.0] + rec + [1.0], [0.0] + [0.0 if math.isnan(q) else q for q in prec] + [0.0]
    for i in range(len(mpre) - 2, -1, -1):
        mpre[i] = max(mpre[i], mpre[i + 1])
    return sum((mrec[i] - mrec[i - 1]) * mpre[i] for i in range(1, len(mrec)) if mrec[i] != mrec[i - 1])


def random_set(seed: int, n_images=100, n_classes=20, size=500):
    """Random ground truth (some tiny, some difficult) and detections near it, with tied
    scores, duplicates, wrong classes and pure noise; class n_classes has no ground truth."""
    rng = np.random.default_rng(seed)
    images, all_dets = [], {}
    for i in range(n_images):
        n = int(rng.integers(0, 8))
        xy = rng.uniform(0, size - 120, (n, 2))
        wh = np.where(rng.random((n, 1)) < 0.3, rng.uniform(2, 20, (n, 2)), rng.uniform(20, 120, (n, 2)))
        boxes = np.round(np.concatenate([xy, xy + wh], 1), 1)
        labels = rng.integers(1, n_classes, n)  # never the last class
        images.append([(b.tolist(), int(lab), bool(rng.random() < 0.15)) for b, lab in zip(boxes, labels)])
        rows = []
        for b, lab in zip(boxes, labels):
            for _ in range(int(rng.integers(0, 4))):  # 0..3 detections per box, duplicates
                jit = b + rng.normal(0, 0.15, 4) * np.r_[b[2:] - b[:2], b[2:] - b[:2]]
                jit[2:] = np.maximum(jit[2:], jit[:2] + 0.5)
                wrong = rng.random() < 0.1
                rows.append((jit.tolist(), 0, int(rng.integers(1, n_classes + 1)) if wrong else int(lab)))
        for _ in range(int(rng.integers(0, 6))):  # noise
            xy = rng.uniform(0, size - 60, 2)
            rows.append(((np.r_[xy, xy + rng.uniform(2, 60, 2)]).tolist(), 0, int(rng.integers(1, n_classes + 1))))
        scores = np.round(rng.random(len(rows)), 2)  # two decimals: ties happen
        all_dets[i] = dets([(r[0], float(s), r[2]) for r, s in zip(rows, scores)])
    return make_dataset(images, classes=[f"c{k}" for k in range(1, n_classes + 1)]), all_dets


@pytest.mark.parametrize("protocol", ["ilsvrc", "voc07", "voc12", "voc07-continuous", "voc12-continuous"])
@pytest.mark.parametrize("seed", [0, 1])
def test_equals_plain_loop(protocol, seed):
    ds, d = random_set(seed)
    got = evaluate_map(ds, d, protocol)["per_class"]
    want = loop_map(ds, d, protocol)
    assert math.isnan(got["c20"]) and math.isnan(want["c20"])
    for name in ds.classes[:-1]:
        assert abs(got[name] - want[name]) <= 1e-9, (name, got[name], want[name])
    assert 0.05 < np.nanmean(list(got.values())) < 0.95  # a non-trivial set


@pytest.mark.parametrize("protocol", ["voc07", "voc12"])
@pytest.mark.parametrize("iou_threshold", [0.3, 0.7])
def test_equals_devkit_at_other_thresholds(protocol, iou_threshold):
    ds, d = random_set(2)
    got = evaluate_map(ds, d, protocol, iou_threshold=iou_threshold)["per_class"]
    want = loop_map(ds, d, protocol, iou_threshold)
    for name in ds.classes[:-1]:
        assert abs(got[name] - want[name]) <= 1e-9, (name, got[name], want[name])


def test_devkit_rule_moves_the_random_set():
    # The random set has many small boxes: dropping the +1 must change the numbers, or the
    # equality tests above would not tell the two rules apart.
    ds, d = random_set(0)
    assert abs(evaluate_map(ds, d, "voc12")["mAP"] - evaluate_map(ds, d, "voc12-continuous")["mAP"]) > 0.005


def test_many_detections_in_one_group_ilsvrc():
    # 40 detections of one class on one image with 6 boxes: 40 lock-step rounds.
    rng = np.random.default_rng(3)
    gt = [([x, 10, x + 40, 50], 1, False) for x in range(0, 240, 40)]
    ds = make_dataset([gt], classes=("a",))
    rows = [([x + rng.uniform(-8, 8), 10, x + 40 + rng.uniform(-8, 8), 50], float(rng.random()), 1)
            for x in rng.choice(range(0, 240, 40), 40)]
    d = {0: dets(rows)}
    for protocol in ("ilsvrc", "voc12"):
        assert evaluate_map(ds, d, protocol)["mAP"] == pytest.approx(loop_map(ds, d, protocol)["a"], abs=1e-12)


# ----------------------------------------------------------------------------- COCO


def _pycocotools_stats(gt_file: Path, det_file: Path) -> np.ndarray:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(gt_file))
        ev = COCOeval(gt, gt.loadRes(str(det_file)), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev.stats


def test_coco_equals_pycocotools_on_original_files(tmp_path):
    """A COCO file made here (integer pixels, segment areas unlike box areas, crowds,
    category ids with gaps), read by us and evaluated, equals pycocotools on the files."""
    import json
    rng = np.random.default_rng(7)
    cats = [{"id": cid, "name": f"k{cid}"} for cid in (1, 3, 4, 9, 12)]
    images, anns, results = [], [], []
    for i in range(60):
        images.append({"id": 100 + i, "file_name": f"im{i}.jpg", "width": 640, "height": 480})
        for _ in range(int(rng.integers(0, 6))):
            x, y = rng.integers(0, 500), rng.integers(0, 380)
            w, h = rng.integers(4, 140), rng.integers(4, 100)
            w, h = int(min(w, 640 - x)), int(min(h, 480 - y))
            cid = int(rng.choice([1, 3, 4, 9]))
            anns.append({"id": len(anns) + 1, "image_id": 100 + i, "category_id": cid,
                         "bbox": [int(x), int(y), w, h], "area": float(w * h * rng.uniform(0.5, 1)),
                         "iscrowd": int(rng.random() < 0.05)})
            for _ in range(int(rng.integers(0, 3))):
                jx, jy = rng.normal(0, 0.1 * w), rng.normal(0, 0.1 * h)
                results.append({"image_id": 100 + i, "category_id": cid, "score": float(rng.random()),
                                "bbox": [float(x + jx), float(y + jy), float(w), float(h)]})
        results.append({"image_id": 100 + i, "category_id": int(rng.choice([1, 3, 4, 9, 12])),
                        "score": float(rng.random()), "bbox": [10.0, 20.0, 50.0, 60.0]})
    gt_file, det_file = tmp_path / "gt.json", tmp_path / "det.json"
    gt_file.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    det_file.write_text(json.dumps(results))
    want = _pycocotools_stats(gt_file, det_file)

    ds = load_dataset(gt_file)
    r = evaluate_map(ds, read_detections(det_file, ds), "coco")
    got = np.array([r["stats"][n] for n in COCO_STAT_NAMES])
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
    assert r["mAP"] == r["stats"]["AP"] and math.isnan(r["per_class"]["k12"])
    assert np.mean([v for v in r["per_class"].values() if not math.isnan(v)]) == pytest.approx(r["mAP"], abs=1e-12)


@pytest.mark.parametrize("seed", [0, 1])
def test_coco_equals_pycocotools_on_written_files(tmp_path, seed):
    ds, d = random_set(seed, n_images=60, n_classes=8)
    write_coco(tmp_path / "gt.json", ds)
    write_detections(tmp_path / "det.json", d, ds)
    want = _pycocotools_stats(tmp_path / "gt.json", tmp_path / "det.json")
    r = evaluate_map(ds, d, "coco")
    assert [r["stats"][n] for n in COCO_STAT_NAMES] == pytest.approx(list(want), abs=1e-12)
    assert len(r["curves"]["c1"]["recall"]) == 101


def test_eval_cli_iou_option(capsys, tmp_path):
    """`detect eval --map --iou`: a box of inclusive IoU 51*31 / (51*41) = .756 matches at .7,
    not at .8; out-of-range values and non-VOC protocols are refused with exit status 2."""
    from cli_helpers import run
    from detect.data import write_voc
    from detect.results import write_detections

    root = tmp_path / "voc"
    write_voc(root, "im0", (100, 80), torch.tensor([[10., 10, 60, 50]]), torch.tensor([1]), ["a"])
    ds = load_dataset(root)
    write_detections(tmp_path / "d.json", {0: dets([([10, 10, 60, 40], 0.9, 1)])}, ds)
    args = ("eval", "--map", "--data", str(root), "--detections", str(tmp_path / "d.json"))
    code, out, _ = run(capsys, *args, "--iou", "0.7")
    assert code == 0 and "mAP (voc12 at IoU 0.7, mean over 1 classes with ground truth): 1.0000" in out
    code, out, _ = run(capsys, *args, "--iou", "0.8", "--protocol", "voc07")
    assert code == 0 and "mAP (voc07 at IoU 0.8, mean over 1 classes with ground truth): 0.0000" in out
    code, out, _ = run(capsys, *args, "--iou", "0.7", "--iou", "0.8", "--json", str(tmp_path / "r.json"))
    assert code == 0 and out.index("IoU 0.7\n") < out.index("at IoU 0.7") < out.index("IoU 0.8\n") < out.index("at IoU 0.8")
    saved = json.loads((tmp_path / "r.json").read_text())
    assert saved["mAP"] == 1.0 and saved["at_iou"]["0.8"]["mAP"] == 0.0 and list(saved["at_iou"]) == ["0.8"]
    for bad in (("--iou", "0"), ("--iou", "1.2"), ("--iou", "0.7", "--protocol", "coco")):
        code, _, err = run(capsys, *args, *bad)
        assert code == 2 and "--iou" in err and "Traceback" not in err


def test_unknown_protocol():
    with pytest.raises(ValueError, match="protocol"):
        evaluate_map(make_dataset([[]]), {}, "voc2099")
