"""Classifier crops from a detection data set, cut the way the detector cuts a region.

Shapes: G ground-truth boxes of an image, C candidate boxes, R crops of an image, S saved side.

`write_region_crops` turns a VOC / ILSVRC / COCO data set into the folder `detect
train-classifier` reads (ImageNet's layout), so a classifier can learn the detector's own
classes and its background class before R-CNN fine-tuning:

    OUT/train/<class>/<key>-<box>-<j>.png   crops of the ground-truth boxes of --split
    OUT/train/__background__/<key>-bg-<j>.png   regions clear of every box
    OUT/val/...                              the same from --val-split (or a held-out share)
    OUT/crops.yaml                           CropSettings and the data it was cut from
    OUT/done/<train|val>/<key>.json          one per finished image: what it wrote
    OUT/summary.json                         what the last run did, skipped images listed

The warp. Each box is dilated about its centre and warped to S x S with `detect.regions`
(bilinear, pixels outside the image take the mean colour, as the detector pads them), with
the detector's 16 px of context at 224 plus the margin train-classifier's centre crop removes
(it keeps 224/256 of the side, `backbone.crops`): once centre-cropped, the box fills 192/224
of the network input, exactly as a warped region fills it. So S = 256/224 x the classifier's
input size (e.g. 128 for 112).

Which boxes. Box j = 0 of a ground-truth box is the box itself; j > 0 are jittered copies
(shifted and rescaled, clipped to the image) with IoU >= `jitter_iou` to it, R-CNN's
"positive" range. Difficult / crowd boxes give no crops (but backgrounds avoid them too).
Background regions have IoU < `background_iou` with every box of their image; sized 1-50%
of the image area (log-uniform, aspect 1:2 to 2:1). `background` is their share of all the
crops of a split: round(share / (1 - share) x object crops) of them, spread evenly over
the split's images.

Reproducible and resumable: the boxes of an image come from numpy.random.default_rng([seed,
crc32(key)]), so the same settings give the same files whatever the worker count; each crop
is written atomically and an image counts as done once its `done/` entry exists, so a killed
run continues where it stopped (finished images are kept, the unfinished one is redone).
"""
from __future__ import annotations

import io
import os
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence
from urllib.parse import quote

import numpy as np
import torch
from torch import Tensor
from torchvision.ops import box_iou, clip_boxes_to_image

from backbone.config import config_to_dict, read_yaml
from backbone.crops import PAPER_SIZE, SINGLE_SCALE
from backbone.errors import InputError
from backbone.io import atomic_write_json, atomic_write_text, load_image, read_json
from backbone.models import IMAGENET_MEAN
from backbone.pool import process_map
from detect.data import DetectionDataset, ImageRecord, load_dataset
from detect.detector import BACKGROUND
from detect.regions import dilate_boxes, warp_regions

SPLITS = ("train", "val")
# A jittered box: centre shifted by up to this fraction of the box's side ...
JITTER_SHIFT = 0.15
# ... and each side scaled by a factor log-uniform in [1/this, this]; IoU >= jitter_iou is then
# enforced by drawing again, so these only set how far inside that range the crops spread.
JITTER_SCALE = 1.3
BACKGROUND_AREA = (0.01, 0.5)  # a background region's share of the image area (log-uniform)
BACKGROUND_ASPECT = 2.0  # its aspect ratio w/h log-uniform in [1/this, this]
DRAWS = 64  # candidate boxes drawn at a time ...
ROUNDS = 20  # ... at most this many times before giving up on a crop


@dataclass
class CropSettings:
    size: int = 128  # side of a saved crop: 256/224 x the classifier's input size (128 for 112)
    per_box: int = 8  # crops per ground-truth box: the box itself, then jittered copies (docs/own_data.md: 8 against 4)
    jitter_iou: float = 0.7  # a jittered copy overlaps its box at least this much (IoU)
    background: float = 0.4  # share of a split's crops that are background regions (0: none)
    background_iou: float = 0.3  # a background region overlaps every box of its image less than this
    context_pad: int = 16  # context pixels around a box at 224, the detector's regions.context_pad
    seed: int = 0  # seeds every box drawn (and the held-out val images)
    val_share: float = 0.1  # without a val split: this share of the images of the split becomes val/


@dataclass
class CropTask:
    """One image's work: where its crops go and how many backgrounds it owes."""
    split: str  # "train" or "val": the output folder
    key: str
    path: str
    width: int
    height: int
    boxes: Tensor  # [G, 4] xyxy, every box of the image (difficult ones too)
    names: list[str]  # [G] class folder of each box; "" for a difficult / crowd box
    backgrounds: int  # background crops this image owes


