"""One image end to end: seconds per image, split into proposals, cropping,
network and NMS, for one full-width GoogLeNet member at 224 and about 1,200 proposals.

What runs is what `detect run --image` runs: `Detector.load(run).detect(image)` (proposals from
the run's config, every proposal warped and scored, per-class NMS), on a detector run folder
this script writes: one full-width member (K = 200 classes, random weights, seeded: no trained
full-width network exists on this machine, and the time does not depend on the weights).
Proposals: selective search (OpenCV, --mode, superpixel scale --superpixel-scale) merged and
de-duplicated as `detect run` does, then the best-ranked --regions kept; the default image
(scikit-image's astronaut at 500 x 500) gives about 1,500 at scale 1, so the network sees
exactly 1,200 regions.

Each precision setting runs the image --repeats times after one warm-up image (one-time costs:
OpenCV and oneDNN set-up, first allocations) and keeps the fastest. The baseline in the same run
is float32; the fast setting is `inference.precision` "auto" (bfloat16 + channels-last on CPUs
with native bfloat16, after its agreement check with float32).

    python tools/bench/one_image.py                     # astronaut, 1,200 regions, float32 and auto
    python tools/bench/one_image.py --image photo.jpg --json bench.json
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from backbone.io import load_image
from backbone.models import ModelMeta, build_model
from detect.config import DetectorConfig
from detect.detector import Detector, save_detector_run
from proposals import build_proposer

RCNN_CPU_SECONDS = 53.0  # R-CNN (AlexNet, 2,000 regions) on a CPU, its paper's figure


def default_image() -> np.ndarray:
    import cv2
    from skimage import data

    image = data.astronaut()
    return cv2.resize(image, (500, round(image.shape[0] * 500 / image.shape[1])), interpolation=cv2.INTER_AREA)


def write_run(folder: Path, args: argparse.Namespace) -> None:
    torch.manual_seed(0)
    model = build_model("googlenet", args.classes + 1, width=1.0, aux_logits=False, dropout=0.0)
    with torch.no_grad():  # peak the random net's softmax as a trained one's is
        model.fc.weight.mul_(args.logit_scale)
    classes = [f"class_{i}" for i in range(args.classes)]
    meta = ModelMeta("googlenet", args.classes + 1, ["__background__", *classes], input_size=224)
    cfg = DetectorConfig()
    ss = cfg.proposals.selective_search
    ss.mode, ss.superpixel_scale = args.mode, args.superpixel_scale
    cfg.proposals.multibox.enabled = False
    cfg.regions.crop_size = 224
    save_detector_run(folder, [(model, meta)], cfg, classes)


def measure(run: Path, image: np.ndarray, precision: str, args: argparse.Namespace) -> dict:
    detector = Detector.load(run, device=args.device, precision=precision)
    detector.timed = True  # each stage waits for a GPU: the split per stage is what this measures
    proposer = build_proposer(detector.config.proposals)
    counts: list[int] = []  # regions of each detect() call, recorded as they are proposed

    def top_proposals(pixels):  # best-ranked first
        kept = tuple(t[:args.regions] for t in proposer(pixels))
        counts.append(len(kept[0]))
        return kept

    detector.proposer = top_proposals
    detector.detect(image)  # warm-up image
    best: dict | None = None
    for _ in range(args.repeats):
        detector.timings = dict.fromkeys(detector.timings, 0.0)
        start = time.perf_counter()
        dets = detector.detect(image)
        total = time.perf_counter() - start
        if best is None or total < best["total"]:
            best = {**detector.timings, "total": total, "regions": counts[-1], "detections": len(dets["scores"])}
    best["dtype"] = str(detector.dtype or torch.float32).replace("torch.", "")
    best["batch_size"] = detector.batch_size()
    best["fast_check"] = detector.fast_check
    return best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--image", default=None, help="image file (default: scikit-image's astronaut, 500 px wide)")
    p.add_argument("--regions", type=int, default=1200, help="proposals kept per image (the best-ranked)")
    p.add_argument("--mode", default="fast", help="selective search mode: single, fast, quality")
    p.add_argument("--superpixel-scale", type=float, default=1.0,
                   help="selective search k multiplier (the detector default is 2.0: fewer boxes)")
    p.add_argument("--classes", type=int, default=200, help="foreground classes K (ILSVRC: 200)")
    p.add_argument("--logit-scale", type=float, default=40.0, help="multiply the random classifier weights")
    p.add_argument("--precisions", default="float32,auto", help="comma-separated inference.precision values")
    p.add_argument("--repeats", type=int, default=2, help="timed images per setting; fastest kept")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto")
    p.add_argument("--json", default=None, help="also write the numbers here")
    args = p.parse_args()
    from detect.allocator import loaded_allocator, use_tcmalloc
    use_tcmalloc()  # the allocator `detect` runs with (DETECT_ALLOCATOR; detect/allocator.py)
    print(f"memory allocator: {loaded_allocator()}", flush=True)
    image = load_image(args.image) if args.image else default_image()
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, image {image.shape[1]}x{image.shape[0]}, "
          f"selective search {args.mode} x{args.superpixel_scale}, at most {args.regions} regions")
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        write_run(Path(tmp) / "run", args)
        for precision in args.precisions.split(","):
            r = rows[precision] = measure(Path(tmp) / "run", image, precision, args)
            print(f"{precision:>8} ({r['dtype']}, batch {r['batch_size']}): {r['regions']} regions  "
                  f"proposals {r['proposals']:.2f} s  crops {r['crops']:.2f} s  network {r['network']:.2f} s  "
                  f"NMS {r['nms']:.3f} s  total {r['total']:.2f} s/image  "
                  f"({r['regions'] / max(r['network'], 1e-9):.1f} regions/s in the network; "
                  f"R-CNN {RCNN_CPU_SECONDS:.0f} s = {RCNN_CPU_SECONDS / r['total']:.1f}x)", flush=True)
            if r["fast_check"]:
                print(f"          agreement check: {r['fast_check']}")
    if "float32" in rows and len(rows) > 1:
        for name, r in rows.items():
            if name != "float32":
                print(f"{name} vs float32: {rows['float32']['total'] / r['total']:.2f}x faster per image")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "rows": rows}, indent=2, default=str))


if __name__ == "__main__":
    main()
