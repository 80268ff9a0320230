"""`detect data` and `detect eval --map` through the CLI entry point (exit codes, files)."""
from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from cli_helpers import run
from detect.data import load_dataset, write_voc
from detect.results import write_detections


@pytest.fixture
def voc(tmp_path):
    """Two images of classes a/b with their JPEGs, and a classes.txt."""
    root = tmp_path / "voc"
    for key, boxes, labels in (("im0", [[10, 10, 60, 50], [70, 20, 90, 60]], [1, 2]),
                               ("im1", [[5, 5, 40, 30]], [1])):
        write_voc(root, key, (100, 80), torch.tensor(boxes, dtype=torch.float32), torch.tensor(labels), ["a", "b"])
        (root / "JPEGImages").mkdir(exist_ok=True)
        Image.new("RGB", (100, 80)).save(root / "JPEGImages" / f"{key}.jpg")
    (root / "classes.txt").write_text("a\nb\n")
    return root


def test_data_summary_and_problems(voc, capsys, tmp_path):
    code, out, _ = run(capsys, "data", "--data", str(voc), "--to-coco", str(tmp_path / "c.json"))
    assert code == 0 and "images 2" in out and "boxes 3" in out and "0 problem(s) found" in out
    assert json.loads((tmp_path / "c.json").read_text())["categories"][1]["name"] == "b"
    (voc / "JPEGImages" / "im1.jpg").unlink()
    (voc / "Annotations" / "im2.xml").write_text("<annotation><size>")  # malformed
    code, out, _ = run(capsys, "data", "--data", str(voc))
    assert code == 1 and "2 problem(s) found" in out
    assert "im2.xml: malformed XML" in out and "im1.jpg not found" in out


def test_eval_map_writes_json_and_plots(voc, capsys, tmp_path):
    ds = load_dataset(voc)
    dets = {0: {"boxes": torch.tensor([[10., 10, 60, 50], [0, 0, 5, 5]]), "scores": torch.tensor([.9, .8]),
                "labels": torch.tensor([1, 2])},
            1: {"boxes": torch.tensor([[5., 5, 40, 30]]), "scores": torch.tensor([.7]), "labels": torch.tensor([1])}}
    write_detections(tmp_path / "d.json", dets, ds)
    code, out, _ = run(capsys, "eval", "--map", "--data", str(voc), "--detections", str(tmp_path / "d.json"),
                       "--protocol", "voc07", "--json", str(tmp_path / "r.json"), "--plots", str(tmp_path / "pr"))
    assert code == 0 and "mAP (voc07" in out
    report = json.loads((tmp_path / "r.json").read_text())
    # a: both boxes found first -> AP 1; b: its only detection misses -> AP 0.
    assert report["per_class"] == {"a": 1.0, "b": 0.0} and report["mAP"] == 0.5
    assert sorted(p.name for p in (tmp_path / "pr").iterdir()) == ["pr_001_a.png", "pr_002_b.png"]


def test_eval_map_bad_detections_exit_2(voc, capsys, tmp_path):
    (tmp_path / "d.json").write_text(json.dumps([{"image_id": 9, "category_id": 1, "bbox": [0, 0, 1, 1],
                                                   "score": 0.5}]))
    code, out, err = run(capsys, "eval", "--map", "--data", str(voc), "--detections", str(tmp_path / "d.json"))
    assert code == 2 and "Traceback" not in err
    assert f"error: {tmp_path / 'd.json'}: entry 0: image_id 9 is not an image of the data set" in err
    (voc / "Annotations" / "im0.xml").write_text("<annotation>")
    code, _, err = run(capsys, "eval", "--map", "--data", str(voc), "--detections", str(tmp_path / "d.json"))
    assert code == 2 and "im0.xml: malformed XML" in err


def test_data_decode_finds_a_truncated_jpeg(voc, capsys):
    full = voc / "JPEGImages" / "im1.jpg"
    noise = (torch.rand(80, 100, 3) * 255).to(torch.uint8).numpy()  # noise: a long entropy-coded stream
    Image.fromarray(noise).save(full, quality=90)
    data = full.read_bytes()
    full.write_bytes(data[: len(data) // 2])  # the header is intact, half the scan data is gone
    code, out, _ = run(capsys, "data", "--data", str(voc))
    assert code == 0 and "0 problem(s) found" in out  # the header check alone passes it
    code, out, _ = run(capsys, "data", "--data", str(voc), "--decode", "--workers", "2")
    assert code == 1 and "1 problem(s) found" in out
    assert f"  {full}: cannot decode: image file is truncated" in out
    assert "im0.jpg" not in out


def test_data_decode_help_says_what_it_costs(capsys):
    code, out, _ = run(capsys, "data", "--help")
    assert code == 0 and "--decode" in out and "time of reading every image" in " ".join(out.split())
