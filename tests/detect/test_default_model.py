"""The built-in demo detector loads with no path and finds the garments of example scenes."""
from pathlib import Path

import torch
from torchvision.ops import box_iou

from detect import Detector
from detect.data import load_dataset

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_builtin_detector_loads_and_finds_objects():
    torch.set_num_threads(1)
    detector = Detector.load(device="cpu")
    dataset = load_dataset(EXAMPLES, split="test")
    assert detector.classes == dataset.classes and len(detector.classes) == 10
    found = total = 0
    for rec in dataset.images[:4]:
        out = detector.detect(rec.path)
        assert out["boxes"].shape[1] == 4 and len(out["scores"]) == len(out["labels"])
        assert torch.all(out["scores"][:-1] >= out["scores"][1:])
        probs = detector.score_regions(rec.path, rec.boxes)
        assert probs.shape == (len(rec.boxes), 11)
        assert torch.allclose(probs.sum(1), torch.ones(len(rec.boxes)), atol=1e-5)
        # Localisation: every object is covered by some detection at IoU >= 0.5.
        iou = box_iou(rec.boxes, out["boxes"])
        found += int((iou.max(1).values >= 0.5).sum()) if len(out["boxes"]) else 0
        total += len(rec.boxes)
    assert found >= 0.8 * total, f"only {found} of {total} objects were found"
