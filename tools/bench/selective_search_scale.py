"""Boxes per image and seconds per image of selective search at superpixel scale 1 and 2.

Runs on scikit-image's bundled photographs (no download), resized to width 500 as R-CNN did,
one thread, and prints a markdown table (the one in docs/proposals.md). The GoogLeNet paper
says doubling the superpixel size halves the boxes; the column "2x / 1x" checks it.

    python tools/bench/selective_search_scale.py [--setting opencv:fast ...] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import time

import cv2
import numpy as np
import torch

from detect.scenes import load_photos
from proposals.selective_search import selective_search

PHOTOGRAPHS = ("astronaut", "camera", "chelsea", "coffee", "coins", "hubble_deep_field",
               "immunohistochemistry", "moon", "rocket", "retina")
DEFAULT_SETTINGS = ("opencv:single", "opencv:fast", "opencv:quality", "selectivesearch:single")


def measure(images: dict[str, np.ndarray], backend: str, mode: str, scale: float,
            resize_width: int) -> dict:
    """Mean boxes and seconds per image of one selective-search setting."""
    counts, seconds = [], []
    for image in images.values():
        start = time.perf_counter()
        boxes = selective_search(image, backend=backend, mode=mode, superpixel_scale=scale,
                                 resize_width=resize_width)
        seconds.append(time.perf_counter() - start)
        counts.append(len(boxes))
    return {"boxes_per_image": float(np.mean(counts)), "seconds_per_image": float(np.mean(seconds)),
            "boxes": counts}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--setting", action="append", default=None,
                        help="backend:mode, repeatable (default: all four)")
    parser.add_argument("--resize-width", type=int, default=500)
    parser.add_argument("--json", default=None, help="also write the numbers here")
    args = parser.parse_args()
    cv2.setNumThreads(1)
    torch.set_num_threads(1)
    images = dict(zip(PHOTOGRAPHS, load_photos(PHOTOGRAPHS)))
    rows = []
    print(f"{len(images)} photographs ({', '.join(images)}), width {args.resize_width}, one thread\n")
    print("| backend | mode | boxes/img 1x | boxes/img 2x | 2x / 1x (mean of per-image) | s/img 1x | s/img 2x |")
    print("|---|---|---|---|---|---|---|")
    for setting in args.setting or DEFAULT_SETTINGS:
        backend, mode = setting.split(":")
        one = measure(images, backend, mode, 1.0, args.resize_width)
        two = measure(images, backend, mode, 2.0, args.resize_width)
        ratios = [b / a for a, b in zip(one["boxes"], two["boxes"]) if a > 0]
        row = {"backend": backend, "mode": mode, "scale1": one, "scale2": two,
               "ratio": two["boxes_per_image"] / one["boxes_per_image"],
               "ratio_per_image": ratios}
        rows.append(row)
        print(f"| {backend} | {mode} | {one['boxes_per_image']:.0f} | {two['boxes_per_image']:.0f} | "
              f"{row['ratio']:.2f} ({np.mean(ratios):.2f}; {min(ratios):.2f}-{max(ratios):.2f}) | "
              f"{one['seconds_per_image']:.2f} | {two['seconds_per_image']:.2f} |", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"images": list(images), "resize_width": args.resize_width, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
