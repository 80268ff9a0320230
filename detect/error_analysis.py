"""Where a detector's mAP goes (`detect eval --map --errors`), and how well region classifiers
name the objects when handed their exact boxes (`detect eval --box-accuracy`).

Shapes: N ground-truth boxes of an image (labels 1..K, 0 is background), D detections of an
image, K foreground classes. Detections are `detect.results.Detections`.

Errors of a detections file, at IoU >= `iou` (0.5):
- **Naming at the objects.** Every ground-truth box (difficult ones left out) is named by the
  highest-scoring detection of any class that overlaps it, or "none" when no detection does:
  a confusion table [K, K+1] (true class x named class, last column none). Per class: the
  objects, how many some detection found, how many were named correctly, and what the others
  were named instead. Naming is judged whatever the scores of other objects, so it separates
  "not found" from "found but misnamed", which mAP mixes.
- **The top detections of each class.** The class's N best-scoring detections over the whole
  split, N = its number of objects (where a perfect detector's list would stop), each put in
  one bin: tp (IoU >= iou with an object of the class not yet matched), dup (with one already
  matched), loc (IoU 0.1..iou with an object of the class), conf (IoU >= iou with an object of
  another class), bg (none of these).
- Naming accuracy by object size (longer side of the box, pixels).

Box accuracy: every ground-truth box is warped as the detector warps a region and classified
by a classifier run or a detector member, with the box question taken away: what is left is
naming. Classes are matched by name (`class_key`: a classifier's `0_T-shirt_top` is the data's
`tshirt_top`); a member's background output is left out of the arg-max.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor
from torchvision.ops import box_iou

from detect.data import DetectionDataset, ImageRecord
from detect.results import Detections, empty_detections

SIZE_BINS = ((0, 40), (40, 64), (64, 100), (100, None))  # longer side of a box, pixels
KINDS = ("tp", "dup", "loc", "conf", "bg")


def naming_table(dataset: DetectionDataset, detections: Detections,
                 iou: float = 0.5) -> tuple[Tensor, dict[str, list[int]]]:
    """Confusion Tensor[K, K+1] int64 (true label - 1 x named label - 1, last column: none) and
    {size bin: [named correctly, objects]}."""
    k = len(dataset.classes)
    table = torch.zeros((k, k + 1), dtype=torch.int64)
    by_size = {_bin_name(b): [0, 0] for b in SIZE_BINS}
    for rec in dataset.images:
        keep = ~rec.difficult
        boxes, labels = rec.boxes[keep], rec.labels[keep].long()
        if len(boxes) == 0:
            continue
        named = _named(boxes, detections.get(rec.image_id, empty_detections()), iou, none=k + 1) - 1
        table.index_put_((labels - 1, named), torch.ones_like(labels), accumulate=True)
        sides = torch.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
        for lo, hi in SIZE_BINS:
            inside = (sides >= lo) & (sides < (hi if hi is not None else float("inf")))
            counts = by_size[_bin_name((lo, hi))]
            counts[0] += int((named[inside] == labels[inside] - 1).sum())
            counts[1] += int(inside.sum())
    return table, by_size


def _named(boxes: Tensor, det: dict[str, Tensor], iou: float, none: int) -> Tensor:
    """Tensor[N] label of the best-scoring detection overlapping each box, `none` where none does."""
    named = torch.full((len(boxes),), none, dtype=torch.int64)
    if len(det["boxes"]) == 0:
        return named
    overlap = box_iou(boxes, det["boxes"].float()) >= iou
    best = torch.where(overlap, det["scores"][None, :].float(), -1.0).argmax(1)
    return torch.where(overlap.any(1), det["labels"].long()[best], named)


def _bin_name(size_bin: tuple[int, int | None]) -> str:
    lo, hi = size_bin
    return f"{lo}-{hi}" if hi is not None else f"{lo}-"


def top_detection_kinds(dataset: DetectionDataset, detections: Detections,
                        iou: float = 0.5) -> dict[str, dict[str, int]]:
    """{class name: {kind: count}} over each class's N best detections, N = its objects."""
    records = dataset.images
    dets = [detections.get(rec.image_id, empty_detections()) for rec in records]
    image = torch.cat([torch.full((len(d["scores"]),), i, dtype=torch.int64) for i, d in enumerate(dets)]
                      + [torch.zeros(0, dtype=torch.int64)])
    index = torch.cat([torch.arange(len(d["scores"])) for d in dets] + [torch.zeros(0, dtype=torch.int64)])
    labels = torch.cat([d["labels"].long() for d in dets] + [torch.zeros(0, dtype=torch.int64)])
    scores = torch.cat([d["scores"].float() for d in dets] + [torch.zeros(0)])
    objects = torch.bincount(torch.cat([rec.labels[~rec.difficult].long() for rec in records]
                                       + [torch.zeros(0, dtype=torch.int64)]), minlength=len(dataset.classes) + 1)
    out = {}
    for c, name in enumerate(dataset.classes, start=1):
        n = int(objects[c])
        mine = torch.nonzero(labels == c).flatten()
        ranked = mine[torch.sort(scores[mine], descending=True, stable=True).indices[:n]]
        kinds = dict.fromkeys(KINDS, 0)
        matched: set[tuple[int, int]] = set()
        for i, j in zip(image[ranked].tolist(), index[ranked].tolist()):
            kind, hit = _kind(records[i], dets[i]["boxes"][j:j + 1].float(), c, iou)
            if hit is not None:
                kind = "dup" if (i, hit) in matched else "tp"
                matched.add((i, hit))
            kinds[kind] += 1
        out[name] = kinds
    return out