def image_rng(seed: int, key: str) -> np.random.Generator:
    """The generator of one image's boxes: independent of the image's position and the workers."""
    return np.random.default_rng([seed, zlib.crc32(key.encode("utf-8"))])


def jitter_boxes(box: Tensor, count: int, rng: np.random.Generator, min_iou: float,
                 width: int, height: int) -> Tensor:
    """`count` boxes for one ground-truth box (Tensor[4]): the box, then jittered copies inside
    the image with IoU >= min_iou to it. Returns Tensor[count, 4] (the box repeats where no
    copy was found in DRAWS x ROUNDS tries)."""
    found = [box[None]]
    size, centre = box[2:] - box[:2], (box[:2] + box[2:]) / 2
    for _ in range(ROUNDS):
        if sum(len(f) for f in found) >= count:
            break
        shift = torch.from_numpy(rng.uniform(-JITTER_SHIFT, JITTER_SHIFT, (DRAWS, 2))).float() * size
        scale = torch.from_numpy(np.exp(rng.uniform(-1, 1, (DRAWS, 2)) * np.log(JITTER_SCALE))).float()
        half = size * scale / 2
        cand = clip_boxes_to_image(torch.cat([centre + shift - half, centre + shift + half], dim=1), (height, width))
        found.append(cand[box_iou(cand, box[None])[:, 0] >= min_iou])
    boxes = torch.cat(found)[:count]
    return torch.cat([boxes, box[None].expand(count - len(boxes), 4)]) if len(boxes) < count else boxes


def background_boxes(gt: Tensor, count: int, rng: np.random.Generator, max_iou: float,
                     width: int, height: int) -> Tensor:
    """Up to `count` regions of a width x height image with IoU < max_iou to every box of gt
    (Tensor[G, 4]). Returns Tensor[<= count, 4]: fewer where the boxes leave no room."""
    found: list[Tensor] = []
    for _ in range(ROUNDS):
        if count <= 0 or sum(len(f) for f in found) >= count:
            break
        area = np.exp(rng.uniform(*np.log(BACKGROUND_AREA), DRAWS)) * width * height
        aspect = np.exp(rng.uniform(-1, 1, DRAWS) * np.log(BACKGROUND_ASPECT))
        w, h = np.minimum(np.sqrt(area * aspect), width), np.minimum(np.sqrt(area / aspect), height)
        x, y = rng.uniform(0, 1, DRAWS) * (width - w), rng.uniform(0, 1, DRAWS) * (height - h)
        cand = torch.from_numpy(np.stack([x, y, x + w, y + h], axis=1)).float()
        if len(gt):
            cand = cand[box_iou(cand, gt).max(dim=1).values < max_iou]
        found.append(cand)
    return torch.cat(found)[:max(count, 0)] if found else torch.zeros((0, 4))


def cut_crops(image: np.ndarray, boxes: Tensor, size: int, context_pad: int = 16,
              mean: Sequence[float] = IMAGENET_MEAN) -> np.ndarray:
    """The saved crops of boxes (Tensor[R, 4]) from image uint8 [H, W, 3]: uint8 [R, S, S, 3].

    The box grows by 256 / (224 - 2 x context_pad) (the detector's context, then the margin of
    train-classifier's centre crop) and is warped by `detect.regions`; outside the image: mean.
    """
    fill = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1) * 255.0
    x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float() - fill  # 0 == the mean
    margin = SINGLE_SCALE // 2 - PAPER_SIZE // 2 + context_pad  # 32 px of a 256 side at context 16
    regions = dilate_boxes(boxes.float(), SINGLE_SCALE, margin)
    crops = warp_regions(x, regions, crop_size=size, context_pad=0) + fill
    return crops.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def crop_boxes(task: CropTask, settings: CropSettings) -> list[tuple[str, str, Tensor]]:
    """(class folder, file name, box Tensor[4]) of every crop of one image, in a fixed order."""
    rng, stem = image_rng(settings.seed, task.key), quote(task.key, safe="")
    out = []
    for b, (box, name) in enumerate(zip(task.boxes, task.names)):
        if not name or box[2] - box[0] < 1 or box[3] - box[1] < 1:
            continue
        jittered = jitter_boxes(box, settings.per_box, rng, settings.jitter_iou, task.width, task.height)
        out += [(name, f"{stem}-{b:03d}-{j}.png", jb) for j, jb in enumerate(jittered)]
    backs = background_boxes(task.boxes, task.backgrounds, rng, settings.background_iou, task.width, task.height)
    return out + [(BACKGROUND, f"{stem}-bg-{j}.png", bb) for j, bb in enumerate(backs)]


