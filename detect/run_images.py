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
from backbone.io import atomic_write_json, load_image
from detect.detector import Detector

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


def list_images(folder: str | Path) -> list[Path]:
    """The image files directly inside `folder` (by suffix, any case), sorted by name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(folder, "image folder not found")
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def detect_images(detector: Detector, paths: Sequence[str | Path], out_dir: str | Path,
                  progress: bool = True, echo: Callable[[str], None] = print) -> dict:
    """Detect in each image file; write OUT/detections.json (COCO results with class names),
    OUT/<name>.png (the detections drawn) and OUT/run.json (per-image summary, skipped files).

    An unreadable image is skipped and listed; what finished is written even if the run is
    interrupted. Returns the run.json content: {"images": [...], "skipped": [{"file", "error"}]}.
    """
    from tqdm import tqdm

    from detect.visualize import save_detections_png

    say = tqdm.write if progress else echo  # tqdm.write keeps the progress bar intact
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    done: list[tuple] = []  # (path, name, (w, h), detections, seconds per stage)
    summary: dict = {"images": [], "skipped": []}
    used: set[str] = set()
    try:
        for path in tqdm([Path(p) for p in paths], desc="detect", unit="image", disable=not progress):
            try:
                pixels = load_image(path)
            except InputError as e:
                summary["skipped"].append({"file": str(path), "error": e.problem})
                say(f"skipped {path}: {e.problem}")
                continue
            start, before = time.perf_counter(), dict(detector.timings)
            dets = detector.detect(pixels)
            stages = {k: round(v - before[k], 3) for k, v in detector.timings.items()}
            key = _unique_name(path.stem, used)
            save_detections_png(out / f"{key}.png", pixels, dets, detector.classes)
            done.append((path, key, (pixels.shape[1], pixels.shape[0]), dets, stages))
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
    for image_id, (path, key, (width, height), d, stages) in enumerate(done):
        records.append(ImageRecord(image_id, key, path.resolve(), width, height,
                                   torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64),
                                   torch.zeros(0, dtype=torch.bool)))
        dets[image_id] = d
        summary["images"].append({"image_id": image_id, "file": str(path), "png": f"{key}.png",
                                  "width": width, "height": height,
                                  "detections": len(d["scores"]), "seconds": stages})
    dataset = DetectionDataset(classes, records, out, list(range(1, len(classes) + 1)))
    write_detections(out / "detections.json", dets, dataset)
    atomic_write_json(out / "run.json", summary)
