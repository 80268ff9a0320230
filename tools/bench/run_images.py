"""Benchmark `detect run --images` with proposals computed ahead in worker processes against the
sequential sum of its parts, in the same run.

    python tools/bench/run_images.py [--images DIR] [--workers 1] [--width 0.25] [--crop 96]

Images: every image of --images (default examples/JPEGImages, 20 scenes; else 20 generated
500 x 375 scenes). One random-init GoogLeNet member (speed does not depend on the weights).
It prints, over the same images:

- sequential: `detect_images(..., proposal_workers=0)` end to end, and the sum of its parts:
  the per-image stage seconds it records (proposals; crops + network + NMS = scoring);
- overlap: `detect_images(..., proposal_workers=W)` end to end;
- images/s of each and the ratios overlap / sum of parts and overlap / sequential (target
  >= 1.5x on 2 cores when the two parts cost about the same: choose --width/--crop/--max-boxes
  so that they do), and whether the overlap's detections.json equals the sequential one.

--threads sets torch's threads in this process for every measurement (default: torch's).
The two runs alternate --repeats times and the best of each is kept: load from other
processes hurts all alike, and the first pass also pays oneDNN's kernel creation for every new
batch shape (the last batch of each image has its own size).
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from backbone.device import resolve_device
from backbone.io import load_image
from backbone.models import ModelMeta, build_model
from detect.config import DetectorConfig
from detect.detector import Detector
from detect.run_images import detect_images, list_images

ROOT = Path(__file__).resolve().parents[2]  # the repository (examples/)


def generated_images(folder: Path, n: int) -> list[Path]:
    """n noisy 500 x 375 scenes with a few flat rectangles (something for selective search)."""
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        img = rng.integers(70, 160, (375, 500, 3), dtype=np.uint8)
        for _ in range(4):
            x, y, w, h = rng.integers(0, 380), rng.integers(0, 270), rng.integers(40, 120), rng.integers(40, 100)
            img[y:y + h, x:x + w] = rng.integers(0, 256, 3)
        paths.append(folder / f"scene{i:02d}.png")
        Image.fromarray(img).save(paths[-1])
    return paths


def make_detector(args: argparse.Namespace) -> Detector:
    """One random-init member of --width at --crop; proposals: selective search --mode."""
    torch.manual_seed(0)
    model = build_model("googlenet", args.classes + 1, width=args.width, aux_logits=False, dropout=0.0)
    model.to(resolve_device(args.device)).eval()
    meta = ModelMeta("googlenet", args.classes + 1, ["__background__", *map(str, range(args.classes))],
                     width=args.width, input_size=args.crop)
    cfg = DetectorConfig()
    cfg.inference.precision = args.precision
    cfg.proposals.selective_search.mode = args.mode
    cfg.proposals.selective_search.max_boxes = args.max_boxes
    return Detector([(model, meta)], [str(i) for i in range(args.classes)], cfg)


def end_to_end(detector: Detector, paths: list[Path], out: Path, workers: int) -> tuple[float, dict]:
    """Wall seconds of detect_images into a fresh folder (nothing to resume), and the sums of
    its per-image stage seconds (run.json: proposals, crops, network, nms)."""
    start = time.perf_counter()
    summary = detect_images(detector, paths, out, progress=False, echo=lambda _: None,
                            proposal_workers=workers)
    wall = time.perf_counter() - start
    stages = {k: sum(img["seconds"][k] for img in summary["images"]) for k in summary["images"][0]["seconds"]}
    return wall, stages


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", default=None, help="image folder (default: examples/JPEGImages or generated)")
    p.add_argument("--limit", type=int, default=20, help="at most this many images")
    p.add_argument("--workers", type=int, default=1, help="proposal worker processes of the overlap run")
    p.add_argument("--threads", type=int, default=0, help="torch threads here (0 = torch's default)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    p.add_argument("--width", type=float, default=0.25, help="GoogLeNet width multiplier")
    p.add_argument("--crop", type=int, default=96, help="crop side")
    p.add_argument("--classes", type=int, default=20, help="foreground classes K")
    p.add_argument("--precision", default="auto", help="inference.precision")
    p.add_argument("--mode", default="fast", help="selective search strategy set: single | fast | quality")
    p.add_argument("--max-boxes", type=int, default=300, help="selective search boxes kept (0 = all)")
    p.add_argument("--repeats", type=int, default=2, help="alternating timings; best kept")
    p.add_argument("--json", default=None, help="also write the numbers here")
    args = p.parse_args()
    from detect.allocator import loaded_allocator, use_tcmalloc
    use_tcmalloc()  # the allocator `detect` runs with (DETECT_ALLOCATOR; detect/allocator.py)
    print(f"memory allocator: {loaded_allocator()}", flush=True)
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        folder = Path(args.images) if args.images else ROOT / "examples" / "JPEGImages"
        paths = list_images(folder)[:args.limit] if folder.is_dir() else generated_images(tmp, args.limit)
        detector = make_detector(args)
        proposed = [len(detector.propose(load_image(p))) for p in paths[:3]]  # regions, for the report
        detector.detect(load_image(paths[0]))  # warm-up (and precision "auto"'s agreement check)
        best: dict = {"overlap": (float("inf"), {}), "sequential": (float("inf"), {})}
        for r in range(args.repeats):  # alternate, keep the best of each (see the docstring)
            best["overlap"] = min(best["overlap"], end_to_end(detector, paths, tmp / f"overlap{r}", args.workers),
                                  key=lambda t: t[0])
            best["sequential"] = min(best["sequential"], end_to_end(detector, paths, tmp / f"seq{r}", 0),
                                     key=lambda t: t[0])
        (overlap_s, _), (sequential_s, stages) = best["overlap"], best["sequential"]
        prop_s, score_s = stages["proposals"], sum(v for k, v in stages.items() if k != "proposals")
        same = all((tmp / f"overlap{r}" / "detections.json").read_bytes() ==
                   (tmp / "seq0" / "detections.json").read_bytes() for r in range(args.repeats))
    n = len(paths)
    report = {
        "images": n, "regions_per_image_first_3": sum(proposed) / len(proposed), "workers": args.workers,
        "torch_threads": torch.get_num_threads(), "device": str(detector.device),
        "precision": str(detector.dtype or "float32").replace("torch.", ""),
        "proposals_s_per_image": prop_s / n, "scoring_s_per_image": score_s / n,
        "sum_of_parts_images_per_s": n / (prop_s + score_s),
        "sequential_images_per_s": n / sequential_s, "overlap_images_per_s": n / overlap_s,
        "ratio_overlap_vs_sum_of_parts": (prop_s + score_s) / overlap_s,
        "ratio_overlap_vs_sequential": sequential_s / overlap_s, "same_detections": same,
    }
    for k, v in report.items():
        print(f"{k:32s} {v:.3f}" if isinstance(v, float) else f"{k:32s} {v}")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
