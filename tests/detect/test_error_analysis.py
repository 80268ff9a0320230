"""detect/error_analysis.py and `detect eval --map --errors` / `--box-accuracy`: counted by hand."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from PIL import Image

from backbone.models import ModelMeta, build_model, save_classifier
from cli_helpers import run
from detect.data import DetectionDataset, ImageRecord, load_dataset, write_voc
from detect.detector import save_detector_run
from detect.error_analysis import box_accuracy, box_logits, error_report, naming_table, top_detection_kinds
from detect.results import write_detections
from shapes_data import make_shapes_dataset
from tiny_detector import make_config


def _record(image_id: int, boxes: list, labels: list, difficult: list | None = None) -> ImageRecord:
    n = len(labels)
    return ImageRecord(image_id, str(image_id), Path(f"{image_id}.jpg"), 200, 200,
                       torch.tensor(boxes, dtype=torch.float32).reshape(n, 4), torch.tensor(labels),
                       torch.tensor(difficult or [False] * n))


def _dets(rows: list) -> dict:
    """rows: (x1, y1, x2, y2, score, label)."""
    t = torch.tensor(rows, dtype=torch.float32).reshape(-1, 6)
    return {"boxes": t[:, :4], "scores": t[:, 4], "labels": t[:, 5].long()}


def _hand_case() -> tuple[DetectionDataset, dict]:
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
    return data, detections


def test_naming_and_top_detection_bins_by_hand():
    data, detections = _hand_case()
    table, by_size = naming_table(data, detections)
    # object 0 (a) named b (0.95 beats 0.9); object 1 (b) named a (0.7 beats 0.6); the two small
    # a and the b in image 1 are found by no detection at IoU >= 0.5; the difficult a is left out.
    assert table.tolist() == [[0, 1, 2], [1, 0, 1]]
    assert by_size == {"0-40": [0, 2], "40-64": [0, 2], "64-100": [0, 1], "100-": [0, 0]}
    # at IoU >= 0.1 the 0.99 b detection (IoU 0.14) finds image 1's b object and names it b
    assert naming_table(data, detections, iou=0.1)[0].tolist() == [[0, 1, 2], [1, 1, 0]]
    kinds = top_detection_kinds(data, detections)
    # a has 3 non-difficult objects: its best three are 0.9 (tp), 0.8 (dup), 0.7 (on the b: conf)
    assert kinds["a"] == {"tp": 1, "dup": 1, "loc": 0, "conf": 1, "bg": 0}
    # b has 2 objects: its best two are the loc (0.99) and the bg (0.97); 0.95 and 0.6 rank lower
    assert kinds["b"] == {"tp": 0, "dup": 0, "loc": 1, "conf": 0, "bg": 1}
    report = error_report(data, detections)
    assert (report["objects"], report["found"], report["named_correctly"]) == (5, 2, 0)
    assert report["per_class"]["a"] == {"objects": 3, "found": 1, "named": 0, "confused_with": {"b": 1},
                                        "top_detections": kinds["a"]}
    assert report["per_class"]["b"]["confused_with"] == {"a": 1}


def test_an_image_without_detections_finds_nothing():
    data = DetectionDataset(["a"], [_record(0, [[0, 0, 50, 50]], [1])], Path("."), [1])
    report = error_report(data, {})
    assert (report["objects"], report["found"], report["named_correctly"]) == (1, 0, 0)
    assert report["per_class"]["a"]["top_detections"] == {"tp": 0, "dup": 0, "loc": 0, "conf": 0, "bg": 0}


def test_eval_map_errors_prints_and_writes_the_breakdown(tmp_path, capsys):
    root = tmp_path / "voc"
    for key, boxes, labels in (("im0", [[10, 10, 60, 50], [70, 20, 90, 60]], [1, 2]), ("im1", [[5, 5, 40, 30]], [1])):
        write_voc(root, key, (100, 80), torch.tensor(boxes, dtype=torch.float32), torch.tensor(labels), ["a", "b"])
        (root / "JPEGImages").mkdir(exist_ok=True)
        Image.new("RGB", (100, 80)).save(root / "JPEGImages" / f"{key}.jpg")
    (root / "classes.txt").write_text("a\nb\n")
    ds = load_dataset(root)
    ids = [rec.image_id for rec in ds.images]
    # im0's a object: an a detection (0.6) and a b detection (0.9) on it -> named b; im0's b: found
    # and named b (0.8); im1's a object: no detection.
    write_detections(tmp_path / "d.json", {
        ids[0]: _dets([[10, 10, 60, 50, 0.6, 1], [10, 10, 60, 50, 0.9, 2], [70, 20, 90, 60, 0.8, 2]]),
        ids[1]: _dets([])}, ds)
    code, out, _ = run(capsys, "eval", "--map", "--data", str(root), "--detections", str(tmp_path / "d.json"),
                       "--errors", "--json", str(tmp_path / "r.json"))
    assert code == 0, out
    assert "found by some detection: 2 of 3 objects (0.667); named correctly: 1 (0.333)" in out
    breakdown = out[out.index("errors at IoU >= 0.5"):].splitlines()
    row_a = next(line for line in breakdown if line.startswith("a "))
    # a: 2 objects, 1 found, 0 named; its 2 best a detections: the one (tp); named b once
    assert row_a.split() == ["a", "2", "1", "0", "1", "0", "0", "0", "0", "b", "1"]
    errors = json.loads((tmp_path / "r.json").read_text())["errors"]
    # b's 1 best b detection is the 0.9 one, on the a object: conf
    assert errors["per_class"]["b"]["top_detections"] == {"tp": 0, "dup": 0, "loc": 0, "conf": 1, "bg": 0}
    # sizes (longer side): a 50 and b 40 -> 40-64 (the b named right), the 35 px a -> 0-40
    assert errors["by_size"] == {"0-40": [0, 1], "40-64": [1, 2], "64-100": [0, 0], "100-": [0, 0]}
    assert errors["confusion"] == [[0, 1, 1], [0, 1, 0]]
    code, _, err = run(capsys, "eval", "--recall", "--errors", "--data", str(root))
    assert code == 2 and "--errors goes with --map" in err


def _constant_model(classes: list[str], bias: list[float]) -> tuple[torch.nn.Module, ModelMeta]:
    """A classifier whose logits are `bias` whatever the image (zero head weights)."""
    model = build_model("googlenet", len(classes), width=0.125, aux_logits=False)
    with torch.no_grad():
        model.fc.weight.zero_()
        model.fc.bias.copy_(torch.tensor(bias))
    return model.eval(), ModelMeta("googlenet", len(classes), classes, width=0.125, input_size=64)


def test_box_accuracy_by_hand(tmp_path, capsys):
    torch.set_num_threads(1)
    root = make_shapes_dataset(tmp_path / "data", {"val": 4}, size=96, seed=1)
    data = load_dataset(root, "val")
    labels = torch.cat([r.labels for r in data.images]).tolist()
    count = {c: labels.count(k + 1) for k, c in enumerate(data.classes)}
    assert data.classes == ["disc", "square", "triangle"] and min(count.values()) > 0
    # A classifier that knows two of the classes by other spellings and always says "Disc".
    save_classifier(tmp_path / "clf", *_constant_model(["2_Square", "0_Disc", "other"], [0.0, 5.0, 1.0]))
    r = box_accuracy(tmp_path / "clf", data)
    assert r["boxes"] == count["disc"] + count["square"]  # triangles: a class it does not know
    assert abs(r["accuracy"] - count["disc"] / r["boxes"]) < 1e-9
    assert r["per_class"] == {"disc": 1.0, "square": 0.0}
    # Detector members that prefer background: background is left out, then the next-best wins.
    names = ["__background__", "disc", "square", "triangle"]
    members = [_constant_model(names, [9.0, 0.0, 1.0, 2.0]), _constant_model(names, [9.0, 3.0, 1.0, 2.0])]
    save_detector_run(tmp_path / "det", members, make_config(), data.classes)
    code, out, _ = run(capsys, "eval", "--box-accuracy", "--data", str(root), "--split", "val", "--device", "cpu",
                       "--model", str(tmp_path / "det"), "--json", str(tmp_path / "r.json"))
    assert code == 0, out
    results = json.loads((tmp_path / "r.json").read_text())
    assert [Path(k).name for k in results] == ["0", "1"] and len(out.strip().splitlines()) == 2
    first, second = results.values()
    assert first["boxes"] == len(labels) and abs(first["accuracy"] - count["triangle"] / len(labels)) < 1e-9
    assert abs(second["accuracy"] - count["disc"] / len(labels)) < 1e-9


def test_box_logits_of_both_modes_agree_on_a_whole_image_box():
    # At the member's scale a box whose dilation is the whole image is the same function in
    # both modes, at every split (the shared mode's geometry is exact there).
    torch.manual_seed(0)
    model = build_model("googlenet", 5, width=0.125, aux_logits=False).eval()
    with torch.no_grad():
        model.fc.weight.mul_(20.0)
        image = torch.randn(3, 64, 64)
        pad = 5  # 16 px of context at 224 is round(4.57) = 5 px at 64
        box = torch.tensor([[pad, pad, 64.0 - pad, 64.0 - pad]])
        warped = box_logits(model, 64, image, box, 16).softmax(1)
        for split in ("stem", "inception3b", "inception4e"):
            torch.testing.assert_close(box_logits(model, 64, image, box, 16, split), warped, atol=1e-5, rtol=0)


def test_box_accuracy_in_the_shared_mode(tmp_path, capsys):
    torch.set_num_threads(1)
    root = make_shapes_dataset(tmp_path / "data", {"val": 3}, size=96, seed=2)
    save_classifier(tmp_path / "clf", *_constant_model(["disc", "square", "triangle"], [0.0, 5.0, 1.0]))
    code, out, _ = run(capsys, "eval", "--box-accuracy", "--data", str(root), "--split", "val", "--device", "cpu",
                       "--model", str(tmp_path / "clf"), "--shared-split", "stem", "--json", str(tmp_path / "r.json"))
    assert code == 0, out
    results = json.loads((tmp_path / "r.json").read_text())
    plain, shared = results.values()
    assert list(results)[1].endswith(" @ stem") and shared == plain  # a constant model: same answers
    code, _, err = run(capsys, "eval", "--box-accuracy", "--data", str(root), "--split", "val",
                       "--model", str(tmp_path / "clf"), "--shared-split", "conv9")
    assert code != 0 and "--shared-split must be one of" in err and len(err.strip().splitlines()) == 1