def png_bytes(pixels: np.ndarray) -> bytes:
    """uint8 [S, S, 3] as PNG bytes (deterministic: the same pixels give the same bytes).
    zlib level 1: half the time of the default 6 for files 1% larger (128 px photo crops)."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def write_crop(path: Path, data: bytes) -> None:
    """`data` into `path` by a temporary file and a rename, so a killed run never leaves a
    half-written crop under its name. No fsync (14 ms a file here, more than cutting it): the
    image's done entry, written after its crops, is what a rerun trusts."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


class CropFolder:
    """The output folder: crop files, per-image `done/` entries, the saved settings."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def done_path(self, split: str, key: str) -> Path:
        return self.root / "done" / split / (quote(key, safe="") + ".json")

    def is_done(self, task: CropTask) -> bool:
        return self.done_path(task.split, task.key).is_file()

    def write_image(self, task: CropTask, settings: CropSettings) -> dict[str, int]:
        """Cut and write every crop of one image, then its done entry; returns crops per class."""
        plan = crop_boxes(task, settings)
        counts: dict[str, int] = {}
        if plan:
            pixels = cut_crops(load_image(task.path), torch.stack([b for _, _, b in plan]),
                               settings.size, settings.context_pad)
            for (name, file, _), crop in zip(plan, pixels):
                write_crop(self.root / task.split / folder_name(name) / file, png_bytes(crop))
                counts[name] = counts.get(name, 0) + 1
        atomic_write_json(self.done_path(task.split, task.key), {"key": task.key, "crops": counts})
        return counts

    def check_record(self, record: dict) -> None:
        """Save what a new folder is cut from and how; refuse to mix two of them in one folder."""
        import yaml

        path = self.root / "crops.yaml"
        if not path.is_file():
            atomic_write_text(path, yaml.safe_dump(record, sort_keys=False))
        elif read_yaml(path) != record:
            raise InputError(path, "the folder was cut from other data or with other settings; "
                                   "use a new --out or the same options")


def folder_name(class_name: str) -> str:
    """A class name as a folder name ('/' would make a sub-folder)."""
    return class_name.replace("/", "_").replace("\\", "_")


def held_out(records: list[ImageRecord], share: float, seed: int) -> tuple[list[ImageRecord], list[ImageRecord]]:
    """(train, val): a seeded `share` of the records (at least one, if there are two) as val."""
    n_val = min(max(round(share * len(records)), 1 if len(records) > 1 else 0), len(records) - 1)
    chosen = set(np.random.default_rng([seed, 1]).permutation(len(records))[:max(n_val, 0)].tolist())
    return ([r for i, r in enumerate(records) if i not in chosen],
            [r for i, r in enumerate(records) if i in chosen])


def spread(total: int, n: int) -> list[int]:
    """`total` split over n slots as evenly as the integers allow, in a fixed pattern."""
    return [(i + 1) * total // n - i * total // n for i in range(n)] if n else []


def split_tasks(split: str, records: list[ImageRecord], classes: list[str], settings: CropSettings) -> list[CropTask]:
    """The CropTasks of one output split; backgrounds spread so that they make up
    `settings.background` of the split's crops."""
    tasks = []
    for rec in records:
        names = ["" if bool(d) else classes[int(lab) - 1] for lab, d in zip(rec.labels, rec.difficult)]
        tasks.append(CropTask(split, rec.key, str(rec.path), rec.width, rec.height, rec.boxes.float(), names, 0))
    objects = settings.per_box * sum(sum(1 for n in t.names if n) for t in tasks)
    share = settings.background
    total = round(share / (1.0 - share) * objects) if 0 < share < 1 else 0
    for task, count in zip(tasks, spread(total, len(tasks))):
        task.backgrounds = count
    return tasks


def check_settings(settings: CropSettings) -> None:
    """InputError for settings that cannot work."""
    if settings.size < 8 or settings.per_box < 1:
        raise InputError("<command line>", "need --size >= 8 and --per-box >= 1")
    if not 0 <= settings.background < 1:
        raise InputError("<command line>", f"--background {settings.background}: a share in [0, 1)")
    if not 0 < settings.jitter_iou <= 1 or not 0 < settings.background_iou <= 1:
        raise InputError("<command line>", "jitter_iou and background_iou are IoUs in (0, 1]")
    if 2 * settings.context_pad >= PAPER_SIZE:
        raise InputError("<command line>", f"context pad {settings.context_pad} leaves no room at 224")


