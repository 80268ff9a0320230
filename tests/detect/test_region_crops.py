"""detect crops: jittered boxes, background regions, the warp, the share, seeds, resume, errors."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.ops import box_iou

from backbone.data import scan_image_folder
from backbone.errors import InputError
from backbone.models import IMAGENET_MEAN
from cli_helpers import run
from detect import region_crops
from detect.detector import BACKGROUND
from detect.region_crops import CropSettings, background_boxes, cut_crops, jitter_boxes, write_region_crops
from shapes_data import CLASSES, make_shapes_dataset

SMALL = CropSettings(size=32, per_box=3, background=0.25)


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    return make_shapes_dataset(tmp_path_factory.mktemp("crops") / "shapes", {"train": 10, "val": 4}, size=96)


def files(root: Path) -> dict[str, bytes]:
    """Every crop under train/ and val/: relative path -> bytes."""
    return {p.relative_to(root).as_posix(): p.read_bytes()
            for s in ("train", "val") for p in sorted((root / s).rglob("*.png"))}


def test_jitter_keeps_iou_with_its_box():
    box = torch.tensor([40.0, 30.0, 100.0, 70.0])
    boxes = jitter_boxes(box, 50, np.random.default_rng(0), 0.7, 200, 150)
    iou = box_iou(boxes, box[None])[:, 0]
    assert boxes.shape == (50, 4) and torch.equal(boxes[0], box)
    assert (iou >= 0.7).all() and (iou[1:] < 0.999).all()  # copies, not the box again
    assert boxes[:, 0::2].min() >= 0 and boxes[:, 2].max() <= 200 and boxes[:, 3].max() <= 150
    # a box at the corner: the copies are clipped to the image and still overlap it enough
    corner = jitter_boxes(torch.tensor([0.0, 0.0, 20.0, 20.0]), 20, np.random.default_rng(1), 0.7, 50, 50)
    assert corner.min() >= 0 and (box_iou(corner, torch.tensor([[0.0, 0.0, 20.0, 20.0]])) >= 0.7).all()


def test_backgrounds_clear_every_box():
    gt = torch.tensor([[10.0, 10.0, 60.0, 60.0], [100.0, 20.0, 180.0, 140.0], [30.0, 90.0, 70.0, 150.0]])
    boxes = background_boxes(gt, 40, np.random.default_rng(0), 0.3, 200, 160)
    assert boxes.shape == (40, 4)
    assert (box_iou(boxes, gt).max(dim=1).values < 0.3).all()
    assert boxes[:, :2].min() >= 0 and boxes[:, 2].max() <= 200 and boxes[:, 3].max() <= 160
    # a box over the whole image: a region of >= 1% of it has IoU >= 0.01 with it, so at a
    # limit of 0.005 there is no room (fewer crops, never a bad one)
    whole = torch.tensor([[0.0, 0.0, 100.0, 100.0]])
    assert len(background_boxes(whole, 5, np.random.default_rng(0), 0.005, 100, 100)) == 0
    assert len(background_boxes(whole, 5, np.random.default_rng(0), 0.3, 100, 100)) == 5


def test_warp_puts_the_box_in_192_of_256_and_pads_with_the_mean():
    image = np.zeros((256, 256, 3), np.uint8)
    image[96:160, 96:160] = 255  # a 64 px white square
    crop = cut_crops(image, torch.tensor([[96.0, 96.0, 160.0, 160.0]]), size=64)[0]
    # the box grows by 256/192 to 85.3 px, warped to 64: the square is the middle 48 x 48
    assert (crop[9:55, 9:55] == 255).all()
    assert (crop[:7] == 0).all() and (crop[57:] == 0).all() and (crop[:, :7] == 0).all()
    # a box in the corner: what lies outside the image takes the mean colour (the detector's padding)
    corner = cut_crops(image, torch.tensor([[0.0, 0.0, 32.0, 32.0]]), size=64)[0]
    assert corner[0, 0].tolist() == [round(m * 255) for m in IMAGENET_MEAN]


def test_folder_share_and_classifier_layout(shapes, tmp_path):
    summary = write_region_crops(shapes, tmp_path / "out", "train", "val", SMALL, progress=False)
    for split in ("train", "val"):
        counts = summary["crops"][split]
        objects = sum(n for name, n in counts.items() if name != BACKGROUND)
        assert objects % 3 == 0 and counts[BACKGROUND] == round(0.25 / 0.75 * objects)
        classes, samples = scan_image_folder(tmp_path / "out" / split, sorted([*CLASSES, BACKGROUND]))
        assert len(samples) == sum(counts.values())
    assert summary["done"] == 14 and summary["written"] == sum(sum(c.values()) for c in summary["crops"].values())
    # val/ holds the val split's images only
    assert all(p.name.startswith("val_") for p in (tmp_path / "out" / "val").rglob("*.png"))
    none = write_region_crops(shapes, tmp_path / "none", "train", "val",
                              CropSettings(size=32, per_box=1, background=0.0), progress=False)
    assert BACKGROUND not in none["crops"]["train"] and not (tmp_path / "none" / "train" / BACKGROUND).exists()


def test_same_seed_same_bytes_whatever_the_workers(shapes, tmp_path):
    write_region_crops(shapes, tmp_path / "a", "train", None, SMALL, workers=1, progress=False)
    write_region_crops(shapes, tmp_path / "b", "train", None, SMALL, workers=2, progress=False)
    write_region_crops(shapes, tmp_path / "c", "train", None, CropSettings(size=32, per_box=3, seed=1),
                       progress=False)
    a, b, c = files(tmp_path / "a"), files(tmp_path / "b"), files(tmp_path / "c")
    assert a and a == b
    assert a != c
    assert len(list((tmp_path / "a" / "val").rglob("*.png"))) > 0  # the held-out share (10% of 10)


def test_killed_run_resumes_to_the_same_files(shapes, tmp_path, monkeypatch):
    write_region_crops(shapes, tmp_path / "whole", "train", "val", SMALL, progress=False)
    real, calls = region_crops.png_bytes, []

    def dies_on_the_20th(pixels):
        calls.append(1)
        if len(calls) == 20:
            raise KeyboardInterrupt  # mid-image: some of its crops written, no done entry
        return real(pixels)

    monkeypatch.setattr(region_crops, "png_bytes", dies_on_the_20th)
    with pytest.raises(KeyboardInterrupt):
        write_region_crops(shapes, tmp_path / "part", "train", "val", SMALL, progress=False)
    monkeypatch.setattr(region_crops, "png_bytes", real)
    finished = len(list((tmp_path / "part" / "done").rglob("*.json")))
    assert 0 < finished < 14
    summary = write_region_crops(shapes, tmp_path / "part", "train", "val", SMALL, progress=False)
    assert summary["cached"] == finished and summary["done"] == 14 - finished
    assert files(tmp_path / "part") == files(tmp_path / "whole")
    with pytest.raises(InputError, match="other data or with other settings"):
        write_region_crops(shapes, tmp_path / "part", "train", "val", CropSettings(size=40), progress=False)


def test_command_line(shapes, tmp_path, capsys):
    code, out, err = run(capsys, "crops", "--data", str(shapes), "--split", "train", "--val-split", "val",
                         "--out", str(tmp_path / "cli"), "--size", "32", "--per-box", "2", "--background", "0.5",
                         "--workers", "1", "--quiet")
    assert code == 0, err
    train = out.splitlines()[0]
    assert train.startswith("train: ") and f"{BACKGROUND} " in train
    code, out, err = run(capsys, "crops", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "x"))
    assert code == 2 and err.count("\n") == 1 and err.startswith("error: ") and "missing" in err
    bad = make_shapes_dataset(tmp_path / "bad", {"train": 2}, size=64)
    (bad / "Annotations" / "train_0001.xml").write_text("<annotation><object>")
    code, out, err = run(capsys, "crops", "--data", str(bad), "--out", str(tmp_path / "y"))
    assert code == 2 and err.count("\n") == 1 and err.startswith(f"error: {bad / 'Annotations' / 'train_0001.xml'}: ")
    code, out, err = run(capsys, "crops", "--data", str(shapes), "--out", str(tmp_path / "z"), "--background", "1")
    assert code == 2 and err.count("\n") == 1 and "--background" in err


def test_coco_files_give_the_voc_crops(shapes, tmp_path):
    from detect.data import load_dataset, write_coco

    voc = write_region_crops(shapes, tmp_path / "voc", "train", "val", SMALL, progress=False)
    coco = shutil.copytree(shapes, tmp_path / "coco")  # a COCO file names images inside its folder
    for split in ("train", "val"):  # the same images and boxes as COCO files, one per split
        write_coco(coco / f"instances_{split}.json", load_dataset(coco, split))
    shutil.rmtree(coco / "Annotations")
    from_coco = write_region_crops(coco, tmp_path / "co", "train", "val", SMALL, progress=False)
    assert not from_coco["skipped"] and from_coco["crops"] == voc["crops"]
