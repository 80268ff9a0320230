"""`detect run`'s library side: a detector over image files, with results, drawings, a summary.

Shapes: N proposals, K foreground classes, D detections of one image; boxes Tensor[., 4] xyxy
pixels, labels 1..K.

`detect_image` is the whole detector on one image, step by step, as R-CNN's demo shows it.
`detect_images` runs a list of files (a folder) as a batch job: resumable, shardable, with
the next images' proposals computed while the network scores this one.
"""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Callable, Iterator, Sequence

import torch
from torch import Tensor

from backbone.errors import InputError
from backbone.io import atomic_write_json, load_image, read_json
from detect.allocator import loaded_allocator
from detect.detector import Detector
from detect.results import coco_entries
from detect.visualize import DISPLAY_THRESHOLD, save_detections_png

PER_IMAGE = ".per_image"  # OUT/.per_image/<index>.json: finished images of an interrupted run
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


def list_images(folder: str | Path) -> list[Path]:
    """The image files directly inside `folder` (by suffix, any case), sorted by name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(folder, "image folder not found")
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def detect_image(detector: Detector, path: str | Path, out_dir: str | Path,
                 echo: Callable[[str], None] = print, display_threshold: float = DISPLAY_THRESHOLD) -> dict:
    """Detect in one image file; write OUT/detections.json (COCO results, image id 0),
    OUT/<stem>.png (the detections drawn) and OUT/run.json. Returns the run.json content.

    InputError if the image cannot be read. Nothing is kept for a rerun: one image is redone.
    """
    path, out = Path(path), Path(out_dir)
    start, before = time.perf_counter(), dict(detector.timings)
    pixels = load_image(path)                        # uint8 [H, W, 3] RGB, decoded once
    boxes = detector.propose(pixels)                 # Tensor[N, 4]: selective search (+ MultiBox)
    dets = detector.detect(pixels, boxes)            # scores, box regression, per-class NMS: D detections
    save_detections_png(out / f"{path.stem}.png", pixels, dets, detector.classes, display_threshold)
    stages = _stage_seconds(detector, before)
    echo(_summary_line(path, dets, detector.classes, time.perf_counter() - start, stages))
    rec = _new_record(0, path, path.stem, pixels.shape, dets, stages)
    return _write_results(out, [rec], detector.classes, _new_summary())


def detect_images(detector: Detector, paths: Sequence[str | Path], out_dir: str | Path,
                  progress: bool = True, echo: Callable[[str], None] = print,
                  positions: Sequence[int] | None = None, proposal_workers: int | None = None,
                  display_threshold: float = DISPLAY_THRESHOLD) -> dict:
    """Detect in each image file; write OUT/detections.json (COCO results with class names),
    OUT/<name>.png (the detections drawn) and OUT/run.json (per-image summary, skipped files).

    An unreadable image is skipped and listed. `positions` are the images' places in the whole
    list (default 0, 1, ...; a shard passes i, i+n, ...), kept as "index" so that
    `detect.sharding.merge_shards` restores the order. `proposal_workers` processes compute the
    next images' proposals while the network scores this one (0 = inline; default cores - 1, at
    least 1; same results).

    Resumable: each image's result is written as soon as it is done (OUT/.per_image/<index>.json,
    atomically, after its PNG), so a run killed at any moment and started again skips the
    finished images. A rerun with another model or detector config starts over (the old
    per-image results are deleted, with a message). detections.json and run.json are written
    from all per-image results at the end (and on an exception).
    Returns the run.json content: {"images": [...], "skipped": [{"file", "error", "index"}],
    "environment": {"allocator", "torch_threads", "torch"}}.
    """
    from backbone.progress import progress as progress_bar
    from backbone.progress import write
    from detect.overlap import default_proposal_workers, proposals_ahead

    say = write if progress else echo  # above the bar on a terminal, plain lines elsewhere
    out = Path(out_dir)
    paths = [Path(p) for p in paths]
    positions = list(range(len(paths))) if positions is None else list(positions)
    store = _open_store(out, _fingerprint(detector), say)
    records = [_read_record(store, pos, path) for pos, path in zip(positions, paths)]
    if any(records):
        say(f"{out}: {sum(r is not None for r in records)} of {len(paths)} images already done, continuing")
    todo = [path for path, rec in zip(paths, records) if rec is None]
    workers = default_proposal_workers() if proposal_workers is None else proposal_workers
    stream = proposals_ahead(detector, todo, workers)
    done: list[dict] = []  # per-image records, in list order
    summary = _new_summary()
    used: set[str] = set()
    try:
        for pos, path, rec in progress_bar(list(zip(positions, paths, records)), desc="detect", unit="image",
                                           disable=not progress):
            if rec is None:
                rec = _detect_listed(detector, pos, path, stream, used, out, say, summary["skipped"],
                                     display_threshold)
                if rec is None:
                    continue
                atomic_write_json(store / f"{pos}.json", rec, indent=None)  # after its PNG
            used.add(rec["png"][:-len(".png")])
            done.append(rec)
    finally:
        stream.close()  # stops the proposal workers
        _write_results(out, done, detector.classes, summary)
    return summary


def _detect_listed(detector: Detector, pos: int, path: Path, stream: Iterator[Tensor | None], used: set[str],
                   out: Path, say: Callable[[str], None], skipped: list[dict],
                   display_threshold: float = DISPLAY_THRESHOLD) -> dict | None:
    """Detect in image `pos` of a list, its proposals the next of `stream` (None: proposed
    here); draw OUT/<name>.png, the name the file's stem made unique among `used`. Returns its
    record, or None if it cannot be read (then listed in `skipped`)."""
    start, before = time.perf_counter(), dict(detector.timings)
    boxes = next(stream)
    try:
        pixels = load_image(path)
    except InputError as e:
        skipped.append({"file": str(path), "error": e.problem, "index": pos})
        say(f"skipped {path}: {e.problem}")
        return None
    dets = detector.detect(pixels, boxes)
    stages = _stage_seconds(detector, before)
    name = _unique_name(path.stem, used)
    save_detections_png(out / f"{name}.png", pixels, dets, detector.classes, display_threshold)
    say(_summary_line(path, dets, detector.classes, time.perf_counter() - start, stages))
    return _new_record(pos, path, name, pixels.shape, dets, stages)


def _stage_seconds(detector: Detector, before: dict[str, float]) -> dict[str, float]:
    """Seconds each stage took since `before` (a copy of `detector.timings`)."""
    return {k: round(v - before[k], 3) for k, v in detector.timings.items()}


def _fingerprint(detector: Detector) -> str:
    """sha256 of the detector's classes, config and every member's weights: a rerun continues
    only what the same detector started."""
    import hashlib

    from backbone.config import config_to_dict

    digest = hashlib.sha256(json.dumps({"classes": detector.classes, "config": config_to_dict(detector.config)},
                                       sort_keys=True, default=str).encode())
    for model, _ in detector.members:
        for name, t in model.state_dict().items():
            digest.update(name.encode())
            digest.update(t.detach().cpu().float().numpy().tobytes())  # C order, any layout
    return digest.hexdigest()


def _open_store(out: Path, fingerprint: str, say: Callable[[str], None]) -> Path:
    """OUT/.per_image/ holding this detector's finished images; emptied if another made them."""
    store = out / PER_IMAGE
    stamp = store / "fingerprint.json"
    if store.is_dir():
        saved = read_json(stamp).get("fingerprint") if stamp.is_file() else None
        if saved != fingerprint:
            say(f"{out}: earlier results came from another model or config; starting over")
            shutil.rmtree(store)
    store.mkdir(parents=True, exist_ok=True)
    if not stamp.is_file():
        atomic_write_json(stamp, {"fingerprint": fingerprint})
    return store


