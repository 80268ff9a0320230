"""Benchmark: ILSVRC-protocol mAP of 5,000 images x 200 classes x 100 detections per image.

Times `detect.metrics.evaluate_map` (vectorised over detections) against a plain Python loop
of the same protocol, on one core, in the same run. The loop is timed on a subset of the
classes and extrapolated by the number of detections (its cost is linear in them); the output
says so. It also checks that both give the same per-class AP on that subset.

    python tools/bench/map_eval.py                 # the full size
    python tools/bench/map_eval.py --images 500    # quicker

Targets: ratio >= 10x, the vectorised evaluation under 30 s.
"""
from __future__ import annotations

import os

for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[var] = "1"  # one core, as the target says; before numpy/torch load

import argparse  # noqa: E402
import math  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from detect.data import DetectionDataset, ImageRecord  # noqa: E402
from detect.metrics import evaluate_map  # noqa: E402


def make_set(n_images: int, n_classes: int, dets_per_image: int, seed: int = 0):
    """ILSVRC-like ground truth (1 to 4 boxes per image, some small) and detections: 0 to 8
    jittered copies of each box (mostly its class), the rest random boxes of random classes."""
    rng = np.random.default_rng(seed)
    records, detections = [], {}
    for i in range(n_images):
        n = int(rng.integers(1, 5))
        xy = rng.uniform(0, 380, (n, 2))
        wh = np.where(rng.random((n, 1)) < 0.2, rng.uniform(4, 24, (n, 2)), rng.uniform(24, 120, (n, 2)))
        gt = np.concatenate([xy, xy + wh], 1).round()
        labels = rng.integers(1, n_classes + 1, n)
        records.append(ImageRecord(i, f"{i:08d}", Path(f"/bench/{i:08d}.JPEG"), 500, 500,
                                   torch.tensor(gt, dtype=torch.float32), torch.tensor(labels),
                                   torch.zeros(n, dtype=torch.bool)))
        copies = rng.integers(0, 9, n)
        near = np.repeat(gt, copies, 0)
        near = near + rng.normal(0, 0.1, near.shape) * np.tile(near[:, 2:] - near[:, :2], 2)
        near_labels = np.where(rng.random(len(near)) < 0.9, np.repeat(labels, copies),
                               rng.integers(1, n_classes + 1, len(near)))
        m = dets_per_image - len(near)
        xy = rng.uniform(0, 400, (m, 2))
        boxes = np.concatenate([near, np.concatenate([xy, xy + rng.uniform(4, 100, (m, 2))], 1)])
        boxes[:, 2:] = np.maximum(boxes[:, 2:], boxes[:, :2] + 1)
        detections[i] = {"boxes": torch.tensor(boxes, dtype=torch.float32),
                         "scores": torch.tensor(rng.random(dets_per_image), dtype=torch.float32),
                         "labels": torch.tensor(np.concatenate([near_labels, rng.integers(1, n_classes + 1, m)]))}
    classes = [f"class{k:03d}" for k in range(1, n_classes + 1)]
    return DetectionDataset(classes, records, Path("/bench"), list(range(1, n_classes + 1)), []), detections


def group(dataset: DetectionDataset, detections: dict) -> tuple[dict, dict]:
    """Plain Python lists: ground truth per (image, class), detections per class."""
    gt, dets = {}, {k: [] for k in range(1, len(dataset.classes) + 1)}
    for rec in dataset.images:
        for box, lab in zip(rec.boxes.tolist(), rec.labels.tolist()):
            gt.setdefault((rec.image_id, lab), []).append(box)
        d = detections[rec.image_id]
        for box, score, lab in zip(d["boxes"].tolist(), d["scores"].tolist(), d["labels"].tolist()):
            dets[lab].append((score, rec.image_id, box))
    return gt, dets


