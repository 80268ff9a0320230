"""`detect proposals` and `detect eval --recall` through the CLI entry point."""
from __future__ import annotations

import json

import pytest
import torch
from PIL import Image
from proposal_scenes import RECTS, rectangles_image

from cli_helpers import run
from detect.data import write_voc


@pytest.fixture
def voc(tmp_path):
    """Three images of the three rectangles (one a corrupt JPEG), as a VOC folder."""
    root = tmp_path / "voc"
    boxes = torch.tensor(RECTS, dtype=torch.float32)
    for key in ("a", "b", "bad"):
        write_voc(root, key, (160, 120), boxes, torch.tensor([1, 1, 1]), ["box"])
        (root / "JPEGImages").mkdir(exist_ok=True)
        Image.fromarray(rectangles_image()).save(root / "JPEGImages" / f"{key}.jpg", quality=95)
    (root / "JPEGImages" / "bad.jpg").write_bytes(b"\xff\xd8 truncated")
    (root / "classes.txt").write_text("box\n")
    return root


def test_proposals_then_recall(voc, tmp_path, capsys):
    cache = tmp_path / "cache"
    args = ["proposals", "--data", str(voc), "--out", str(cache), "--workers", "1", "--quiet",
            "selective_search.resize_width=0", "selective_search.min_size=5", "min_size=5"]
    code, out, err = run(capsys, *args)
    assert code == 1 and "2 image(s) computed" in out and "1 skipped" in out and "bad.jpg" in err
    assert "resize_width: 0" in (cache / "config.yaml").read_text()
    code, out, _ = run(capsys, *args)  # rerun: nothing recomputed, the bad image reported again
    assert code == 1 and "0 image(s) computed, 2 already cached" in out

    code, out, _ = run(capsys, "eval", "--recall", "--data", str(voc), "--proposals", str(cache),
                       "--json", str(tmp_path / "r.json"))
    assert code == 0 and "1 images without a cache entry" in out
    result = json.loads((tmp_path / "r.json").read_text())
    assert set(result["sources"]) == {"selective_search", "merged"} and result["missing"] == ["bad"]
    merged = result["sources"]["merged"]
    assert merged["gt_boxes"] == 6 and merged["recall@0.7"] == 1.0 and merged["boxes_per_image"] > 3


def test_bad_arguments(voc, tmp_path, capsys):
    code, _, err = run(capsys, "proposals", "--data", str(voc), "--out", str(tmp_path / "c"), "--shard", "2/2")
    assert code == 2 and "--shard" in err
    code, _, err = run(capsys, "proposals", "--data", str(voc), "--out", str(tmp_path / "c"), "selective_search.k=3")
    assert code == 2 and "unknown key 'selective_search.k'" in err
    code, _, err = run(capsys, "eval", "--recall", "--data", str(voc), "--proposals", str(tmp_path))
    assert code == 2 and "not a proposal cache" in err
