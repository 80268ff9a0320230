"""The detector's detections with and without box regression from ONE scoring pass.

`Detector.detect` with and without regression scores the regions alike and differs only in the
boxes, so one pass that keeps each member's pooled features gives both detection sets (half
the network time of two `detect eval --map --model` runs). Step 1 scores the cached proposals
of a split (resumable, shardable: one file per image); step 2 writes the two COCO results files
(`detect eval --map --detections FILE` evaluates them under any protocol) and prints VOC 2012
mAP@0.5, mAP@0.7 and COCO AP of both. `--limit N` takes the first N images of the split only
(both steps; the numbers are then of those N images).

    python tools/bench/box_regression.py score  --model RUN --data SCENES --split test \
        --proposals CACHE --out runs/boxreg [--shard 0/3] [--threads 1]
    python tools/bench/box_regression.py detect --model RUN --data SCENES --split test --out runs/boxreg
    detect eval --map --data SCENES --split test --detections runs/boxreg/regressed.detections.json --protocol coco
"""
from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import torch

from backbone.progress import progress
from detect.data import load_dataset
from detect.detector import Detector, select_detections
from detect.fit_boxes import ensemble_boxes
from detect.metrics import evaluate_map
from detect.results import write_detections
from proposals import ProposalCache


def score(args: argparse.Namespace) -> None:
    """Scores, features (float16) and boxes of every image of the shard, one .pt file each."""
    det = Detector.load(args.model, "cpu", box_regression=False)
    cache, out = ProposalCache(args.proposals), Path(args.out) / "scored"
    out.mkdir(parents=True, exist_ok=True)
    index, count = (int(v) for v in args.shard.split("/"))
    records = load_dataset(args.data, args.split).images[:args.limit or None][index::count]
    for rec in progress(records, desc=f"score {args.shard}", unit="image"):
        path = out / f"{rec.key}.pt"
        if path.is_file():
            continue
        boxes = cache.get(rec.key)[0].float()
        scores, feats = det.score_with_features(rec.path, boxes)
        tmp = path.with_suffix(".tmp")
        torch.save({"boxes": boxes, "scores": scores, "features": [f.half() for f in feats],
                    "size": (rec.height, rec.width)}, tmp)
        tmp.rename(path)


def detect(args: argparse.Namespace) -> None:
    """plain.detections.json (the proposals' boxes) and, when the run has regressors,
    regressed.detections.json."""
    det = Detector.load(args.model, "cpu")
    dataset = load_dataset(args.data, args.split)
    dataset = dataclasses.replace(dataset, images=dataset.images[:args.limit or None])
    inf = det.config.inference
    found: dict[str, dict] = {"plain": {}, "regressed": {}} if det.regressors else {"plain": {}}
    for rec in dataset.images:
        s = torch.load(Path(args.out) / "scored" / f"{rec.key}.pt")
        kinds = [("plain", s["boxes"])]
        if det.regressors:
            kinds.append(("regressed", ensemble_boxes(det.regressors, [f.float() for f in s["features"]],
                                                      s["boxes"], s["size"])))
        for name, boxes in kinds:
            found[name][rec.image_id] = select_detections(boxes, s["scores"], inf.nms_iou, inf.score_threshold,
                                                          inf.max_detections)
    for name, dets in found.items():
        write_detections(Path(args.out) / f"{name}.detections.json", dets, dataset)
        print(f"wrote {Path(args.out) / f'{name}.detections.json'} ({len(dets)} images)")
    print(f"{len(dataset.images)} images, {sum(len(r.boxes) for r in dataset.images)} objects")
    print(f"{'boxes':<10} {'VOC12 mAP@0.5':>14} {'mAP@0.7':>8} {'COCO AP':>8}")
    for name, dets in found.items():
        numbers = [evaluate_map(dataset, dets, "voc12")["mAP"],
                   evaluate_map(dataset, dets, "voc12", iou_threshold=0.7)["mAP"],
                   evaluate_map(dataset, dets, "coco")["mAP"]]
        print(f"{name:<10} {numbers[0]:>14.4f} {numbers[1]:>8.4f} {numbers[2]:>8.4f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("step", choices=["score", "detect"])
    for name in ("--model", "--data", "--split", "--out"):
        parser.add_argument(name, required=True)
    parser.add_argument("--proposals", help="step score: the proposal cache of the split")
    parser.add_argument("--shard", default="0/1", help="step score: i/n, images i, i+n, ...")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads of torch")
    parser.add_argument("--limit", type=int, default=0, help="only the first N images of the split (0: all)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    score(args) if args.step == "score" else detect(args)


if __name__ == "__main__":
    main()
