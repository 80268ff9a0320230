"""The two modes side by side on one image: multiply-adds (counted) and seconds of region scoring.

One full-width GoogLeNet member at 224 (K = 200 classes, random weights, seeded: no trained
full-width network exists here, and neither the work nor the time depends on the weights) scores
the best-ranked --regions selective-search proposals of one image (default: scikit-image's
astronaut resized to 500 x 375, a VOC-sized image, where R-CNN's setting -- fast mode,
superpixel scale 1 -- gives 1,207 boxes), in both modes:

- R-CNN: `Detector.score_regions`, every region warped to 224 x 224 and run through the whole
  network (16 regions a pass, as `detect run`);
- shared: `detect.shared_mode.ensemble_scores`, the trunk through 4e once on the image scaled
  to Fast R-CNN's 600 px shorter side (longer side at most 1,000), then pool4 .. classifier on
  every region, --batch regions a pass.

Multiply-adds are counted with forward hooks on every Conv2d / Linear (`multiply_adds_per_image`),
the same convention as `detect summary` (1.583 G for one 224 x 224 forward pass). Seconds are
the fastest of --repeats after one warm-up, in float32 (what `precision: auto` resolves to on a
CPU without native bfloat16; --precision to change). --rcnn-regions N times the R-CNN mode on
the first N regions only and scales the time to all of them (its cost is the same for every
region), for busy machines; the JSON says so.

    python tools/bench/shared_mode.py
    python tools/bench/shared_mode.py --rcnn-regions 160 --json runs/bench_shared_mode.json

With --detectors RCNN_RUN SHARED_RUN (two trained detector runs, one of each mode) it measures
them instead on the first --images images of a data set with cached proposals (the demo's test
scenes): each run's `Detector.score_regions` on every cached proposal of each image, as
`detect eval --map` scores them (mirroring and all members as the runs are configured); the
multiply-adds are counted per image and member (`multiply_adds_per_image` at the run's split and
scale), the seconds are the fastest of --repeats passes over the images.

    python tools/bench/shared_mode.py --detectors runs/demo/detector runs/demo/detector_shared \
        --data runs/demo/scenes --split test --proposals runs/demo/proposals --images 20
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from backbone.device import resolve_device
from backbone.models import ModelMeta, build_model
from detect.config import DetectorConfig
from detect.detector import Detector
from detect.regions import to_tensor
from detect.shared_mode import ensemble_scores, image_scale, multiply_adds_per_image
from proposals import build_proposer

SIZE = 224


def default_image() -> np.ndarray:
    import cv2
    from skimage import data

    return cv2.resize(data.astronaut(), (500, 375), interpolation=cv2.INTER_AREA)


def proposals(image: np.ndarray, count: int) -> torch.Tensor:
    """The best-ranked `count` selective-search boxes (fast mode, R-CNN's superpixels), Tensor[R, 4]."""
    cfg = DetectorConfig().proposals
    cfg.multibox.enabled = False
    cfg.selective_search.superpixel_scale = 1.0
    return build_proposer(cfg)(image)[0][:count].float()


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").is_file() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def fastest(runs: list, repeats: int) -> list[float]:
    """The fastest of `repeats` timings of each of `runs`, taken in turns after one warm-up each
    (first allocations, oneDNN set-up), so that a busy spell of the machine hits both modes."""
    for run in runs:
        run()
    times = [[] for _ in runs]
    for _ in range(repeats):
        for run, kept in zip(runs, times):
            start = time.perf_counter()
            run()
            kept.append(time.perf_counter() - start)
    return [min(t) for t in times]


def run_gmacs(detector: Detector, height: int, width: int, regions: int) -> float:
    """Counted G multiply-adds of scoring `regions` regions of one H x W image with every member
    of `detector`, in its mode (mirrored views included)."""
    cfg, total = detector.config, 0
    scale = image_scale(height, width, cfg.shared.short_side, cfg.shared.max_side)
    for model, meta in detector.members:
        counts = multiply_adds_per_image(model, cfg.regions.crop_size or meta.input_size, height, width, regions,
                                         scale, cfg.inference.mirror, cfg.shared.split)
        total += counts["rcnn" if cfg.mode == "rcnn" else "shared"]
    return total / 1e9


def scenes_bench(args: argparse.Namespace) -> dict:
    """Both trained runs on the first --images images with cached proposals: G multiply-adds and
    seconds per image of each, and their ratios (R-CNN's over the shared mode's)."""
    from backbone.io import load_image
    from detect.data import load_dataset
    from proposals import ProposalCache

    cache = ProposalCache(args.proposals)
    records = [r for r in load_dataset(args.data, args.split).images if r.key in cache][:args.images]
    images = [(load_image(r.path), cache.get(r.key)[0].float()) for r in records]
    detectors = [Detector.load(run, device=args.device) for run in args.detectors]
    modes = [d.config.mode for d in detectors]
    if modes != ["rcnn", "shared"]:
        raise SystemExit(f"--detectors: give an R-CNN run, then a shared-mode run (got modes {modes})")
    gmacs = [sum(run_gmacs(d, *img.shape[:2], len(b)) for img, b in images) / len(images) for d in detectors]
    passes = [lambda d=d: [d.score_regions(img, b) for img, b in images] for d in detectors]
    seconds = [t / len(images) for t in fastest(passes, args.repeats)]
    result = {
        "cpu": cpu_name(), "device": args.device, "threads": torch.get_num_threads(), "images": len(images),
        "regions_per_image": sum(len(b) for _, b in images) / len(images), "detectors": args.detectors,
        "members": [len(d.members) for d in detectors], "mirror": [d.config.inference.mirror for d in detectors],
        "shared_split": detectors[1].config.shared.split,
        "rcnn_gmacs": gmacs[0], "shared_gmacs": gmacs[1], "work_ratio": gmacs[0] / gmacs[1],
        "rcnn_s": seconds[0], "shared_s": seconds[1], "speed_ratio": seconds[0] / seconds[1],
    }
    return result


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--image", help="an image file (default: astronaut at 500 x 375)")
    ap.add_argument("--regions", type=int, default=1200, help="proposals scored (best-ranked first)")
    ap.add_argument("--rcnn-regions", type=int, default=0, help="time R-CNN on this many, scaled (0: all)")
    ap.add_argument("--short-side", type=int, default=600, help="shared mode: shorter side (Fast R-CNN: 600)")
    ap.add_argument("--max-side", type=int, default=1000, help="shared mode: longest side cap (Fast R-CNN: 1000)")
    ap.add_argument("--batch", type=int, default=256, help="shared mode: regions per head pass")
    ap.add_argument("--precision", default="float32", help="float32 | bfloat16 | auto")
    ap.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--classes", type=int, default=200)
    ap.add_argument("--json", help="also write the figures here")
    ap.add_argument("--detectors", nargs=2, metavar=("RCNN_RUN", "SHARED_RUN"),
                    help="two trained runs, one of each mode: measure them on --data's images instead")
    ap.add_argument("--data", help="with --detectors: a data set (VOC/COCO) with cached --proposals")
    ap.add_argument("--split", default="test", help="with --detectors: its split")
    ap.add_argument("--proposals", help="with --detectors: the proposal cache of --data")
    ap.add_argument("--images", type=int, default=20, help="with --detectors: the first N images with proposals")
    args = ap.parse_args(argv)
    if args.detectors:
        return report(scenes_bench(args), args.json)

    from backbone.io import load_image

    image = load_image(args.image) if args.image else default_image()
    boxes = proposals(image, args.regions)
    torch.manual_seed(0)
    device = resolve_device(args.device)
    model = build_model("googlenet", args.classes + 1, width=1.0, aux_logits=False, dropout=0.0).to(device).eval()
    meta = ModelMeta("googlenet", args.classes + 1, ["__background__", *map(str, range(args.classes))],
                     input_size=SIZE)
    cfg = DetectorConfig()
    cfg.inference.precision = args.precision
    detector = Detector([(model, meta)], meta.classes[1:], cfg)
    height, width = image.shape[:2]
    scale = image_scale(height, width, args.short_side, args.max_side)
    counts = multiply_adds_per_image(model, SIZE, height, width, len(boxes), scale)

    timed = boxes[:args.rcnn_regions] if args.rcnn_regions else boxes
    autocast = None
    if detector.dtype is not None:
        autocast = lambda: torch.autocast(device.type, dtype=detector.dtype)  # noqa: E731

    def shared() -> None:
        ensemble_scores([model], [SIZE], to_tensor(image, meta.mean, meta.std, device), boxes, scale=scale,
                        batch_size=args.batch, autocast=autocast, channels_last=True)

    rcnn_s, shared_s = fastest([lambda: detector.score_regions(image, timed), shared], args.repeats)
    rcnn_s *= len(boxes) / len(timed)
    result = {
        "cpu": cpu_name(), "device": str(device), "threads": torch.get_num_threads(),
        "image": [height, width], "regions": len(boxes), "rcnn_regions_timed": len(timed),
        "shared_scale": round(scale, 4), "precision": str(detector.dtype or "float32"),
        "rcnn_gmacs": counts["rcnn"] / 1e9, "shared_gmacs": counts["shared"] / 1e9,
        "shared_trunk_gmacs": counts["shared_trunk"] / 1e9, "shared_regions_gmacs": counts["shared_regions"] / 1e9,
        "work_ratio": counts["rcnn"] / counts["shared"],
        "rcnn_s": rcnn_s, "shared_s": shared_s, "speed_ratio": rcnn_s / shared_s,
    }
    return report(result, args.json)


def report(result: dict, path: str | None) -> dict:
    """Print `result` as JSON, and write it to `path` if given."""
    print(json.dumps(result, indent=1))
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
