"""Detection results as COCO results JSON, with the class name and image file name alongside.

Shapes: D detections of one image. In memory, `Detections` maps an image id to
{"boxes": Tensor[D, 4] float32 xyxy pixels, "scores": Tensor[D] float32, "labels": Tensor[D]
int64 in 1..K}. On disk, one JSON list entry per detection:

    {"image_id": 5, "category_id": 3, "bbox": [x, y, w, h], "score": 0.91,
     "category_name": "dog", "file_name": "000005"}

which pycocotools' `loadRes` reads as it is. Numbers are written at full float32 precision,
so reading a file back gives the same tensors and the same mAP.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor

from backbone.errors import InputError
from backbone.io import atomic_write_json, read_json
from detect.records import DetectionDataset

Detections = dict[int, dict[str, Tensor]]


def empty_detections() -> dict[str, Tensor]:
    """The detections of an image with none: boxes [0, 4], scores [0], labels [0]."""
    return {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.int64)}


def coco_entries(image_id: int, det: dict[str, Tensor], classes: Sequence[str], file_name: str,
                 category_ids: Sequence[int] | None = None) -> list[dict]:
    """COCO results entries of one image's detections, in their order.

    det: {"boxes": Tensor[D, 4] xyxy, "scores": Tensor[D], "labels": Tensor[D] in 1..K};
    category_ids[k-1] is label k's COCO id (default: k). ValueError for a label outside 1..K.
    """
    category_ids = list(category_ids) if category_ids is not None else list(range(1, len(classes) + 1))
    labels = det["labels"].reshape(-1).tolist()
    if any(not 1 <= lab <= len(classes) for lab in labels):
        raise ValueError(f"image {image_id}: labels must be in 1..{len(classes)}")
    # w = x2 - x1 in float64 is exact for float32 corners, so x + w reads back as x2.
    xywh = det["boxes"].detach().float().cpu().reshape(-1, 4).double()
    xywh[:, 2:] -= xywh[:, :2]
    scores = det["scores"].detach().float().cpu().reshape(-1).tolist()
    return [{"image_id": image_id, "category_id": category_ids[lab - 1], "bbox": box, "score": score,
             "category_name": classes[lab - 1], "file_name": file_name}
            for box, score, lab in zip(xywh.tolist(), scores, labels)]


def detections_to_coco(detections: Detections, dataset: DetectionDataset) -> list[dict]:
    """COCO results entries of a data set's detections (in the order of `detections`)."""
    names = {rec.image_id: rec.key for rec in dataset.images}
    entries = []
    for image_id, det in detections.items():
        if image_id not in names:
            raise ValueError(f"detections for image id {image_id}, which is not in the data set")
        entries += coco_entries(image_id, det, dataset.classes, names[image_id], dataset.category_ids)
    return entries


def write_detections(path: str | Path, detections: Detections, dataset: DetectionDataset) -> None:
    """Write `detections` as a COCO results JSON list (atomically)."""
    atomic_write_json(path, detections_to_coco(detections, dataset), indent=None)


def read_detections(path: str | Path, dataset: DetectionDataset) -> Detections:
    """Read a COCO results JSON file into `Detections`, one entry per image of the data set.

    Each entry needs an `image_id` of the data set, a `category_id` of it (or, without one, a
    `category_name`), a `bbox` [x, y, w, h] with w, h >= 0 and a finite `score`. Anything else
    raises InputError naming the file and the entry.
    """
    path = Path(path)
    entries = read_json(path)
    if not isinstance(entries, list):
        raise InputError(path, "a detections file is a JSON list of COCO results entries")
    position = dataset.index_of()
    label_of_cat = {cid: k + 1 for k, cid in enumerate(dataset.category_ids)}
    label_of_name = {name: k + 1 for k, name in enumerate(dataset.classes)}
    rows: dict[int, list] = {image_id: [] for image_id in position}
    for n, entry in enumerate(entries):
        image_id, label, box, score = _parse_entry(path, n, entry, dataset, position,
                                                   label_of_cat, label_of_name)
        rows[image_id].append((box, score, label))
    return {image_id: _to_tensors(r) for image_id, r in rows.items()}


def _parse_entry(path: Path, n: int, entry: object, dataset: DetectionDataset,
                 position: dict[int, int], label_of_cat: dict[int, int],
                 label_of_name: dict[str, int]) -> tuple[int, int, list[float], float]:
    """Validate entry `n`; return (image id, label 1..K, xyxy box, score)."""
    if not isinstance(entry, dict):
        raise InputError(path, f"entry {n} is not an object")
    image_id = entry.get("image_id")
    if not isinstance(image_id, int) or image_id not in position:
        raise InputError(path, f"entry {n}: image_id {image_id!r} is not an image of the data set "
                               f"{dataset.root} (detections of another data set?)")
    rec = dataset.images[position[image_id]]
    file_name = entry.get("file_name")
    if file_name is not None and file_name not in (rec.key, Path(rec.path).name):
        raise InputError(path, f"entry {n}: image_id {image_id} is '{rec.key}' in the data set "
                               f"but '{file_name}' in the detections (detections of another data set?)")
    label = _entry_label(path, n, entry, label_of_cat, label_of_name)
    bbox, score = entry.get("bbox"), entry.get("score")
    if not isinstance(bbox, list) or len(bbox) != 4 or not all(_finite(v) for v in bbox) \
            or bbox[2] < 0 or bbox[3] < 0:
        raise InputError(path, f"entry {n}: 'bbox' must be [x, y, w, h] finite numbers with w, h >= 0")
    if not _finite(score):
        raise InputError(path, f"entry {n}: 'score' must be a finite number")
    x, y, w, h = bbox
    return image_id, label, [x, y, x + w, y + h], float(score)


def _entry_label(path: Path, n: int, entry: dict, label_of_cat: dict[int, int],
                 label_of_name: dict[str, int]) -> int:
    cat, name = entry.get("category_id"), entry.get("category_name")
    if cat is None and name is None:
        raise InputError(path, f"entry {n} has neither 'category_id' nor 'category_name'")
    if cat is not None and cat not in label_of_cat:
        raise InputError(path, f"entry {n}: category_id {cat!r} is not a class of the data set")
    if name is not None and name not in label_of_name:
        raise InputError(path, f"entry {n}: unknown class name '{name}'")
    if cat is not None and name is not None and label_of_cat[cat] != label_of_name[name]:
        raise InputError(path, f"entry {n}: category_id {cat} is not class '{name}' in the data set")
    return label_of_cat[cat] if cat is not None else label_of_name[name]


def _finite(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _to_tensors(rows: list) -> dict[str, Tensor]:
    if not rows:
        return empty_detections()
    boxes, scores, labels = zip(*rows)
    # xyxy from xywh in float64, then float32: the float32 boxes that were written come back.
    return {"boxes": torch.tensor(boxes, dtype=torch.float64).to(torch.float32),
            "scores": torch.tensor(scores, dtype=torch.float32),
            "labels": torch.tensor(labels, dtype=torch.int64)}