def _read_record(store: Path, pos: int, path: Path) -> dict | None:
    """The finished result of image `pos` if it is this file's (the list may have changed)."""
    file = store / f"{pos}.json"
    if not file.is_file():
        return None
    rec = read_json(file)
    return rec if rec.get("file") == str(path) and (store.parent / rec["png"]).is_file() else None


def _new_summary() -> dict:
    """run.json before any image: no images, nothing skipped, and what the timings ran on (the
    memory allocator, detect/allocator.py, and the threads)."""
    return {"images": [], "skipped": [],
            "environment": {"allocator": loaded_allocator(), "torch_threads": torch.get_num_threads(),
                            "torch": torch.__version__}}


def _new_record(pos: int, path: Path, key: str, shape: tuple, dets: dict[str, Tensor],
                stages: dict[str, float]) -> dict:
    """One image's result as JSON: float32 boxes and scores survive the round trip exactly."""
    return {"index": pos, "file": str(path), "png": f"{key}.png", "width": shape[1], "height": shape[0],
            "boxes": dets["boxes"].tolist(), "scores": dets["scores"].tolist(),
            "labels": dets["labels"].tolist(), "seconds": stages}


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


def _write_results(out: Path, done: list[dict], classes: list[str], summary: dict) -> dict:
    """detections.json over the finished images (ids 0.. in order) and run.json: `summary`
    with the images added, which is returned."""
    entries = []
    for image_id, rec in enumerate(done):
        dets = {"boxes": torch.tensor(rec["boxes"], dtype=torch.float32).reshape(-1, 4),
                "scores": torch.tensor(rec["scores"], dtype=torch.float32),
                "labels": torch.tensor(rec["labels"], dtype=torch.int64)}
        entries += coco_entries(image_id, dets, classes, rec["png"][:-len(".png")])
        summary["images"].append({"image_id": image_id, "file": rec["file"], "png": rec["png"],
                                  "width": rec["width"], "height": rec["height"],
                                  "detections": len(rec["scores"]), "seconds": rec["seconds"],
                                  "index": rec["index"]})
    atomic_write_json(out / "detections.json", entries, indent=None)
    atomic_write_json(out / "run.json", summary)
    return summary
