"""tools/detection_errors.py: objects' names and the top detections' bins, counted by hand."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

from detect.data import DetectionDataset, ImageRecord

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("detection_errors", ROOT / "tools" / "detection_errors.py")
tool = importlib.util.module_from_spec(spec)
spec.loader.exec_module(tool)


def _record(image_id: int, boxes: list, labels: list, difficult: list | None = None) -> ImageRecord:
    n = len(labels)
    return ImageRecord(image_id, str(image_id), Path(f"{image_id}.jpg"), 200, 200,
                       torch.tensor(boxes, dtype=torch.float32).reshape(n, 4), torch.tensor(labels),
                       torch.tensor(difficult or [False] * n))


def _dets(rows: list) -> dict:
    """rows: (x1, y1, x2, y2, score, label)."""
    t = torch.tensor(rows, dtype=torch.float32).reshape(-1, 6)
    return {"boxes": t[:, :4], "scores": t[:, 4], "labels": t[:, 5].long()}


def test_naming_and_top_detection_bins_by_hand():
    data = DetectionDataset(["a", "b"], [
        _record(0, [[0, 0, 50, 50], [100, 100, 150, 150], [0, 100, 30, 130]], [1, 2, 1]),
        _record(1, [[10, 10, 90, 90], [150, 150, 190, 190], [100, 150, 130, 180]], [2, 1, 1], [False, True, False]),
    ], Path("."), [1, 2])
    detections = {
        0: _dets([[0, 0, 50, 50, 0.9, 1],       # object 0 (a): tp for a
                  [0, 0, 50, 48, 0.8, 1],       # the same object again: dup
                  [0, 0, 50, 50, 0.95, 2],      # ... and the best overlap says "b": object 0 named b
                  [100, 100, 150, 150, 0.7, 1], # on object 1 (b): conf for a
                  [100, 100, 150, 150, 0.6, 2], # object 1's own class, lower: tp for b
                  ]),
        1: _dets([[10, 10, 40, 40, 0.99, 2],    # IoU 0.14 with the b object: loc
                  [150, 0, 199, 40, 0.97, 2],   # nothing there: bg
                  [150, 0, 199, 40, 0.5, 1]]),  # bg too, but a's 4th best: not counted
    }
    table, by_size = tool.naming(data, detections)
    # object 0 (a) named b (0.95 beats 0.9); object 1 (b) named a (0.7 beats 0.6); the two small
    # a and the b in image 1 are found by no detection at IoU >= 0.5; the difficult a is left out.
    assert table.tolist() == [[0, 1, 2], [1, 0, 1]]
    assert by_size[(0, 40)] == [0, 2] and by_size[(40, 64)] == [0, 2] and by_size[(64, 100)] == [0, 1]
    kinds = tool.top_detection_kinds(data, detections)
    # a has 3 non-difficult objects: its best three are 0.9 (tp), 0.8 (dup), 0.7 (on the b: conf)
    assert kinds["a"] == {"tp": 1, "dup": 1, "loc": 0, "conf": 1, "bg": 0}
    # b has 2 objects: its best two are the loc (0.99) and the bg (0.97); 0.95 and 0.6 rank lower
    assert kinds["b"] == {"tp": 0, "dup": 0, "loc": 1, "conf": 0, "bg": 1}