def plan(data: str | Path, split: str | None, val_split: str | None, settings: CropSettings,
         limit: int | None = None) -> tuple[list[str], list[CropTask]]:
    """(class names, CropTasks of train and val) of a data set: --split's images (less a
    held-out share when there is no val split) to train/, --val-split's to val/."""
    train = load_dataset(data, split=split)
    records = train.images[:limit] if limit else train.images
    if val_split is not None:
        val: DetectionDataset = load_dataset(data, split=val_split)
        unknown = sorted(set(val.classes) - set(train.classes))
        if unknown:
            raise InputError(data, f"split '{val_split}' has classes that '{split}' lacks: {unknown[:5]}")
        train_recs, val_recs = records, val.images[:limit] if limit else val.images
        val_classes = val.classes
    else:
        train_recs, val_recs = held_out(records, settings.val_share, settings.seed)
        val_classes = train.classes
    if not train_recs or not val_recs:
        raise InputError(data, f"need images for both train/ and val/ (found {len(train_recs)} and {len(val_recs)})")
    tasks = split_tasks("train", train_recs, train.classes, settings) + split_tasks("val", val_recs, val_classes, settings)
    return list(train.classes), tasks


_worker: dict = {}  # per worker process: the output folder and the settings


def _init_worker(root: str, settings: dict) -> None:
    """One torch thread per process: parallelism comes from the processes."""
    torch.set_num_threads(1)
    _worker["folder"], _worker["settings"] = CropFolder(root), CropSettings(**settings)


def _crop_one(task: CropTask) -> tuple[CropTask, dict[str, int], str | None]:
    """Write one image's crops: (task, crops per class, problem or None)."""
    try:
        return task, _worker["folder"].write_image(task, _worker["settings"]), None
    except InputError as e:
        return task, {}, str(e.problem)


def write_region_crops(data: str | Path, out: str | Path, split: str | None = "train",
                       val_split: str | None = None, settings: CropSettings | None = None,
                       workers: int = 1, limit: int | None = None, progress: bool = True) -> dict:
    """Cut the classifier crops of a detection data set into `out` (layout: module docstring).

    Args:
        data: a VOC/ILSVRC folder or a COCO instances JSON (`detect.data.load_dataset`).
        split: the split whose images fill train/.
        val_split: the split whose images fill val/; None: `settings.val_share` of `split`'s.
        settings: CropSettings (default: its defaults); saved in out/crops.yaml, and a folder
            cut with other settings is refused.
        workers: processes (1: this process); the files do not depend on it.
        limit: only the first `limit` images of each split (a quick look).
        progress: show a progress bar.

    Returns:
        summary dict: images, cached (done before), done (now), skipped ({key, path, problem}),
        crops {split: {class: n}} over every finished image, written (crops now), seconds,
        crops_per_s. Also written to out/summary.json.
    """
    from backbone.progress import progress as progress_bar

    settings = settings or CropSettings()
    check_settings(settings)
    classes, tasks = plan(data, split, val_split, settings, limit)
    folder = CropFolder(out)
    folder.check_record({"data": str(Path(data).resolve()), "split": split, "val_split": val_split,
                         "limit": limit, "settings": config_to_dict(settings)})
    for s in SPLITS:
        for name in [*classes, *([BACKGROUND] if settings.background > 0 else [])]:
            (folder.root / s / folder_name(name)).mkdir(parents=True, exist_ok=True)
    todo = [t for t in tasks if not folder.is_done(t)]
    start, skipped, written = time.perf_counter(), [], 0
    bar = progress_bar(total=len(todo), desc="crops", unit="img", disable=not progress)
    for task, counts, problem in process_map(_crop_one, todo, workers, _init_worker,
                                             (str(folder.root), config_to_dict(settings))):
        if problem is not None:
            skipped.append({"key": task.key, "path": task.path, "problem": problem})
        written += sum(counts.values())
        bar.update(1)
    bar.close()
    seconds = time.perf_counter() - start
    summary = {"images": len(tasks), "cached": len(tasks) - len(todo), "done": len(todo) - len(skipped),
               "skipped": skipped, "crops": folder_counts(folder, tasks), "written": written,
               "seconds": round(seconds, 2), "crops_per_s": written / seconds if seconds > 0 else 0.0,
               "workers": workers}
    atomic_write_json(folder.root / "summary.json", summary)
    return summary


def folder_counts(folder: CropFolder, tasks: list[CropTask]) -> dict[str, dict[str, int]]:
    """Crops per split and class over every finished image (from their done entries)."""
    totals: dict[str, dict[str, int]] = {s: {} for s in SPLITS}
    for task in tasks:
        path = folder.done_path(task.split, task.key)
        if path.is_file():
            for name, n in read_json(path)["crops"].items():
                totals[task.split][name] = totals[task.split].get(name, 0) + n
    return totals