def loop_ilsvrc(gt: dict, dets: dict, classes: list[int]) -> dict[int, float]:
    """The ILSVRC protocol as a plain loop, one class, one detection, one box at a time."""
    aps = {}
    for k in classes:
        npos = sum(len(v) for (_, lab), v in gt.items() if lab == k)
        used = {key: [False] * len(v) for key, v in gt.items() if key[1] == k}
        flags = []
        for _, image_id, b in sorted(dets[k], key=lambda t: -t[0]):
            best, jbest = -math.inf, -1
            for j, g in enumerate(gt.get((image_id, k), [])):
                if used[(image_id, k)][j]:
                    continue
                iw = min(b[2], g[2]) - max(b[0], g[0]) + 1
                ih = min(b[3], g[3]) - max(b[1], g[1]) + 1
                if iw <= 0 or ih <= 0:
                    continue
                w, h = g[2] - g[0] + 1, g[3] - g[1] + 1
                iou = iw * ih / ((b[2] - b[0] + 1) * (b[3] - b[1] + 1) + w * h - iw * ih)
                if iou >= min(0.5, w * h / ((w + 10) * (h + 10))) and iou > best:
                    best, jbest = iou, j
            if jbest >= 0:
                used[(image_id, k)][jbest] = True
            flags.append(jbest >= 0)
        aps[k] = _loop_ap(flags, npos)
    return aps


def _loop_ap(flags: list[bool], npos: int) -> float:
    if npos == 0:
        return math.nan
    prec, rec, tp = [], [], 0
    for n, f in enumerate(flags, 1):
        tp += f
        prec.append(tp / n)
        rec.append(tp / npos)
    mrec, mpre = [0.0] + rec + [1.0], [0.0] + prec + [0.0]
    for i in range(len(mpre) - 2, -1, -1):
        mpre[i] = max(mpre[i], mpre[i + 1])
    return sum((mrec[i + 1] - mrec[i]) * mpre[i + 1] for i in range(len(mrec) - 1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--classes", type=int, default=200)
    parser.add_argument("--dets", type=int, default=100, help="detections per image")
    parser.add_argument("--loop-classes", type=int, default=20, help="classes the plain loop is timed on")
    args = parser.parse_args()
    torch.set_num_threads(1)
    script_start = time.perf_counter()
    dataset, detections = make_set(args.images, args.classes, args.dets)
    total = sum(len(d["labels"]) for d in detections.values())
    print(f"set: {args.images} images x {args.classes} classes, {total} detections, "
          f"{sum(len(r.labels) for r in dataset.images)} ground-truth boxes; ILSVRC protocol, one core")

    start = time.perf_counter()
    report = evaluate_map(dataset, detections, "ilsvrc")
    fast = time.perf_counter() - start
    print(f"vectorised evaluate_map: {fast:.2f} s (mAP {report['mAP']:.4f})")

    start = time.perf_counter()
    gt, dets = group(dataset, detections)
    group_time = time.perf_counter() - start
    subset = list(range(1, min(args.loop_classes, args.classes) + 1))
    start = time.perf_counter()
    loop_aps = loop_ilsvrc(gt, dets, subset)
    loop_time = time.perf_counter() - start
    share = sum(len(dets[k]) for k in subset) / total
    loop_full = group_time + loop_time / share
    worst = max(abs(loop_aps[k] - report["per_class"][dataset.classes[k - 1]]) for k in subset)
    print(f"plain loop: grouping {group_time:.2f} s (all classes) + matching {loop_time:.2f} s on "
          f"{len(subset)} of {args.classes} classes ({share:.1%} of the detections), "
          f"extrapolated by detections to all classes: {loop_full:.1f} s")
    print(f"largest per-class AP difference on those classes: {worst:.1e}")
    print(f"speed-up: {loop_full / fast:.1f}x (target >= 10x); vectorised run {fast:.2f} s (target < 30 s)")
    print(f"whole script (set generation + both evaluations): {time.perf_counter() - script_start:.1f} s")


if __name__ == "__main__":
    main()
