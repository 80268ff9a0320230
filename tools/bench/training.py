"""Benchmark the training data paths against the same training step on pre-made tensors, in the
same run.

    python tools/bench/training.py [--device cpu] [--steps 8] [--workers 1]

- train-classifier: `backbone.train.train_one_epoch` over the real DataLoader (JPEG decoding,
  random-resized crop, photometric distortion, mirror, in --workers processes) against the same
  function over the same loader's batches made beforehand (the step alone: forward with the
  auxiliary heads, loss, backward, SGD, weight average).
- train-detector: `detect.finetune.train_one_epoch` (images decoded and regions labelled in
  loader workers from a proposal cache, R-CNN sampling, crops warped in batches on the device)
  against forward, loss, backward and SGD of the same member on pre-made crops of the same
  count.

Prints images/s (regions/s) of both and their ratio: 1 - ratio is what the data path costs
(target: ratio >= 0.9). Runs alternate real / pre-made --repeats times and keep the best of
each, so load from other processes on a shared machine hurts both sides alike. Data are
generated: JPEG scenes with a few flat boxes, and proposals made by jittering the ground truth
and adding random boxes (the bench measures training, not selective search).
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from backbone.device import resolve_device
from backbone.distributed import DistInfo
from backbone.models import ModelMeta, build_model


def write_scenes(folder: Path, n: int, size: tuple[int, int], seed: int = 0) -> list[tuple[Path, list]]:
    """n JPEG scenes (w x h) with 1-3 flat boxes each: [(path, [(x1, y1, x2, y2, label 1..3)])]."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    w, h = size
    out = []
    for i in range(n):
        img = rng.integers(70, 160, (h, w, 3), dtype=np.uint8)
        boxes = []
        for _ in range(int(rng.integers(1, 4))):
            bw, bh = int(rng.integers(w // 6, w // 2)), int(rng.integers(h // 6, h // 2))
            x, y = int(rng.integers(0, w - bw)), int(rng.integers(0, h - bh))
            label = int(rng.integers(1, 4))
            img[y:y + bh, x:x + bw] = (80 * label, 255 - 60 * label, 40 * label)
            boxes.append((x, y, x + bw, y + bh, label))
        out.append((folder / f"img{i:04d}.jpg", boxes))
        Image.fromarray(img).save(out[-1][0], quality=90)
    return out


def best_of(repeats: int, real, premade) -> tuple[float, float]:
    """Best (lowest) seconds of each callable, run alternately."""
    real_s, premade_s = float("inf"), float("inf")
    for _ in range(repeats):
        real_s = min(real_s, real())
        premade_s = min(premade_s, premade())
    return real_s, premade_s


def bench_classifier(args: argparse.Namespace, tmp: Path, device: torch.device) -> dict:
    """train-classifier's epoch over real JPEGs vs over pre-made batches."""
    from backbone.train import ClassifierConfig, build_loaders, build_state, make_schedule, train_one_epoch

    n = args.steps * args.batch
    for split, count in (("train", n), ("val", args.batch)):
        for c in range(3):
            write_scenes(tmp / "cls" / split / f"class{c}", count // 3 + 1, (args.image_side,) * 2, seed=c)
    cfg = ClassifierConfig()
    cfg.model.width, cfg.model.input_size = args.width, args.input_size
    cfg.train.channels_last = not args.contiguous
    cfg.train.batch_size, cfg.train.workers = args.batch, args.workers
    info = DistInfo(0, 1, 0, device)
    _, loader, _ = build_loaders(cfg, tmp / "cls", info)  # workers forked now, as train_classifier does
    loader.sampler.set_epoch(0)
    model = build_model("googlenet", 3, width=args.width, aux_logits=True).to(device)
    if cfg.train.channels_last:  # as train_classifier does (both sides run the same step)
        model = model.to(memory_format=torch.channels_last)
    state, schedule = build_state(model, cfg.train, device), make_schedule(cfg.train, len(loader))
    premade = [(x.clone(), y.clone()) for x, y in loader]  # the loader's own batches, made once

    def epoch(batches) -> float:
        start = time.perf_counter()
        train_one_epoch(model, state, batches, schedule, cfg.train, 0, device, show_progress=False)
        return time.perf_counter() - start

    train_one_epoch(model, state, premade[:1], schedule, cfg.train, 0, device, show_progress=False)
    real_s, premade_s = best_of(args.repeats, lambda: epoch(loader), lambda: epoch(premade))
    images = len(loader) * args.batch
    return {"images": images, "real_images_per_s": images / real_s,
            "premade_images_per_s": images / premade_s, "ratio": premade_s / real_s}


def detector_data(tmp: Path, n: int) -> tuple[list, "ProposalCache"]:
    """n generated 500x375 scenes as ImageRecords, and a proposal cache of ~1,100 boxes each
    (40 jittered copies of each ground-truth box plus 1,000 random boxes)."""
    from detect.data import ImageRecord
    from proposals import ProposalCache

    cache, records, rng = ProposalCache(tmp / "cache"), [], np.random.default_rng(1)
    for i, (path, boxes) in enumerate(write_scenes(tmp / "det", n, (500, 375))):
        gt = torch.tensor([b[:4] for b in boxes], dtype=torch.float32)
        records.append(ImageRecord(i, path.stem, path, 500, 375, gt, torch.tensor([b[4] for b in boxes]),
                                   torch.zeros(len(boxes), dtype=torch.bool)))
        jitter = gt.repeat(40, 1) + torch.from_numpy(rng.normal(0, 12, (40 * len(gt), 4))).float()
        xy = torch.from_numpy(rng.uniform(0, 300, (1000, 2))).float()
        props = torch.cat([jitter, torch.cat([xy, xy + torch.from_numpy(rng.uniform(20, 200, (1000, 2))).float()], 1)])
        props = props.clamp(min=0).clamp(max=torch.tensor([499.0, 374.0, 499.0, 374.0]))
        props[:, 2:] = torch.maximum(props[:, 2:], props[:, :2] + 1)
        cache.put(path.stem, props, torch.zeros(len(props), dtype=torch.uint8))
    return records, cache


def bench_detector(args: argparse.Namespace, tmp: Path, device: torch.device) -> dict:
    """train-detector's epoch (loader workers, cached proposals, device crops) vs pre-made crops."""
    from detect.config import DetectorConfig
    from backbone.engine import TrainState
    from detect.finetune import TrainImages, make_loader, make_schedule, train_one_epoch

    cfg = DetectorConfig()
    ft = cfg.finetune
    ft.workers, ft.batch_regions, ft.fg_per_batch = args.workers, args.regions, args.regions // 4
    ft.channels_last = not args.contiguous
    records, cache = detector_data(tmp, args.steps * ft.images_per_batch)
    dist = DistInfo(0, 1, 0, device)
    loader = make_loader(TrainImages(records, cache.root, ft), dist, ft.workers)  # before the model, as the command
    model = build_model("googlenet", 4, width=args.width, aux_logits=False).to(device)
    layout = torch.channels_last if ft.channels_last else torch.contiguous_format
    model = model.to(memory_format=layout)  # as train_member does
    meta = ModelMeta("googlenet", 4, ["bg", "a", "b", "c"], width=args.width, input_size=args.input_size)
    optimizer = torch.optim.SGD(model.parameters(), lr=ft.lr, momentum=ft.momentum, weight_decay=ft.weight_decay)
    state, schedule = TrainState(model, optimizer), make_schedule(ft, args.steps)
    gen = torch.Generator().manual_seed(0)
    crops = torch.randn(args.regions, 3, args.input_size, args.input_size, generator=gen).to(device)
    crops = crops.contiguous(memory_format=layout)
    labels = torch.randint(0, 4, (args.regions,), generator=gen).to(device)
    counted = {"regions": 0}  # regions of the last real epoch

    def real() -> float:
        start = time.perf_counter()
        r = train_one_epoch(model, state, loader, schedule, meta, cfg, 0, 0, dist, "bench")
        counted["regions"] = round(r["regions_per_s"] * r["seconds"])
        return time.perf_counter() - start

    def premade() -> float:
        model.train()
        start = time.perf_counter()
        for _ in range(args.steps):
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda" and ft.amp):
                logits = model(crops)  # as the trainer: bfloat16 on a GPU
            loss = F.cross_entropy(logits.float(), labels, reduction="sum") / args.regions
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        loss.item()  # one wait for a GPU at the end, as the real epoch's
        return time.perf_counter() - start

    real_s, premade_s = best_of(args.repeats, real, premade)
    real_rate, premade_rate = counted["regions"] / real_s, args.steps * args.regions / premade_s
    return {"regions": counted["regions"], "real_regions_per_s": real_rate,
            "premade_regions_per_s": premade_rate, "ratio": real_rate / premade_rate}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    p.add_argument("--steps", type=int, default=8, help="training steps per timed epoch")
    p.add_argument("--repeats", type=int, default=2, help="alternating timings; best kept")
    p.add_argument("--workers", type=int, default=1, help="DataLoader worker processes")
    p.add_argument("--width", type=float, default=0.5, help="GoogLeNet width multiplier")
    p.add_argument("--input-size", type=int, default=128, help="training crop side (classifier and regions)")
    p.add_argument("--batch", type=int, default=16, help="classifier images per step")
    p.add_argument("--image-side", type=int, default=256, help="side of the classifier's JPEGs")
    p.add_argument("--regions", type=int, default=32, help="detector regions per step (R-CNN: 128)")
    p.add_argument("--only", choices=["classifier", "detector"], default=None, help="run one part")
    p.add_argument("--contiguous", action="store_true",
                   help="train in the plain NCHW layout (default: channels-last, as the commands do)")
    p.add_argument("--json", default=None, help="also write the numbers here")
    args = p.parse_args()
    from detect.allocator import loaded_allocator, use_tcmalloc
    use_tcmalloc()  # the allocator `detect` runs with (DETECT_ALLOCATOR; detect/allocator.py)
    print(f"memory allocator: {loaded_allocator()}", flush=True)
    device = resolve_device(args.device)
    report = {"device": str(device), "torch_threads": torch.get_num_threads(), "workers": args.workers}
    with tempfile.TemporaryDirectory() as tmp:
        if args.only in (None, "classifier"):
            report["classifier"] = bench_classifier(args, Path(tmp), device)
        if args.only in (None, "detector"):
            report["detector"] = bench_detector(args, Path(tmp), device)
    print(json.dumps(report, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
