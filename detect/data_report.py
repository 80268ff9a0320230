"""What `detect data` prints: a summary of a detection data set and every problem found in it.

Problems are things a person should look at but that do not stop evaluation: files skipped
because they could not be read (collected by `load_dataset(..., errors=[])`), missing image
files, an annotated size that differs from the image file, zero-area or repeated boxes,
classes without a single box, keys used twice. With `decode`, also every image file whose data
cannot be decoded past its header (a truncated or corrupt JPEG): the header check passes it.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from backbone.errors import InputError
from backbone.io import load_image, oriented_size
from backbone.pool import process_map
from detect.data import DetectionDataset

# Box size buckets on sqrt(area) in pixels, the COCO small / medium / large split.
SIZE_EDGES = (32, 96)


def summarize(dataset: DetectionDataset) -> dict:
    """Counts and distributions: images, boxes, boxes and images per class, box sizes."""
    labels = torch.cat([r.labels for r in dataset.images]) if dataset.images else torch.zeros(0, dtype=torch.long)
    boxes = torch.cat([r.boxes for r in dataset.images]) if dataset.images else torch.zeros(0, 4)
    flags = torch.cat([r.difficult for r in dataset.images]) if dataset.images else torch.zeros(0, dtype=torch.bool)
    side = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).clamp(min=0).sqrt().numpy()
    per_image = Counter(lab for r in dataset.images for lab in set(r.labels.tolist()))
    box_counts = torch.bincount(labels, minlength=len(dataset.classes) + 1).tolist()
    sizes = np.array([(r.width, r.height) for r in dataset.images]).reshape(-1, 2)
    quantiles = (0, 5, 25, 50, 75, 95, 100)
    return {
        "root": str(dataset.root), "images": len(dataset.images), "boxes": int(len(labels)),
        "difficult_or_crowd": int(flags.sum()), "classes": len(dataset.classes),
        "images_without_boxes": sum(1 for r in dataset.images if len(r.labels) == 0),
        "per_class": {name: {"boxes": box_counts[k], "images": per_image.get(k, 0)}
                      for k, name in enumerate(dataset.classes, 1)},
        "box_side_percentiles": (dict(zip(quantiles, np.percentile(side, quantiles).round(1).tolist()))
                                 if len(side) else {}),
        "box_size_buckets": {"small (<32 px)": int((side < SIZE_EDGES[0]).sum()),
                             "medium (32-96 px)": int(((side >= SIZE_EDGES[0]) & (side < SIZE_EDGES[1])).sum()),
                             "large (>=96 px)": int((side >= SIZE_EDGES[1]).sum())},
        "image_sizes": ({"min": sizes.min(0).tolist(), "max": sizes.max(0).tolist()} if len(sizes) else {}),
        "fixups": len(dataset.fixups),
    }


def find_problems(dataset: DetectionDataset, check_images: bool = True, decode: bool = False,
                  workers: int = 1, progress: bool = False) -> list[str]:
    """Every problem found, one line each; `check_images` opens each image's header, `decode`
    decodes every image file whose header passed (or was not checked) in `workers` processes,
    with a progress bar if `progress`."""
    problems = []
    for key, n in Counter(r.key for r in dataset.images).items():
        if n > 1:
            problems.append(f"image key '{key}' is used by {n} images")
    to_decode = []
    for rec in dataset.images:
        problems += _record_problems(rec, dataset.classes)
        file_problems = _image_file_problems(rec) if check_images else []
        problems += file_problems
        if decode and not file_problems and Path(rec.path).is_file():
            to_decode.append(str(rec.path))
    if decode:
        problems += decode_problems(to_decode, workers=workers, progress=progress)
    box_counts = Counter(lab for r in dataset.images for lab in r.labels.tolist())
    problems += [f"class '{name}' has no boxes" for k, name in enumerate(dataset.classes, 1)
                 if box_counts[k] == 0]
    return problems


def _record_problems(rec, classes: list[str]) -> list[str]:
    out = []
    b = rec.boxes
    zero = ((b[:, 2] <= b[:, 0]) | (b[:, 3] <= b[:, 1])).nonzero().flatten().tolist()
    out += [f"{rec.key}: box {i} {[round(v, 1) for v in b[i].tolist()]} has zero area" for i in zero]
    seen = set()
    for i, (box, lab) in enumerate(zip(b.tolist(), rec.labels.tolist())):
        if (tuple(box), lab) in seen:
            out.append(f"{rec.key}: box {i} repeats an earlier '{classes[lab - 1]}' box {box}")
        seen.add((tuple(box), lab))
    return out


def _image_file_problems(rec) -> list[str]:
    path = Path(rec.path)
    if not path.is_file():
        return [f"{rec.key}: image file {path} not found"]
    try:
        with Image.open(path) as img:
            size = oriented_size(img)  # boxes are in the frame viewers show (EXIF applied)
    except (OSError, ValueError) as e:
        return [f"{rec.key}: image file {path} cannot be read ({e})"]
    if size != (rec.width, rec.height):
        return [f"{rec.key}: annotated size {rec.width}x{rec.height} but {path} is {size[0]}x{size[1]}"]
    return []


def decode_problems(paths: list[str], workers: int = 1, progress: bool = False) -> list[str]:
    """`<path>: cannot decode: <reason>` for each image file of `paths` that `load_image` cannot
    decode in full, in the order of `paths`. Costs about the time of reading every image."""
    from backbone.progress import progress as progress_bar

    failed: dict[int, str] = {}
    bar = progress_bar(total=len(paths), desc="decode", unit="img", disable=not progress)
    for index, reason in process_map(_decode_one, list(enumerate(paths)), workers):
        if reason is not None:
            failed[index] = reason
        bar.update(1)
    bar.close()
    return [f"{paths[i]}: cannot decode: {failed[i]}" for i in sorted(failed)]


def _decode_one(item: tuple[int, str]) -> tuple[int, str | None]:
    """(index, None) if the image decodes, else (index, the reason)."""
    index, path = item
    try:
        load_image(path)
    except InputError as e:
        return index, e.problem.removeprefix("cannot read image: ")
    return index, None


def format_summary(summary: dict) -> str:
    """The summary as the text `detect data` prints."""
    lines = [f"data set {summary['root']}",
             f"  images {summary['images']} ({summary['images_without_boxes']} without boxes), "
             f"boxes {summary['boxes']} ({summary['difficult_or_crowd']} difficult/crowd), "
             f"classes {summary['classes']}, fix-ups {summary['fixups']}"]
    if summary["image_sizes"]:
        lines.append(f"  image sizes (w, h): min {tuple(summary['image_sizes']['min'])}, "
                     f"max {tuple(summary['image_sizes']['max'])}")
    if summary["box_side_percentiles"]:
        pct = ", ".join(f"p{q} {v:g}" for q, v in summary["box_side_percentiles"].items())
        lines.append(f"  box size sqrt(w*h) px: {pct}")
        lines.append("  " + ", ".join(f"{k} {v}" for k, v in summary["box_size_buckets"].items()))
    width = max([len(n) for n in summary["per_class"]] + [5])
    lines.append(f"  {'class':<{width}}  {'boxes':>7}  {'images':>7}")
    for name, c in summary["per_class"].items():
        lines.append(f"  {name:<{width}}  {c['boxes']:>7}  {c['images']:>7}")
    return "\n".join(lines)