def _kind(rec: ImageRecord, box: Tensor, c: int, iou: float) -> tuple[str, int | None]:
    """The bin of one detection `box` (Tensor[1, 4]) of class c, and the index of the object of
    class c it hits (None unless a tp or dup)."""
    overlaps = box_iou(box, rec.boxes)[0] if len(rec.boxes) else torch.zeros(0)
    same = (rec.labels == c) & ~rec.difficult
    best_same = float(overlaps[same].max()) if same.any() else 0.0
    if best_same >= iou:
        return "tp", int(torch.nonzero(same).flatten()[overlaps[same].argmax()])
    if best_same >= 0.1:
        return "loc", None
    if len(overlaps) and bool((overlaps >= iou).any()):
        return "conf", None
    return "bg", None


def error_report(dataset: DetectionDataset, detections: Detections, iou: float = 0.5) -> dict:
    """Everything above as a JSON-ready dict: totals, per class (objects, found, named,
    confused_with {other class: count}, top_detections {kind: count}), confusion, by_size."""
    table, by_size = naming_table(dataset, detections, iou)
    kinds = top_detection_kinds(dataset, detections, iou)
    per_class = {}
    for k, (name, row) in enumerate(zip(dataset.classes, table.tolist())):
        named_as = sorted(range(len(row) - 1), key=lambda j: -row[j])  # most often first, stable
        others = {dataset.classes[j]: row[j] for j in named_as if j != k and row[j] > 0}
        per_class[name] = {"objects": sum(row), "found": sum(row[:-1]), "named": row[k],
                           "confused_with": others, "top_detections": kinds[name]}
    return {"iou": iou, "objects": int(table.sum()), "found": int(table[:, :-1].sum()),
            "named_correctly": int(table.diagonal().sum()), "per_class": per_class,
            "classes": list(dataset.classes), "confusion": table.tolist(), "by_size": by_size}


def format_errors(report: dict, most: int = 2) -> str:
    """The report as a table: per class its objects, found, named correctly, the `most` classes
    it was named instead, and its top-N detections' bins; then the totals and the size bins."""
    names = list(report["per_class"])
    width = max([len(n) for n in names] + [5])
    lines = [f"errors at IoU >= {report['iou']:g}: each object named by the best-scoring detection "
             f"overlapping it; top-N: the class's N best detections, N = its objects",
             f"{'class':<{width}}  {'objects':>7}  {'found':>6}  {'named':>6}  "
             f"{'tp':>5} {'dup':>5} {'loc':>5} {'conf':>5} {'bg':>5}  confused with"]
    for name in names:
        c = report["per_class"][name]
        confused = ", ".join(f"{o} {v}" for o, v in list(c["confused_with"].items())[:most])
        bins = " ".join(f"{c['top_detections'][k]:>5}" for k in KINDS)
        lines.append(f"{name:<{width}}  {c['objects']:>7}  {c['found']:>6}  {c['named']:>6}  {bins}  {confused}")
    n = max(report["objects"], 1)
    lines.append(f"found by some detection: {report['found']} of {report['objects']} objects "
                 f"({report['found'] / n:.3f}); named correctly: {report['named_correctly']} "
                 f"({report['named_correctly'] / n:.3f})")
    lines.append("named correctly by size (longer side, px): " + ", ".join(
        f"{b}: {hits / count:.3f} of {count}" for b, (hits, count) in report["by_size"].items() if count))
    return "\n".join(lines)


def model_folders(paths: list[str]) -> list[Path]:
    """Classifier runs and member folders as given; a detector run becomes its members."""
    from backbone.io import read_json
    from detect.detector import RUN_JSON

    folders = []
    for path in map(Path, paths):
        if (path / RUN_JSON).is_file():
            folders += [path / m for m in read_json(path / RUN_JSON)["members"]]
        else:
            folders.append(path)
    return folders


