"""COCO instances JSON: reading into `DetectionDataset`, and the dict that `write_coco` writes.

COCO boxes are [x, y, w, h] in pixels; they become xyxy [x, y, x + w, y + h]. `iscrowd` is kept
as the record's `difficult` flag and `area` (the segment area) as `areas`, so that writing the
set back, or evaluating it with pycocotools, gives the same small/medium/large split.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from backbone.errors import InputError
from backbone.io import read_json
from detect.records import DetectionDataset, ImageRecord, check_boxes, inside_name, raise_or_collect


def find_coco_json(folder: Path, split: str | None) -> Path:
    found = sorted(folder.glob("*.json")) + sorted((folder / "annotations").glob("*.json"))
    if split is not None:
        found = [p for p in found if p.stem == split or p.stem.endswith(f"_{split}")]
    if len(found) != 1:
        what = f"{len(found)} COCO .json files ({', '.join(p.name for p in found)})" if found \
            else "no Annotations/ folder and no COCO .json file"
        raise InputError(folder, f"found {what}; expected a VOC/ILSVRC folder with Annotations/ or "
                                 "exactly one COCO instances .json (or pass the file itself)")
    return found[0]


def coco_image_path(json_dir: Path, file_name: str) -> Path:
    """Where a COCO image lives: the first existing of <json folder>/F, <json folder>/images/F,
    <json folder>/../images/F; if none exists, the first (reported missing by `detect data`)."""
    base = json_dir.resolve()
    candidates = [base / file_name, base / "images" / file_name, base.parent / "images" / file_name]
    return next((p for p in candidates if p.is_file()), candidates[0])


def load_coco(path: Path, errors: list[str] | None) -> DetectionDataset:
    doc = read_json(path)
    if not isinstance(doc, dict) or not all(isinstance(doc.get(k), list)
                                            for k in ("images", "annotations", "categories")):
        raise InputError(path, "not a COCO instances file (needs lists 'images', 'annotations', 'categories')")
    cats = sorted(_coco_categories(path, doc["categories"]))
    label_of = {cid: k + 1 for k, (cid, _) in enumerate(cats)}
    images = _coco_images(path, doc["images"])
    per_image: dict[int, list] = {img_id: [] for img_id in images}
    fixups: list[str] = []
    for n, ann in enumerate(doc["annotations"]):
        try:
            img_id, row = _coco_annotation(path, n, ann, images, label_of, fixups)
            per_image[img_id].append(row)
        except InputError as e:
            raise_or_collect(e, errors)
    records = []
    for img_id, (file_name, width, height) in images.items():
        rows = per_image[img_id]
        records.append(ImageRecord(
            image_id=img_id, key=file_name, path=coco_image_path(path.parent, file_name),
            width=width, height=height,
            boxes=torch.tensor([r[0] for r in rows], dtype=torch.float32).reshape(-1, 4),
            labels=torch.tensor([r[1] for r in rows], dtype=torch.int64),
            difficult=torch.tensor([r[2] for r in rows], dtype=torch.bool),
            areas=torch.tensor([r[3] for r in rows], dtype=torch.float32)))
    return DetectionDataset(classes=[name for _, name in cats], images=records,
                            root=path.resolve().parent, category_ids=[cid for cid, _ in cats],
                            fixups=fixups)


def _coco_categories(path: Path, categories: list) -> list[tuple[int, str]]:
    out: dict[int, str] = {}
    for n, cat in enumerate(categories):
        if not isinstance(cat, dict) or not _is_int(cat.get("id")) or not isinstance(cat.get("name"), str):
            raise InputError(path, f"category {n} needs an integer 'id' and a string 'name'")
        if cat["id"] in out:
            raise InputError(path, f"category id {cat['id']} appears twice")
        out[cat["id"]] = cat["name"]
    if not out:
        raise InputError(path, "no categories")
    return list(out.items())


def _coco_images(path: Path, images: list) -> dict[int, tuple[str, int, int]]:
    out: dict[int, tuple[str, int, int]] = {}
    for n, img in enumerate(images):
        ok = isinstance(img, dict) and _is_int(img.get("id")) and isinstance(img.get("file_name"), str)
        if not ok or not _is_int(img.get("width")) or not _is_int(img.get("height")) \
                or img["width"] <= 0 or img["height"] <= 0:
            raise InputError(path, f"image {n} needs an integer 'id', a 'file_name' and positive "
                                   "integer 'width' and 'height'")
        if img["id"] in out:
            raise InputError(path, f"image id {img['id']} appears twice")
        inside_name(img["file_name"], path, f"image {n}: file_name")
        out[img["id"]] = (img["file_name"], img["width"], img["height"])
    return out


def _coco_annotation(path: Path, n: int, ann: dict, images: dict, label_of: dict[int, int],
                     fixups: list[str]) -> tuple[int, tuple]:
    """Validate annotation `n`; return (image id, (xyxy box, label, iscrowd, area))."""
    where = f"annotation {n} (id {ann.get('id')})" if isinstance(ann, dict) else f"annotation {n}"
    if not isinstance(ann, dict) or ann.get("image_id") not in images:
        raise InputError(path, f"{where}: image_id is missing or names no image in the file")
    if ann.get("category_id") not in label_of:
        raise InputError(path, f"{where}: unknown category_id {ann.get('category_id')!r}")
    bbox = ann.get("bbox")
    if not isinstance(bbox, list) or len(bbox) != 4 or not all(_is_number(v) for v in bbox):
        raise InputError(path, f"{where}: 'bbox' must be [x, y, w, h] numbers")
    x, y, w, h = bbox
    _, width, height = images[ann["image_id"]]
    box = check_boxes(np.array([[x, y, x + w, y + h]], dtype=np.float64), width, height,
                      f"{path}: {where}", fixups)[0]
    area = ann.get("area", w * h)
    area = float(area) if _is_number(area) else float(w * h)
    return ann["image_id"], (box.tolist(), label_of[ann["category_id"]], bool(ann.get("iscrowd", 0)), area)


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def coco_dict(dataset: DetectionDataset, json_dir: Path | None = None) -> dict:
    """The data set as a COCO instances dict. `file_name` is the image path relative to
    `json_dir` (InputError if the image lies outside it; the key without `json_dir`).
    Annotation ids count from 1 (pycocotools treats id 0 as "unmatched")."""
    images, annotations = [], []
    for rec in dataset.images:
        name = rec.key if json_dir is None else _coco_file_name(rec, json_dir)
        images.append({"id": rec.image_id, "file_name": name, "width": rec.width, "height": rec.height})
        xywh = rec.boxes.to(torch.float64, copy=True)  # float64: x + w reads back as the same float32 x2
        xywh[:, 2:] -= xywh[:, :2]
        areas = rec.areas if rec.areas is not None else xywh[:, 2] * xywh[:, 3]
        for box, lab, crowd, area in zip(xywh.tolist(), rec.labels.tolist(),
                                         rec.difficult.tolist(), areas.tolist()):
            annotations.append({"id": len(annotations) + 1, "image_id": rec.image_id,
                                "category_id": dataset.category_ids[lab - 1], "bbox": box,
                                "area": area, "iscrowd": int(crowd)})
    categories = [{"id": cid, "name": name} for cid, name in zip(dataset.category_ids, dataset.classes)]
    return {"images": images, "annotations": annotations, "categories": categories}


def _coco_file_name(rec: ImageRecord, json_dir: Path) -> str:
    """The key if it already leads to the image from `json_dir` (a COCO round trip keeps its
    names), else the image path relative to `json_dir`; an image outside `json_dir` is named
    by its key (names never leave the JSON's folder)."""
    json_dir = json_dir.resolve()
    path = Path(rec.path).resolve()
    if coco_image_path(json_dir, rec.key) == path:
        return rec.key
    if not path.is_relative_to(json_dir):
        # Readers refuse names that leave the JSON's folder, so an image elsewhere is named by
        # its key: copy the images beside the file (or into images/) to read it back.
        return rec.key
    return os.path.relpath(path, json_dir)
