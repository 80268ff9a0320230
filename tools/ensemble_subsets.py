"""Which members make the best ensemble: the mAP of every subset of members, each scored once.

    python tools/ensemble_subsets.py --data runs/demo_build/scenes --split test \
        --proposals runs/demo_build/proposals --model runs/demo_build/detector --model runs/other_det

Every member of every --model run (in order: run 1's members, then run 2's, ...; numbered from
0) scores each image's cached proposals once (`Detector.score_regions`, the first run's
inference settings, mirror included). A subset's ensemble is the mean of its members' softmax,
exactly as a `Detector` of those members computes it, through the same per-class NMS; its mAP
is measured as `detect eval --map` measures it. Prints one line per subset: the members and the
mAP. --subset 0,2,3 (repeatable) picks subsets; the default is every subset of --max-size or
fewer members (default 3). The members must name the same classes in the same order.
"""
from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

from backbone.errors import InputError
from detect.data import load_dataset
from detect.detector import Detector, select_detections
from detect.member_scores import member_probs, single_members
from detect.metrics import evaluate_map


def member_scores(runs: list[str], dataset, cache_dir: str, device: str = "cpu") -> tuple[dict, Detector]:
    """{image_id: (boxes [R, 4], probs [M, R, K+1])} for the M members of `runs`, and a Detector
    of the first run (its inference settings apply to every subset)."""
    loaded = [Detector.load(run, device=device) for run in runs]
    first = loaded[0]
    for run, det in zip(runs, loaded):
        if det.classes != first.classes:
            raise InputError(run, f"its classes {det.classes} differ from {runs[0]}'s {first.classes}")
    scores = {rec.image_id: (boxes, probs) for rec, boxes, probs in member_probs(
        single_members(loaded), dataset.images, cache_dir, f"score regions ({sum(len(d.members) for d in loaded)} members)")}
    return scores, first


def subset_map(scores: dict, subset: tuple[int, ...], dataset, detector: Detector, protocol: str) -> float:
    """mAP of the ensemble of the members in `subset` (indices into the probs' first axis)."""
    inf = detector.config.inference
    detections = {image_id: select_detections(boxes, probs[list(subset)].mean(0), inf.nms_iou,
                                              inf.score_threshold, inf.max_detections)
                  for image_id, (boxes, probs) in scores.items()}
    return float(evaluate_map(dataset, detections, protocol)["mAP"])


def main(argv: list[str] | None = None) -> None:
    if argv is None:  # from the shell: the allocator `detect` would choose (detect.allocator)
        from detect.allocator import use_tcmalloc
        use_tcmalloc()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="detection data set (VOC/ILSVRC root or COCO json)")
    parser.add_argument("--split", default=None, help="split of a VOC/ILSVRC data set")
    parser.add_argument("--proposals", required=True, help="proposal cache covering the split (detect proposals)")
    parser.add_argument("--model", action="append", required=True, help="detector run; repeat for more")
    parser.add_argument("--subset", action="append", default=None,
                        help="comma-separated member indices, e.g. 0,2,3; repeat for more (default: all "
                             "subsets of --max-size or fewer members)")
    parser.add_argument("--max-size", type=int, default=3, help="largest subset when --subset is not given")
    parser.add_argument("--protocol", default="voc12", choices=["ilsvrc", "voc07", "voc12", "coco"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", default=None, help="also write {subset: mAP} here")
    args = parser.parse_args(argv)
    dataset = load_dataset(args.data, split=args.split)
    scores, detector = member_scores(args.model, dataset, args.proposals, args.device)
    n = next(iter(scores.values()))[1].shape[0] if scores else 0
    if args.subset:
        subsets = [tuple(int(i) for i in s.split(",")) for s in args.subset]
        bad = [s for s in subsets if not s or min(s) < 0 or max(s) >= n]
        if bad:
            parser.error(f"--subset {bad[0]}: member indices run from 0 to {n - 1}")
    else:
        subsets = [s for k in range(1, min(args.max_size, n) + 1) for s in itertools.combinations(range(n), k)]
    results = {}
    for subset in subsets:
        name = ",".join(map(str, subset))
        results[name] = subset_map(scores, subset, dataset, detector, args.protocol)
        print(f"{name:<16} {results[name]:.4f}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
