"""Detection data formats: VOC/ILSVRC XML and COCO JSON round trips, results JSON, bad input."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from backbone.errors import InputError
from detect.data import load_dataset, read_class_list, write_coco, write_voc
from detect.data_report import find_problems, format_summary, summarize
from detect.results import read_detections, write_detections

CLASSES = ["cat", "dog", "person"]


def make_voc(root: Path, with_images: bool = True, classes_txt: bool = True) -> Path:
    """Three images: 000001 (cat, difficult dog), 000002 (person), 000003 (no objects)."""
    specs = {"000001": ([[10, 20, 50, 60], [0, 0, 100, 80]], [1, 2], [False, True]),
             "000002": ([[5, 5, 95, 75]], [3], [False]),
             "000003": ([], [], [])}
    for key, (boxes, labels, diff) in specs.items():
        write_voc(root, key, (100, 80), torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                  torch.tensor(labels, dtype=torch.int64), CLASSES, torch.tensor(diff, dtype=torch.bool))
        if with_images:
            (root / "JPEGImages").mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (100, 80)).save(root / "JPEGImages" / f"{key}.jpg")
    if classes_txt:
        (root / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    (root / "ImageSets" / "Main").mkdir(parents=True, exist_ok=True)
    (root / "ImageSets" / "Main" / "val.txt").write_text("000002\n000001\n")
    return root


def test_voc_round_trip(tmp_path):
    make_voc(tmp_path)
    ds = load_dataset(tmp_path)
    assert ds.classes == CLASSES and ds.category_ids == [1, 2, 3] and not ds.fixups
    assert [r.key for r in ds.images] == ["000001", "000002", "000003"]
    assert [r.image_id for r in ds.images] == [0, 1, 2]
    r = ds.images[0]
    assert r.path == (tmp_path / "JPEGImages" / "000001.jpg").resolve() and (r.width, r.height) == (100, 80)
    assert r.boxes.dtype == torch.float32 and r.boxes.tolist() == [[10, 20, 50, 60], [0, 0, 100, 80]]
    assert r.labels.tolist() == [1, 2] and r.difficult.tolist() == [False, True]
    assert ds.images[2].boxes.shape == (0, 4) and ds.images[2].labels.dtype == torch.int64
    # The XML holds the names and whole-pixel coordinates as they stand.
    text = (tmp_path / "Annotations" / "000001.xml").read_text()
    assert "<name>dog</name>" in text and "<xmax>100</xmax>" in text and "<difficult>1</difficult>" in text
    # A split list picks and orders the images.
    assert [r.key for r in load_dataset(tmp_path, split="val").images] == ["000002", "000001"]


def test_voc_class_order(tmp_path):
    make_voc(tmp_path, classes_txt=False)
    assert load_dataset(tmp_path).classes == ["cat", "dog", "person"]  # sorted names found
    (tmp_path / "mine.txt").write_text("person\ndog\ncat\nbird\n")
    ds = load_dataset(tmp_path, class_list=tmp_path / "mine.txt")
    assert ds.classes == ["person", "dog", "cat", "bird"] and ds.images[0].labels.tolist() == [3, 2]


def test_ilsvrc_synsets_through_class_list(tmp_path):
    write_voc(tmp_path, "ILSVRC2013_val_00000001", (60, 40), torch.tensor([[1., 2., 30., 20.]]),
              torch.tensor([2]), ["n01443537", "n02084071"], filename="ILSVRC2013_val_00000001")
    (tmp_path / "map_det.txt").write_text("# ILSVRC style\nn01443537 1 goldfish\nn02084071 2 dog\n")
    assert read_class_list(tmp_path / "map_det.txt") == (["n01443537", "n02084071"], ["goldfish", "dog"])
    (tmp_path / "Data").mkdir()
    Image.new("RGB", (60, 40)).save(tmp_path / "Data" / "ILSVRC2013_val_00000001.JPEG")
    ds = load_dataset(tmp_path, class_list=tmp_path / "map_det.txt")
    assert ds.classes == ["goldfish", "dog"] and ds.images[0].labels.tolist() == [2]
    assert ds.images[0].path.name == "ILSVRC2013_val_00000001.JPEG"  # extension found on disk


def test_coco_round_trip(tmp_path):
    voc = load_dataset(make_voc(tmp_path / "voc"))
    write_coco(tmp_path / "voc" / "instances.json", voc)
    doc = json.loads((tmp_path / "voc" / "instances.json").read_text())
    assert doc["images"][0]["file_name"] == "JPEGImages/000001.jpg"
    assert doc["annotations"][0] == {"id": 1, "image_id": 0, "category_id": 1, "bbox": [10, 20, 40, 40],
                                     "area": 1600, "iscrowd": 0}
    coco = load_dataset(tmp_path / "voc" / "instances.json")
    assert coco.classes == voc.classes and coco.category_ids == [1, 2, 3]
    for a, b in zip(voc.images, coco.images):
        assert torch.equal(a.boxes, b.boxes) and torch.equal(a.labels, b.labels)
        assert torch.equal(a.difficult, b.difficult) and a.path == b.path
    # Written again from the COCO set, the names stay as they were.
    write_coco(tmp_path / "voc" / "again.json", coco)
    again = json.loads((tmp_path / "voc" / "again.json").read_text())
    assert again["images"] == doc["images"] and again["annotations"] == doc["annotations"]


def test_coco_folder_and_images_folder(tmp_path):
    cats = [{"id": 7, "name": "b"}, {"id": 2, "name": "a"}]
    doc = {"images": [{"id": 5, "file_name": "x.png", "width": 20, "height": 10}],
           "annotations": [{"id": 1, "image_id": 5, "category_id": 7, "bbox": [1, 2, 3, 4], "iscrowd": 1}],
           "categories": cats}
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "instances_val.json").write_text(json.dumps(doc))
    (tmp_path / "images").mkdir()
    Image.new("RGB", (20, 10)).save(tmp_path / "images" / "x.png")
    ds = load_dataset(tmp_path)
    assert ds.classes == ["a", "b"] and ds.category_ids == [2, 7]  # sorted by category id
    rec = ds.images[0]
    assert rec.image_id == 5 and rec.key == "x.png" and rec.path == (tmp_path / "images" / "x.png").resolve()
    assert rec.boxes.tolist() == [[1, 2, 4, 6]] and rec.labels.tolist() == [2] and rec.difficult.tolist() == [True]
    (tmp_path / "annotations" / "instances_train.json").write_text(json.dumps(doc))
    with pytest.raises(InputError, match="found 2 COCO .json files"):
        load_dataset(tmp_path)
    assert load_dataset(tmp_path, split="val").images[0].key == "x.png"


def test_detections_round_trip(tmp_path):
    ds = load_dataset(make_voc(tmp_path))
    dets = {0: {"boxes": torch.tensor([[10.1, 20.3, 50.7, 60.9], [1 / 3, 0, 99.9, 79.5]]),
                "scores": torch.tensor([0.9, 1 / 7]), "labels": torch.tensor([1, 2])},
            2: {"boxes": torch.tensor([[0.5, 0.5, 3.25, 7.0]]), "scores": torch.tensor([0.3]),
                "labels": torch.tensor([3])}}
    write_detections(tmp_path / "d.json", dets, ds)
    entries = json.loads((tmp_path / "d.json").read_text())
    assert entries[0]["category_name"] == "cat" and entries[0]["file_name"] == "000001"
    assert entries[2]["image_id"] == 2 and entries[2]["bbox"] == [0.5, 0.5, 2.75, 6.5]
    back = read_detections(tmp_path / "d.json", ds)
    assert set(back) == {0, 1, 2} and len(back[1]["scores"]) == 0
    for i in (0, 2):
        for k in ("boxes", "scores", "labels"):
            assert torch.equal(back[i][k], dets[i][k]), (i, k)  # bit-exact float32


def test_summary_and_problems(tmp_path):
    make_voc(tmp_path)
    ds = load_dataset(tmp_path)
    s = summarize(ds)
    assert (s["images"], s["boxes"], s["difficult_or_crowd"], s["images_without_boxes"]) == (3, 3, 1, 1)
    assert s["per_class"]["dog"] == {"boxes": 1, "images": 1}
    assert sum(s["box_size_buckets"].values()) == 3 and s["box_side_percentiles"][100] == pytest.approx(89.4, abs=0.1)
    assert "person" in format_summary(s)
    assert find_problems(ds) == []
    (tmp_path / "JPEGImages" / "000002.jpg").unlink()
    Image.new("RGB", (10, 10)).save(tmp_path / "JPEGImages" / "000003.jpg")
    problems = find_problems(ds)
    assert len(problems) == 2 and "000002.jpg not found" in problems[0] and "10x10" in problems[1]


# ----------------------------------------------------------------------------- bad input


def _xml(tmp_path: Path, key: str, body: str) -> Path:
    path = tmp_path / "Annotations" / f"{key}.xml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"<annotation><filename>{key}.jpg</filename><size><width>100</width>"
                    f"<height>80</height></size>{body}</annotation>")
    return path


def _obj(name: str, box: tuple) -> str:
    x1, y1, x2, y2 = box
    return (f"<object><name>{name}</name><difficult>0</difficult><bndbox><xmin>{x1}</xmin><ymin>{y1}</ymin>"
            f"<xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object>")


@pytest.mark.parametrize("body, message", [
    ("<object><name>cat</name>", "malformed XML"),
    (_obj("cat", (10, 10, 5, 20)), "x2 < x1"),
    (_obj("cat", (10, 10, 50, 90)), "10 px outside the 100x80 image"),
    (_obj("cat", (10, 10, "abc", 20)), "not a number"),
    (_obj("zebra", (10, 10, 50, 20)), "unknown class name 'zebra'"),
])
def test_bad_xml_names_the_file(tmp_path, body, message):
    (tmp_path / "classes.txt").write_text("cat\ndog\n")
    path = _xml(tmp_path, "bad", body)
    with pytest.raises(InputError, match=message) as e:
        load_dataset(tmp_path)
    assert str(path) in str(e.value)
    errors = []  # lenient mode: skipped and reported
    assert load_dataset(tmp_path, errors=errors).images == [] and message.split()[0] in errors[0]


def test_box_a_pixel_outside_is_clipped_and_counted(tmp_path):
    _xml(tmp_path, "a", _obj("cat", (-1, 0, 101, 80)))
    ds = load_dataset(tmp_path)
    assert ds.images[0].boxes.tolist() == [[0, 0, 100, 80]]
    assert len(ds.fixups) == 1 and "clipped" in ds.fixups[0] and summarize(ds)["fixups"] == 1


def test_bad_coco_and_detections(tmp_path):
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(InputError, match="malformed JSON"):
        load_dataset(tmp_path / "bad.json")
    doc = {"images": [{"id": 1, "file_name": "a.jpg", "width": 10, "height": 10}],
           "annotations": [{"id": 1, "image_id": 1, "category_id": 9, "bbox": [0, 0, 5, 5]}],
           "categories": [{"id": 1, "name": "a"}]}
    (tmp_path / "c.json").write_text(json.dumps(doc))
    with pytest.raises(InputError, match=r"c.json: annotation 0 \(id 1\): unknown category_id 9"):
        load_dataset(tmp_path / "c.json")
    doc["annotations"][0].update(category_id=1, bbox=[0, 0, 50, 5])
    (tmp_path / "c.json").write_text(json.dumps(doc))
    with pytest.raises(InputError, match="outside the 10x10 image"):
        load_dataset(tmp_path / "c.json")
    doc["annotations"][0]["bbox"] = [0, 0, 5, 5]
    (tmp_path / "c.json").write_text(json.dumps(doc))
    ds = load_dataset(tmp_path / "c.json")
    for entry, message in [({"image_id": 2, "category_id": 1, "bbox": [0, 0, 1, 1], "score": .5}, "image_id 2"),
                           ({"image_id": 1, "category_id": 4, "bbox": [0, 0, 1, 1], "score": .5}, "category_id 4"),
                           ({"image_id": 1, "category_name": "zz", "bbox": [0, 0, 1, 1], "score": .5}, "'zz'"),
                           ({"image_id": 1, "category_id": 1, "bbox": [0, 0, -1, 1], "score": .5}, "w, h >= 0"),
                           ({"image_id": 1, "category_id": 1, "bbox": [0, 0, 1, 1]}, "'score'"),
                           ({"image_id": 1, "category_id": 1, "bbox": [0, 0, 1, 1], "score": .5,
                             "file_name": "other.jpg"}, "another data set")]:
        (tmp_path / "d.json").write_text(json.dumps([entry]))
        with pytest.raises(InputError, match=message) as e:
            read_detections(tmp_path / "d.json", ds)
        assert str(tmp_path / "d.json") in str(e.value) and "entry 0" in str(e.value)
