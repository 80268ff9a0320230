"""`detect run`'s library side: a detector over image files, with results, drawings, a summary.

Shapes: D detections of one image; boxes Tensor[D, 4] xyxy pixels, labels 1..K.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch import Tensor

from backbone.errors import InputError
from backbone.io import atomic_write_json, load_image, read_json
from detect.detector import Detector

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


def list_images(folder: str | Path) -> list[Path]:
    """The image files directly inside `folder` (by suffix, any case), sorted by name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(folder, "image folder not found")
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def detect_images(detector: Detector, paths: Sequence[str | Path], out_dir: str | Path,
                  progress: bool = True, echo: Callable[[str], None] = print,
                  positions: Sequence[int] | None = None) -> dict:
    """Detect in each image file; write OUT/detections.json (COCO results with class names),
    OUT/<name>.png (the detections drawn) and OUT/run.json (per-image summary, skipped files).

    An unreadable image is skipped and listed; what finished is written even if the run is
    interrupted. `positions` are the images' places in the whole list (default 0, 1, ...;
    a shard passes i, i+n, ...), kept as "index" so that `merge_shards` restores the order.
    Returns the run.json content: {"images": [...], "skipped": [{"file", "error", "index"}]}.
    """
    from tqdm import tqdm

    from detect.visualize import save_detections_png

    say = tqdm.write if progress else echo  # tqdm.write keeps the progress bar intact
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    done: list[tuple] = []  # (path, name, (w, h), detections, seconds per stage)
    summary: dict = {"images": [], "skipped": []}
    used: set[str] = set()
    positions = list(range(len(paths))) if positions is None else list(positions)
    try:
        for pos, path in tqdm(list(zip(positions, map(Path, paths))), desc="detect", unit="image",
                              disable=not progress):
            try:
                pixels = load_image(path)
            except InputError as e:
                summary["skipped"].append({"file": str(path), "error": e.problem, "index": pos})
                say(f"skipped {path}: {e.problem}")
                continue
            start, before = time.perf_counter(), dict(detector.timings)
            dets = detector.detect(pixels)
            stages = {k: round(v - before[k], 3) for k, v in detector.timings.items()}
            key = _unique_name(path.stem, used)
            save_detections_png(out / f"{key}.png", pixels, dets, detector.classes)
            done.append((path, key, (pixels.shape[1], pixels.shape[0]), dets, stages, pos))
            line = _summary_line(path, dets, detector.classes, time.perf_counter() - start, stages)
            say(line)
    finally:
        _write_results(out, done, detector.classes, summary)
    return summary


def _unique_name(stem: str, used: set[str]) -> str:
    name, n = stem, 1
    while name in used:
        name, n = f"{stem}_{n}", n + 1
    used.add(name)
    return name


def _summary_line(path: Path, dets: dict[str, Tensor], classes: list[str], seconds: float,
                  stages: dict[str, float]) -> str:
    best = ", ".join(f"{classes[int(lab) - 1]} {float(s):.2f}"
                     for lab, s in zip(dets["labels"][:5], dets["scores"][:5]))
    more = " ..." if len(dets["scores"]) > 5 else ""
    split = ", ".join(f"{k} {v:.1f}" for k, v in stages.items())
    return f"{path}: {len(dets['scores'])} detections ({best}{more}) in {seconds:.1f} s ({split})"


def _write_results(out: Path, done: list, classes: list[str], summary: dict) -> None:
    """detections.json over the finished images (ids 0.. in order) and run.json."""
    from detect.data import DetectionDataset, ImageRecord
    from detect.results import write_detections

    records, dets = [], {}
    for image_id, (path, key, (width, height), d, stages, pos) in enumerate(done):
        records.append(ImageRecord(image_id, key, path.resolve(), width, height,
                                   torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64),
                                   torch.zeros(0, dtype=torch.bool)))
        dets[image_id] = d
        summary["images"].append({"image_id": image_id, "file": str(path), "png": f"{key}.png",
                                  "width": width, "height": height,
                                  "detections": len(d["scores"]), "seconds": stages, "index": pos})
    dataset = DetectionDataset(classes, records, out, list(range(1, len(classes) + 1)))
    write_detections(out / "detections.json", dets, dataset)
    atomic_write_json(out / "run.json", summary)


def shard_folder(out_dir: str | Path, shard: tuple[int, int]) -> Path:
    """Where `detect run --shard i/n` writes: OUT/shard-i-of-n/."""
    return Path(out_dir) / f"shard-{shard[0]}-of-{shard[1]}"


def merge_shards(out_dir: str | Path) -> dict:
    """Merge OUT/shard-i-of-n/ (every i of one n) into OUT/detections.json and OUT/run.json.

    Images come back in their order in the whole list with image ids 0, 1, ... as one
    unsharded run gives them; "png" names the shard's drawing. InputError if a shard is
    missing or unfinished. Returns the merged run.json content.
    """
    out = Path(out_dir)
    shards = sorted(p for p in out.glob("shard-*-of-*") if p.is_dir())
    counts = {p.name.rsplit("-of-", 1)[1] for p in shards}
    if len(counts) != 1 or not all(c.isdigit() for c in counts):
        raise InputError(out, f"expected shard-I-of-N folders of one N, found {[p.name for p in shards]}")
    n = int(counts.pop())
    missing = [i for i in range(n) if not (shard_folder(out, (i, n)) / "run.json").is_file()]
    if missing:
        raise InputError(out, f"shards {missing} of {n} have no run.json (not run or not finished)")
    rows, skipped = [], []
    for i in range(n):
        folder = shard_folder(out, (i, n))
        run, entries = read_json(folder / "run.json"), read_json(folder / "detections.json")
        by_id: dict[int, list] = {}
        for e in entries:
            by_id.setdefault(e["image_id"], []).append(e)
        rows += [(img["index"], folder.name, img, by_id.get(img["image_id"], [])) for img in run["images"]]
        skipped += run["skipped"]
    rows.sort(key=lambda r: r[0])
    images, detections = [], []
    for image_id, (_, name, img, entries) in enumerate(rows):
        images.append({**img, "image_id": image_id, "png": f"{name}/{img['png']}"})
        detections += [{**e, "image_id": image_id} for e in entries]
    summary = {"images": images, "skipped": sorted(skipped, key=lambda s: s["index"]), "shards": n}
    atomic_write_json(out / "detections.json", detections, indent=None)
    atomic_write_json(out / "run.json", summary)
    return summary
