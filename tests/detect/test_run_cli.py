"""`detect run`: COCO results JSON with class names, a PNG per image, skipped files listed."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from detect.allocator import loaded_allocator
from detect.cli import main
from detect.detector import save_detector_run
from tiny_detector import CLASSES, make_config, tiny_member

# Small, quick proposals: one selective-search strategy on the image as it is, 20 boxes at most.
FAST_PROPOSALS = ["proposals.selective_search.mode=single", "proposals.selective_search.resize_width=0",
                  "proposals.selective_search.min_size=8", "proposals.min_size=8",
                  "proposals.selective_search.max_boxes=20"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("det")
    save_detector_run(root / "run", [tiny_member(0)], make_config(), CLASSES)
    return root / "run"


def scene(seed: int) -> np.ndarray:
    """Two flat high-contrast shapes on a noisy background (something for selective search)."""
    rng = np.random.default_rng(seed)
    img = rng.integers(90, 140, (72, 96, 3), dtype=np.uint8)
    img[10:40, 8:40] = (230, 30, 30)
    img[35:65, 55:90] = (20, 40, 220)
    return img


def test_run_writes_json_png_and_lists_skipped(run_dir, tmp_path, capsys):
    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.fromarray(scene(0)).save(folder / "a.png")
    Image.fromarray(scene(1)).save(folder / "b.jpg")
    (folder / "broken.jpg").write_bytes(b"not an image")
    (folder / "notes.txt").write_text("ignored: not an image suffix")
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_info:
        main(["run", "--images", str(folder), "--model", str(run_dir), "--out", str(out),
              "--device", "cpu", "--score-threshold", "0.01", "--display-threshold", "0", *FAST_PROPOSALS])
    assert exit_info.value.code == 1  # one image skipped, the others kept
    captured = capsys.readouterr()
    assert "broken.jpg" in captured.err and "2 image(s) done" in captured.out
    entries = json.loads((out / "detections.json").read_text())
    assert entries, "a random-init net is near uniform: every class scores above 0.01"
    assert {e["file_name"] for e in entries} == {"a", "b"}
    assert {e["category_name"] for e in entries} <= set(CLASSES)
    for e in entries:
        assert e["score"] >= 0.01 and e["bbox"][2] >= 0 and e["category_id"] in (1, 2, 3)
        assert e["category_name"] == CLASSES[e["category_id"] - 1]
    summary = json.loads((out / "run.json").read_text())
    assert [s["png"] for s in summary["images"]] == ["a.png", "b.png"]
    assert set(summary["images"][0]["seconds"]) == {"proposals", "crops", "network", "nms"}
    assert summary["skipped"][0]["file"].endswith("broken.jpg")
    assert summary["environment"] == {"allocator": loaded_allocator(), "torch_threads": torch.get_num_threads(),
                                      "torch": torch.__version__}
    drawn = np.asarray(Image.open(out / "a.png"))
    assert drawn.shape == (72, 96, 3) and (drawn != scene(0)).any()  # boxes were drawn on it


def test_run_single_image_ok_and_bad_model(run_dir, tmp_path, capsys):
    path = tmp_path / "one.png"
    Image.fromarray(scene(2)).save(path)
    main(["run", "--image", str(path), "--model", str(run_dir), "--out", str(tmp_path / "o"),
          "--device", "cpu", "inference.max_detections=3", *FAST_PROPOSALS])
    assert "one.png:" in capsys.readouterr().out
    assert len(json.loads((tmp_path / "o/detections.json").read_text())) <= 3
    with pytest.raises(SystemExit) as exit_info:
        main(["run", "--image", str(path), "--model", str(tmp_path), "--out", str(tmp_path / "o2")])
    assert exit_info.value.code == 2 and "not a detector run" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["run", "--model", str(run_dir)])
    assert exit_info.value.code == 2 and "no images" in capsys.readouterr().err


def test_one_image_goes_straight_through_and_matches_the_batch_path(run_dir, tmp_path, capsys):
    """`--image X` alone: no resume store, same detections.json, PNG and run.json images as X in a
    batch (here X twice, so that the batch path is taken)."""
    path = tmp_path / "one.png"
    Image.fromarray(scene(3)).save(path)
    args = ["--model", str(run_dir), "--device", "cpu", "--score-threshold", "0.01", *FAST_PROPOSALS]
    main(["run", "--image", str(path), "--out", str(tmp_path / "single"), *args])
    main(["run", "--image", str(path), "--image", str(path), "--out", str(tmp_path / "batch"), *args])
    single, batch = tmp_path / "single", tmp_path / "batch"
    assert not (single / ".per_image").exists() and (batch / ".per_image").is_dir()
    entries = json.loads((single / "detections.json").read_text())
    twice = json.loads((batch / "detections.json").read_text())
    assert entries and entries == [e for e in twice if e["image_id"] == 0]
    assert [e["file_name"] for e in twice if e["image_id"] == 1] == ["one_1"] * len(entries)
    first = json.loads((batch / "run.json").read_text())["images"][0]
    only = json.loads((single / "run.json").read_text())["images"]
    assert [{k: v for k, v in i.items() if k != "seconds"} for i in only] == [{k: v for k, v in first.items()
                                                                               if k != "seconds"}]
    assert np.array_equal(np.asarray(Image.open(single / "one.png")), np.asarray(Image.open(batch / "one.png")))
