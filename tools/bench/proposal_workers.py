"""Images/s of `detect proposals` with all cores against one process of OpenCV's fast mode.

Both sides read the same image files and run the same selective search (OpenCV, fast mode,
width 500, superpixel scale 2): the baseline is a plain loop in this process (OpenCV's
default threads); the contender is `proposals.compute_proposals`, the function
`detect proposals` calls, with one worker per core, writing a fresh cache. Its time includes
starting the workers and writing the cache. Target: >= 1.8x on 2 cores.

    python tools/bench/proposal_workers.py [--images DIR] [--copies 2] [--workers N]

Without --images it writes scikit-image's photographs (and mirrored copies) to a temporary
folder. Run it on a quiet machine: other processes on the cores distort both numbers.
"""
from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time
from pathlib import Path

from PIL import Image

from backbone.io import load_image
from proposals import ProposalConfig, compute_proposals, selective_search
from detect.scenes import load_photos

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".ppm"}
# scikit-image's photographs, as tools/bench/selective_search_scale.py measures them
PHOTOGRAPHS = ("astronaut", "camera", "chelsea", "coffee", "coins", "hubble_deep_field",
               "immunohistochemistry", "moon", "rocket", "retina")


def write_photographs(folder: Path, copies: int) -> list[Path]:
    """scikit-image's photographs as JPEGs, each also mirrored (`copies` variants each)."""
    paths = []
    for name, image in zip(PHOTOGRAPHS, load_photos(PHOTOGRAPHS)):
        for c in range(copies):
            path = folder / f"{name}_{c}.jpg"
            Image.fromarray(image[:, ::-1] if c % 2 else image).save(path, quality=92)
            paths.append(path)
    return paths


def _cpu_seconds() -> float:
    """CPU time of this process and of its finished (waited-for) children."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def baseline(paths: list[Path], config: ProposalConfig) -> tuple[float, float]:
    """(wall, CPU) seconds for one process to read every image and run selective search on it."""
    ss = config.selective_search
    start, cpu = time.perf_counter(), _cpu_seconds()
    for path in paths:
        selective_search(load_image(path), backend=ss.backend, mode=ss.mode,
                         superpixel_scale=ss.superpixel_scale, resize_width=ss.resize_width,
                         min_size=ss.min_size, seed=ss.seed)
    return time.perf_counter() - start, _cpu_seconds() - cpu


def contender(paths: list[Path], config: ProposalConfig, workers: int, out: Path) -> tuple[float, float]:
    """(wall, CPU) seconds of compute_proposals (what `detect proposals` runs), workers included."""
    start, cpu = time.perf_counter(), _cpu_seconds()
    summary = compute_proposals([(p.stem, p) for p in paths], config, out, workers=workers, progress=False)
    seconds = time.perf_counter() - start
    assert summary["done"] == len(paths), summary
    return seconds, _cpu_seconds() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", default=None, help="folder of images (default: skimage photographs)")
    parser.add_argument("--copies", type=int, default=2, help="variants of each photograph (default 2)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    config = ProposalConfig()  # OpenCV fast mode, width 500, scale 2: the paper's setting
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if args.images:
            paths = sorted(p for p in Path(args.images).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        else:
            (tmp / "images").mkdir()
            paths = write_photographs(tmp / "images", args.copies)
        print(f"{len(paths)} images, {args.workers} workers, {os.cpu_count()} cores; "
              f"load average before: {os.getloadavg()[0]:.2f}", flush=True)
        one, one_cpu = baseline(paths, config)
        print(f"one process (OpenCV fast mode):  {len(paths) / one:6.3f} images/s "
              f"({one:.1f} s wall, {one_cpu:.1f} s CPU)", flush=True)
        many, many_cpu = contender(paths, config, args.workers, tmp / "cache")
        print(f"detect proposals, all cores:     {len(paths) / many:6.3f} images/s "
              f"({many:.1f} s wall, {many_cpu:.1f} s CPU)")
        print(f"speed-up: {one / many:.2f}x wall (target >= 1.8x on 2 cores); "
              f"load average after: {os.getloadavg()[0]:.2f}")
        # On a busy machine the wall ratio measures the scheduler, not this code; the CPU
        # seconds still say how much work each side did.
        print(f"CPU time per image: {one_cpu / len(paths):.2f} s one process, "
              f"{many_cpu / len(paths):.2f} s with workers; estimate for {args.workers} idle cores "
              f"(single-threaded baseline, perfect balance): {one_cpu / (many_cpu / args.workers):.2f}x")


if __name__ == "__main__":
    main()
