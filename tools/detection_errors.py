"""Where a detector's mAP goes: what it calls each object, and what its top detections are.

    python tools/detection_errors.py --data runs/demo_build/scenes --split test \
        --detections runs/demo_build/eval/ensemble.detections.json [--json OUT.json]

Two views of one detections file (COCO results, as `detect eval --map --detections` reads it):

- **Naming at the objects**: for every ground-truth box (difficult ones left out), the class of
  the highest-scoring detection of any class that overlaps it with IoU >= 0.5 ("none" if no
  detection does). The table is true class x named class; its diagonal share is how often the
  detector names an object it has found correctly, whatever the scores of other objects.
- **The top detections of each class**: the class's N best-scoring detections over the whole
  split, N = its number of objects (where a perfect detector's list would stop), each put in
  one bin: `tp` (IoU >= 0.5 with an object of the class not yet matched), `dup` (IoU >= 0.5 with
  one already matched), `loc` (IoU 0.1-0.5 with an object of the class), `conf` (IoU >= 0.5
  with an object of another class), `bg` (none of these).
- Naming accuracy by object size (longer side of the box, px).
"""
from __future__ import annotations

import argparse
import json

import torch
from torchvision.ops import box_iou

from detect.data import load_dataset
from detect.results import read_detections

SIZE_BINS = ((0, 40), (40, 64), (64, 100), (100, 100000))


def naming(dataset, detections) -> tuple[torch.Tensor, dict]:
    """Confusion [K, K+1] (true label-1 x named label-1, last column: none) and size-bin hits."""
    k = len(dataset.classes)
    table = torch.zeros((k, k + 1), dtype=torch.int64)
    by_size = {b: [0, 0] for b in SIZE_BINS}
    for rec in dataset.images:
        keep = ~rec.difficult
        boxes, labels = rec.boxes[keep], rec.labels[keep]
        dets = detections[rec.image_id]
        if len(boxes) == 0:
            continue
        named = torch.full_like(labels, k)  # "none" unless a detection overlaps
        if len(dets["boxes"]):
            overlap = box_iou(boxes, dets["boxes"]) >= 0.5
            best = torch.where(overlap, dets["scores"][None, :], -1.0).argmax(1)
            named = torch.where(overlap.any(1), dets["labels"][best] - 1, named)
        table.index_put_((labels - 1, named), torch.ones_like(labels), accumulate=True)
        sides = torch.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
        for lo, hi in SIZE_BINS:
            inside = (sides >= lo) & (sides < hi)
            by_size[(lo, hi)][0] += int((named[inside] == labels[inside] - 1).sum())
            by_size[(lo, hi)][1] += int(inside.sum())
    return table, by_size


def top_detection_kinds(dataset, detections) -> dict[str, dict[str, int]]:
    """Per class: the bins (tp, dup, loc, conf, bg) of its N best detections, N = its objects."""
    out = {}
    for c, name in enumerate(dataset.classes, start=1):
        n = sum(int(((rec.labels == c) & ~rec.difficult).sum()) for rec in dataset.images)
        kinds = dict.fromkeys(("tp", "dup", "loc", "conf", "bg"), 0)
        matched: set[tuple[int, int]] = set()
        ranked = sorted(((s, rec, i) for rec in dataset.images
                         for i, (s, lab) in enumerate(zip(detections[rec.image_id]["scores"].tolist(),
                                                          detections[rec.image_id]["labels"].tolist())) if lab == c),
                        key=lambda r: -r[0])[:n]
        for _, rec, i in ranked:
            box = detections[rec.image_id]["boxes"][i:i + 1]
            iou = box_iou(box, rec.boxes)[0] if len(rec.boxes) else torch.zeros(0)
            same = (rec.labels == c) & ~rec.difficult
            best_same = float(iou[same].max()) if same.any() else 0.0
            if best_same >= 0.5:
                j = int(torch.nonzero(same).flatten()[iou[same].argmax()])
                kinds["dup" if (rec.image_id, j) in matched else "tp"] += 1
                matched.add((rec.image_id, j))
            elif best_same >= 0.1:
                kinds["loc"] += 1
            elif len(iou) and bool((iou >= 0.5).any()):
                kinds["conf"] += 1
            else:
                kinds["bg"] += 1
        out[name] = kinds
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, help="a detection data set (VOC folder, COCO JSON, ...)")
    ap.add_argument("--split", default=None, help="its split")
    ap.add_argument("--detections", required=True, help="COCO results JSON of that split")
    ap.add_argument("--json", default=None, help="also write the numbers here")
    args = ap.parse_args()
    dataset = load_dataset(args.data, split=args.split)
    detections = read_detections(args.detections, dataset)
    table, by_size = naming(dataset, detections)
    kinds = top_detection_kinds(dataset, detections)
    names = [c[:7] for c in dataset.classes]
    print("objects named by the best overlapping detection (rows: true class; IoU >= 0.5):")
    print(" " * 12 + " ".join(f"{n:>7}" for n in names) + "    none")
    for name, row in zip(dataset.classes, table.tolist()):
        print(f"{name[:11]:>11} " + " ".join(f"{v:7d}" for v in row))
    found = table[:, :-1].sum()
    print(f"named correctly: {int(table.diagonal().sum())} of {int(table.sum())} objects "
          f"({float(table.diagonal().sum() / table.sum()):.3f}); found by some detection: {int(found)}")
    print("by size (longer side, px): " + ", ".join(
        f"{lo}-{hi if hi < 100000 else ''}: {h / n:.3f} of {n}" for (lo, hi), (h, n) in by_size.items() if n))
    print("each class's top-N detections (N = its objects):")
    for name, k in kinds.items():
        print(f"  {name:>12}: " + ", ".join(f"{b} {v}" for b, v in k.items()))
    if args.json:
        from backbone.io import atomic_write_text
        atomic_write_text(args.json, json.dumps({
            "classes": dataset.classes, "confusion": table.tolist(),
            "named_correctly": float(table.diagonal().sum() / table.sum()),
            "by_size": {f"{lo}-{hi}": [h, n] for (lo, hi), (h, n) in by_size.items()},
            "top_detections": kinds}, indent=2) + "\n")


if __name__ == "__main__":
    main()
