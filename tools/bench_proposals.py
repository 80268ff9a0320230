"""Images/s of `detect proposals` with all cores against one process of OpenCV's fast mode.

Both sides read the same image files and run the same selective search (OpenCV, fast mode,
width 500, superpixel scale 2): the baseline is a plain loop in this process (OpenCV's
default threads); the contender is `proposals.compute_proposals`, the function
`detect proposals` calls, with one worker per core, writing a fresh cache. Its time includes
starting the workers and writing the cache. Target: >= 1.8x on 2 cores.

    PYTHONPATH=. python tools/bench_proposals.py [--images DIR] [--copies 2] [--workers N]

Without --images it writes scikit-image's photographs (and mirrored copies) to a temporary
folder. Run it on a quiet machine: other processes on the cores distort both numbers.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from PIL import Image

from backbone.io import load_image
from proposals import ProposalConfig, compute_proposals, selective_search
from tools.measure_selective_search import photographs

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".ppm"}


def write_photographs(folder: Path, copies: int) -> list[Path]:
    """scikit-image's photographs as JPEGs, each also mirrored (`copies` variants each)."""
    paths = []
    for name, image in photographs().items():
        for c in range(copies):
            path = folder / f"{name}_{c}.jpg"
            Image.fromarray(image[:, ::-1] if c % 2 else image).save(path, quality=92)
            paths.append(path)
    return paths


def baseline(paths: list[Path], config: ProposalConfig) -> float:
    """Seconds for one process to read every image and run OpenCV selective search on it."""
    ss = config.selective_search
    start = time.perf_counter()
    for path in paths:
        selective_search(load_image(path), backend=ss.backend, mode=ss.mode,
                         superpixel_scale=ss.superpixel_scale, resize_width=ss.resize_width,
                         min_size=ss.min_size, seed=ss.seed)
    return time.perf_counter() - start


def contender(paths: list[Path], config: ProposalConfig, workers: int, out: Path) -> float:
    """Seconds for compute_proposals (what `detect proposals` runs) over the same images."""
    start = time.perf_counter()
    summary = compute_proposals([(p.stem, p) for p in paths], config, out, workers=workers, progress=False)
    seconds = time.perf_counter() - start
    assert summary["done"] == len(paths), summary
    return seconds


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
        one = baseline(paths, config)
        print(f"one process (OpenCV fast mode):  {len(paths) / one:6.3f} images/s ({one:.1f} s)", flush=True)
        many = contender(paths, config, args.workers, tmp / "cache")
        print(f"detect proposals, all cores:     {len(paths) / many:6.3f} images/s ({many:.1f} s)")
        print(f"speed-up: {one / many:.2f}x (target >= 1.8x on 2 cores); "
              f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
