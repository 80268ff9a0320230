"""Detection data sets: Pascal VOC / ILSVRC DET XML and COCO instances JSON in one form.

The records (`ImageRecord`, `DetectionDataset`) and the box checks live in `detect/records.py`,
COCO reading and the COCO dict in `detect/data_coco.py`; `load_dataset` and `write_coco` here
are the entry points for every format.

Shapes: N boxes of one image, K foreground classes. Boxes are `Tensor[N, 4]` float32
(x1, y1, x2, y2) in absolute pixels; labels are 1..K (0, background, is never stored).

Coordinates. VOC and ILSVRC XML hold integer pixel coordinates. They are read as they stand
(x1 = xmin, y1 = ymin, x2 = xmax, y2 = ymax) and written back the same way, so that the ILSVRC
metric's inclusive "+1" sizes reproduce the official devkit on these files. COCO's
[x, y, w, h] becomes [x, y, x + w, y + h].

Leniency. A box at most `CLIP_TOLERANCE` pixels outside its image is clipped to the image and
the fix-up is recorded in `DetectionDataset.fixups`. A box further out, a box with x2 < x1 or
y2 < y1, a malformed file or an unknown class name raises `InputError` naming the file; with
`load_dataset(..., errors=[])` such files (or COCO annotations) are skipped and the messages
collected instead, which is how `detect data` lists every problem at once.
"""
from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from backbone.errors import InputError
from backbone.io import atomic_write_bytes, atomic_write_json, oriented_size
from detect.data_coco import coco_dict, find_coco_json, load_coco
# The data set types are imported from here too: detect.data is where a user looks for them.
from detect.records import DetectionDataset, ImageRecord, check_boxes, inside_name, raise_or_collect

# Image file extensions tried, in this order, when an XML names its image without one.
IMAGE_EXTENSIONS = (".jpg", ".JPEG", ".jpeg", ".JPG", ".png", ".PNG")


def load_dataset(spec: str | Path, split: str | None = None,
                 class_list: str | Path | None = None,
                 errors: list[str] | None = None) -> DetectionDataset:
    """Read a detection data set.

    `spec` is a VOC/ILSVRC root folder (it has `Annotations/`), a COCO instances `.json`, or a
    folder holding one COCO `.json` (itself or in `annotations/`; with `split`, the one whose
    name ends in `_<split>` or is `<split>`). `class_list` applies to VOC/ILSVRC only.
    With `errors` a list, bad files are skipped and their messages appended to it.
    """
    path = Path(spec)
    if not path.exists():
        raise InputError(path, "data set not found")
    if path.is_file():
        if path.suffix.lower() != ".json":
            raise InputError(path, "expected a VOC/ILSVRC folder or a COCO instances .json file")
        return load_coco(path, errors)
    if (path / "Annotations").is_dir():
        return _load_voc(path, split, class_list, errors)
    return load_coco(find_coco_json(path, split), errors)


