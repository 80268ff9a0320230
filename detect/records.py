"""A detection data set in memory, whatever file it came from, and the checks its readers share.

Shapes: N boxes of one image, K foreground classes. Boxes are `Tensor[N, 4]` float32
(x1, y1, x2, y2) in absolute pixels; labels are 1..K (0, background, is never stored).

The readers (`detect/data.py`: VOC / ILSVRC XML; `detect/data_coco.py`: COCO JSON) build these
records; `detect.data.load_dataset` picks the reader.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Container

import numpy as np
from torch import Tensor

from backbone.errors import InputError

# A box this many pixels outside its image is clipped (and counted); further out is an error.
CLIP_TOLERANCE = 1.0


@dataclass
class ImageRecord:
    """One annotated image."""
    image_id: int          # COCO image id; for VOC/ILSVRC the index in the split (0..)
    key: str               # unique string id: VOC/ILSVRC file id (e.g. "000005"), COCO file_name
    path: Path             # absolute path of the image file
    width: int
    height: int
    boxes: Tensor          # [N, 4] float32 xyxy absolute pixels
    labels: Tensor         # [N] int64 in 1..K
    difficult: Tensor      # [N] bool: VOC/ILSVRC difficult flag or COCO iscrowd
    areas: Tensor | None = None  # [N] float32 COCO "area" (segment area) if the file had it


@dataclass
class DetectionDataset:
    """Images with their boxes, plus the class list; the same for VOC, ILSVRC and COCO."""
    classes: list[str]     # K class names; label k <-> classes[k-1]
    images: list[ImageRecord]
    root: Path
    category_ids: list[int]  # COCO category id of label k at [k-1] (VOC: 1..K)
    fixups: list[str] = field(default_factory=list)  # lenient fix-ups applied while reading

    def index_of(self) -> dict[int, int]:
        """Map image_id -> position in `images`."""
        return {rec.image_id: i for i, rec in enumerate(self.images)}


def usable_images(dataset: DetectionDataset, cache: Container[str]) -> tuple[list[int], list[str]]:
    """Indices into dataset.images of the images with cached proposals (`rec.key in cache`, a
    proposals.ProposalCache), and the keys without."""
    kept, skipped = [], []
    for i, rec in enumerate(dataset.images):
        (kept if rec.key in cache else skipped).append(i)
    return kept, [dataset.images[i].key for i in skipped]


def skipped_line(keys: list[str]) -> str:
    """The one line naming images left out for want of cached proposals."""
    return f"skipped {len(keys)} images without cached proposals: {', '.join(keys[:10])}{' ...' if len(keys) > 10 else ''}"


def inside_name(name: str, source: str | Path, what: str = "file name") -> str:
    """`name` if it is a relative path that stays inside its folder, else InputError naming
    `source`: an annotation file must not point at files outside the data set."""
    posix = name.replace("\\", "/")
    if posix.startswith("/") or (len(posix) > 1 and posix[1] == ":") or ".." in posix.split("/"):
        raise InputError(source, f"{what} '{name}' points outside the data set's folder "
                                 "(absolute paths and '..' are refused)")
    return name


def check_boxes(boxes: np.ndarray, width: int, height: int, path: str | Path,
                fixups: list[str]) -> np.ndarray:
    """Validate boxes `[N, 4]` xyxy against a `width` x `height` image; clip a box at most
    CLIP_TOLERANCE px outside (recorded in `fixups`), raise InputError otherwise."""
    for i, (x1, y1, x2, y2) in enumerate(boxes.tolist()):
        if not np.isfinite([x1, y1, x2, y2]).all():
            raise InputError(path, f"box {i} has a non-finite coordinate")
        if x2 < x1 or y2 < y1:
            raise InputError(path, f"box {i} [{x1:g}, {y1:g}, {x2:g}, {y2:g}] has x2 < x1 or y2 < y1")
        outside = max(-x1, -y1, x2 - width, y2 - height)
        if outside > CLIP_TOLERANCE:
            raise InputError(path, f"box {i} [{x1:g}, {y1:g}, {x2:g}, {y2:g}] lies {outside:g} px "
                                   f"outside the {width}x{height} image")
        if outside > 0:
            fixups.append(f"{path}: box {i} [{x1:g}, {y1:g}, {x2:g}, {y2:g}] clipped to the "
                          f"{width}x{height} image ({outside:g} px outside)")
    if len(boxes):
        boxes = boxes.copy()
        boxes[:, 0::2] = boxes[:, 0::2].clip(0, width)
        boxes[:, 1::2] = boxes[:, 1::2].clip(0, height)
    return boxes


def raise_or_collect(error: InputError, errors: list[str] | None) -> None:
    """Raise `error`, or append its message to `errors` when the caller collects them."""
    if errors is None:
        raise error
    errors.append(str(error))