def box_logits(model: torch.nn.Module, size: int, image: torch.Tensor, boxes: torch.Tensor, context_pad: int,
               split: str | None = None, short_side: int = 0) -> torch.Tensor:
    """The model's outputs Tensor[R, C] for boxes (Tensor[R, 4]) of one normalised image
    (Tensor[3, H, W]): of their R-CNN warps (split None), or in the shared mode, pooled from the
    map after `split` of the image scaled to `short_side` (`detect.shared_mode`; softmax, whose
    argmax is the logits')."""
    from detect.regions import warp_regions
    from detect.shared_mode import image_scale, member_views

    if split is None:
        return model(warp_regions(image, boxes, size, context_pad)).float()
    scale = image_scale(image.shape[-2], image.shape[-1], short_side)
    return member_views(model, image, boxes, size, scale=scale, context_pad=context_pad, split=split)[0][0]


@torch.no_grad()
def box_accuracy(model_dir: str | Path, dataset: DetectionDataset, context_pad: int = 16,
                 device: str | torch.device = "cpu", split: str | None = None, short_side: int = 0) -> dict:
    """{"boxes": n, "accuracy": top-1, "per_class": {name: top-1}} of one classifier or member
    on the ground-truth boxes of `dataset` whose class it knows (warped at its input size with
    `context_pad` pixels of context at 224, as `detect.regions.warp_regions` warps regions; with
    `split`, scored in the shared mode instead: `box_logits`)."""
    from backbone.io import load_image
    from backbone.models import load_classifier
    from detect.detector import BACKGROUND
    from detect.finetune import class_key
    from detect.regions import to_tensor

    model, meta = load_classifier(model_dir, device)
    keys = [class_key(c) for c in meta.classes]
    background = torch.tensor([c == BACKGROUND for c in meta.classes], device=device)
    # data label (0 = background, 1..K) -> the model's output index, -1 where it lacks the class
    to_model = torch.tensor([-1] + [keys.index(class_key(c)) if class_key(c) in keys else -1
                                    for c in dataset.classes])
    hits, counts = torch.zeros(len(dataset.classes) + 1), torch.zeros(len(dataset.classes) + 1)
    for rec in dataset.images:
        want = to_model[rec.labels.long()]
        known = want >= 0
        if not known.any():
            continue
        image = to_tensor(load_image(rec.path), meta.mean, meta.std, device)
        logits = box_logits(model, meta.input_size, image, rec.boxes[known], context_pad, split, short_side)
        pred = logits.masked_fill(background, float("-inf")).argmax(1).cpu()
        labels = rec.labels.long()[known]
        counts.index_add_(0, labels, torch.ones(len(labels)))
        hits.index_add_(0, labels, (pred == want[known]).float())
    per_class = {c: hits[k + 1].item() / counts[k + 1].item()
                 for k, c in enumerate(dataset.classes) if counts[k + 1] > 0}
    return {"boxes": int(counts.sum()), "accuracy": hits.sum().item() / max(counts.sum().item(), 1.0),
            "per_class": per_class}


def eval_box_accuracy(data: str, split: str | None, models: list[str], json_path: str | None = None,
                      device: str = "auto", shared_splits: tuple[str, ...] = (),
                      short_side: int = 0) -> dict[str, dict]:
    """`detect eval --box-accuracy`: print (and optionally write as JSON) `box_accuracy` of each
    model folder (a detector run: each of its members), warped as R-CNN does and, for each of
    `shared_splits`, in the shared mode at that split; returns {folder or "folder @ split": result}."""
    import click

    from backbone.errors import InputError
    from backbone.io import atomic_write_json
    from detect.data import load_dataset
    from backbone.device import resolve_device
    from detect.shared_mode import SPLITS

    dataset = load_dataset(data, split=split)
    if not dataset.images:
        raise InputError(data, "the data set has no images: nothing to evaluate")
    dev = resolve_device(device)
    for name in shared_splits:
        if name not in SPLITS:
            raise InputError(None, f"--shared-split must be one of {', '.join(SPLITS)}, got '{name}'")
    results = {}
    for folder in model_folders(models):
        for where in (None, *shared_splits):
            label = str(folder) if where is None else f"{folder} @ {where}"
            r = results[label] = box_accuracy(folder, dataset, device=dev, split=where, short_side=short_side)
            per_class = ", ".join(f"{c} {a:.3f}" for c, a in r["per_class"].items())
            click.echo(f"{label}: {r['accuracy']:.4f} top-1 on {r['boxes']} ground-truth boxes ({per_class})")
    if json_path:
        atomic_write_json(json_path, results)
    return results