def read_class_list(path: str | Path) -> tuple[list[str], list[str]]:
    """Read a class list file: one class per line, `ID [INDEX] [NAME ...]`.

    ID is the name used in the XML files (a VOC name, or an ILSVRC synset id such as
    n02672831); NAME (default: ID) is the display name; a numeric INDEX after the ID, as in
    ILSVRC's map_det.txt, is skipped. Blank lines and lines starting with '#' are ignored.
    Returns (ids, names) in file order: label k is line k.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "class list file not found")
    ids, names = [], []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        tokens = line.split()
        if not tokens or tokens[0].startswith("#"):
            continue
        rest = tokens[2:] if len(tokens) >= 3 and tokens[1].isdigit() else tokens[1:]
        if tokens[0] in ids:
            raise InputError(path, f"line {n}: class '{tokens[0]}' is listed twice")
        ids.append(tokens[0])
        names.append(" ".join(rest) if rest else tokens[0])
    if not ids:
        raise InputError(path, "class list is empty")
    return ids, names


# ----------------------------------------------------------------------------- VOC / ILSVRC


def _voc_folders(root: Path, split: str | None) -> tuple[Path, Path]:
    """(annotation folder, image folder): VOC's Annotations/ + JPEGImages/, or ILSVRC's
    Annotations/DET/<split>/ + Data/DET/<split>/."""
    ann, img = root / "Annotations", root / "JPEGImages"
    if split and (ann / "DET" / split).is_dir():
        ann = ann / "DET" / split
        img = root / "Data" / "DET" / split
    elif not img.is_dir() and (root / "Data").is_dir():
        img = root / "Data"
    return ann, img


def _voc_keys(root: Path, ann_dir: Path, split: str | None) -> list[str]:
    """Keys of a split: the first word of each line of ImageSets/{Main,DET}/<split>.txt;
    without a split, every .xml under the annotation folder (sorted)."""
    if split is None:
        keys = sorted(p.relative_to(ann_dir).with_suffix("").as_posix()
                      for p in ann_dir.rglob("*.xml"))
        if not keys:
            raise InputError(ann_dir, "no .xml annotation files found")
        return keys
    for sub in ("Main", "DET"):
        listing = root / "ImageSets" / sub / f"{split}.txt"
        if listing.is_file():
            keys = [inside_name(ln.split()[0], listing, "image id")
                    for ln in listing.read_text(encoding="utf-8").splitlines() if ln.strip()]
            if len(set(keys)) != len(keys):
                raise InputError(listing, "split list names an image twice")
            return keys
    raise InputError(root / "ImageSets" / "Main" / f"{split}.txt", f"split list for '{split}' not found")


def _load_voc(root: Path, split: str | None, class_list: str | Path | None,
              errors: list[str] | None) -> DetectionDataset:
    ann_dir, img_dir = _voc_folders(root, split)
    parsed = []
    for key in _voc_keys(root, ann_dir, split):
        try:
            parsed.append((key, _parse_voc_xml(ann_dir / f"{key}.xml")))
        except InputError as e:
            raise_or_collect(e, errors)
    if class_list is None and (root / "classes.txt").is_file():
        class_list = root / "classes.txt"
    if class_list is not None:
        ids, names = read_class_list(class_list)
    else:
        ids = names = sorted({obj[0] for _, ann in parsed for obj in ann["objects"]})
    label_of = {cid: k + 1 for k, cid in enumerate(ids)}
    images, fixups = [], []
    for key, ann in parsed:
        try:
            images.append(_voc_record(len(images), key, ann, label_of, img_dir, class_list, fixups))
        except InputError as e:
            raise_or_collect(e, errors)
    return DetectionDataset(classes=list(names), images=images, root=root.resolve(),
                            category_ids=list(range(1, len(names) + 1)), fixups=fixups)


def _parse_voc_xml(path: Path) -> dict:
    """Parse one VOC/ILSVRC annotation into {filename, width, height, objects, path};
    objects are (name, [xmin, ymin, xmax, ymax], difficult)."""
    if not path.is_file():
        raise InputError(path, "annotation file not found")
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as e:
        raise InputError(path, f"malformed XML: {e}") from None
    if root.tag != "annotation":
        raise InputError(path, f"root element is <{root.tag}>, expected <annotation>")
    size = root.find("size")
    width = _xml_number(path, size, "width", 0) if size is not None else 0
    height = _xml_number(path, size, "height", 0) if size is not None else 0
    objects = []
    for n, obj in enumerate(root.findall("object")):
        name = (obj.findtext("name") or "").strip()
        box = obj.find("bndbox")
        if not name or box is None:
            raise InputError(path, f"object {n} has no <name> or no <bndbox>")
        coords = [_xml_number(path, box, tag) for tag in ("xmin", "ymin", "xmax", "ymax")]
        difficult = _xml_number(path, obj, "difficult", 0) != 0
        objects.append((name, coords, difficult))
    filename = inside_name((root.findtext("filename") or "").strip(), path, "<filename>")
    return {"filename": filename, "width": int(width),
            "height": int(height), "objects": objects, "path": path}


def _xml_number(path: Path, parent: ET.Element, tag: str, default: float | None = None) -> float:
    text = parent.findtext(tag)
    if text is None or not text.strip():
        if default is None:
            raise InputError(path, f"<{parent.tag}> has no <{tag}>")
        return default
    try:
        value = float(text)
    except ValueError:
        raise InputError(path, f"<{tag}> is not a number: '{text.strip()}'") from None
    if not np.isfinite(value):
        raise InputError(path, f"<{tag}> is not finite: '{text.strip()}'")
    return value


def _voc_image_path(img_dir: Path, key: str, filename: str) -> Path:
    """The XML's <filename> beside the key's subfolder if it has an extension (VOC), else the
    key with the first extension that exists (ILSVRC names images without one)."""
    if Path(filename).suffix:
        return (img_dir / key).parent / filename
    for ext in IMAGE_EXTENSIONS:
        candidate = img_dir / f"{key}{ext}"
        if candidate.is_file():
            return candidate
    return img_dir / f"{key}.jpg"


def _voc_record(image_id: int, key: str, ann: dict, label_of: dict[str, int], img_dir: Path,
                class_list: str | Path | None, fixups: list[str]) -> ImageRecord:
    xml = ann["path"]
    image = _voc_image_path(img_dir, key, ann["filename"]).resolve()
    width, height = ann["width"], ann["height"]
    if width <= 0 or height <= 0:
        width, height = _image_size(image, xml)
    unknown = [o[0] for o in ann["objects"] if o[0] not in label_of]
    if unknown:
        where = f"the class list {class_list}" if class_list else "the class list"
        raise InputError(xml, f"unknown class name '{unknown[0]}' (not in {where})")
    boxes = np.array([o[1] for o in ann["objects"]], dtype=np.float64).reshape(-1, 4)
    boxes = check_boxes(boxes, width, height, xml, fixups)
    return ImageRecord(
        image_id=image_id, key=key, path=image, width=width, height=height,
        boxes=torch.as_tensor(boxes, dtype=torch.float32),
        labels=torch.tensor([label_of[o[0]] for o in ann["objects"]], dtype=torch.int64),
        difficult=torch.tensor([o[2] for o in ann["objects"]], dtype=torch.bool))


def _image_size(image: Path, xml: Path) -> tuple[int, int]:
    """Width and height from the image header, for an annotation without <size>."""
    try:
        with Image.open(image) as img:
            return oriented_size(img)
    except (OSError, ValueError):
        raise InputError(xml, f"no <size> in the annotation and its image {image} cannot be read") from None


# ----------------------------------------------------------------------------- writers


def write_voc(dataset_root: str | Path, key: str, image_size: tuple[int, int], boxes: Tensor,
              labels: Tensor, classes: list[str], difficult: Tensor | None = None,
              filename: str | None = None) -> Path:
    """Write `<dataset_root>/Annotations/<key>.xml` atomically and return its path.

    boxes (Tensor[N, 4]) xyxy pixels are rounded to integers (VOC stores whole pixels);
    labels (Tensor[N]) in 1..K name `classes[label - 1]`; `filename` defaults to `<key>.jpg`.
    """
    width, height = (int(v) for v in image_size)
    labels = torch.as_tensor(labels).reshape(-1).tolist()
    boxes = torch.as_tensor(boxes, dtype=torch.float64).reshape(-1, 4).round().long().tolist()
    flags = [False] * len(labels) if difficult is None else torch.as_tensor(difficult).reshape(-1).tolist()
    if not (len(boxes) == len(labels) == len(flags)):
        raise ValueError(f"boxes ({len(boxes)}), labels ({len(labels)}) and difficult ({len(flags)}) differ in length")
    if any(not 1 <= lab <= len(classes) for lab in labels):
        raise ValueError(f"labels must be in 1..{len(classes)}, got {labels}")
    root = ET.Element("annotation")
    ET.SubElement(root, "folder").text = Path(dataset_root).name
    ET.SubElement(root, "filename").text = filename or f"{Path(key).name}.jpg"
    size = ET.SubElement(root, "size")
    for tag, value in (("width", width), ("height", height), ("depth", 3)):
        ET.SubElement(size, tag).text = str(value)
    for box, lab, diff in zip(boxes, labels, flags):
        obj = ET.SubElement(root, "object")
        ET.SubElement(obj, "name").text = classes[lab - 1]
        ET.SubElement(obj, "pose").text = "Unspecified"
        ET.SubElement(obj, "truncated").text = "0"
        ET.SubElement(obj, "difficult").text = str(int(bool(diff)))
        bndbox = ET.SubElement(obj, "bndbox")
        for tag, value in zip(("xmin", "ymin", "xmax", "ymax"), box):
            ET.SubElement(bndbox, tag).text = str(value)
    ET.indent(root)
    out = Path(dataset_root) / "Annotations" / f"{key}.xml"
    atomic_write_bytes(out, ET.tostring(root, encoding="utf-8") + b"\n")
    return out


def write_coco(path: str | Path, dataset: DetectionDataset) -> None:
    """Write the data set as a COCO instances JSON file (atomically); see `coco_dict`."""
    path = Path(path)
    atomic_write_json(path, coco_dict(dataset, path.parent), indent=None)
