"""The proposal cache: atomic per-image entries, resumable runs, bad images skipped, shards."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from proposal_scenes import rectangles_gt, rectangles_image
from torchvision.ops import box_iou

from backbone.errors import InputError
from proposals import ProposalCache, ProposalConfig, SelectiveSearchConfig, compute_proposals, read_cache


def _config(scale=2.0) -> ProposalConfig:
    return ProposalConfig(selective_search=SelectiveSearchConfig(mode="single", resize_width=0, min_size=5,
                                                                 superpixel_scale=scale))


def _images(folder, n=4, bad=()):
    """n small PNGs (key 'img/i'), the indices in `bad` written as garbage bytes."""
    folder.mkdir(parents=True, exist_ok=True)
    items = []
    for i in range(n):
        path = folder / f"{i}.png"
        if i in bad:
            path.write_bytes(b"not an image")
        else:
            Image.fromarray(rectangles_image()[:, i * 5:]).save(path)
        items.append((f"img/{i}", path))
    return items


def test_put_get_round_trip(tmp_path):
    cache = ProposalCache(tmp_path / "c")
    boxes = torch.tensor([[1.5, 2, 30, 40], [0, 0, 10, 10]])
    cache.put("train/n01/a b%.jpg", boxes, torch.tensor([0, 1]))
    cache.put("empty", torch.zeros((0, 4)), torch.zeros(0))
    got_boxes, got_sources = cache.get("train/n01/a b%.jpg")
    assert torch.equal(got_boxes, boxes) and got_sources.tolist() == [0, 1] and got_sources.dtype == torch.uint8
    assert cache.get("empty")[0].shape == (0, 4)
    assert cache.get("missing") is None and "missing" not in cache and "empty" in cache
    assert cache.keys() == ["empty", "train/n01/a b%.jpg"]
    assert not [p for p in cache.entries.iterdir() if p.name.endswith(".tmp")]
    with pytest.raises(ValueError):
        cache.put("x", boxes, torch.tensor([0]))


def test_broken_entry_is_an_input_error(tmp_path):
    cache = ProposalCache(tmp_path)
    cache.put("a", torch.zeros((1, 4)), torch.zeros(1))
    cache.path("a").write_bytes(b"\x00garbage")
    with pytest.raises(InputError, match="a.safetensors"):
        cache.get("a")


def test_compute_skips_bad_images_and_resumes(tmp_path):
    items = _images(tmp_path / "images", n=4, bad=(2,))
    out = tmp_path / "cache"
    # An interrupted earlier run: one entry finished, one temporary file left half-written.
    first = compute_proposals(items[:1], _config(), out, workers=1, progress=False)
    assert first["done"] == 1 and first["skipped"] == []
    (out / "boxes" / ".img%2F1.safetensors.123.tmp").write_bytes(b"half")
    mtime = os.stat(ProposalCache(out).path("img/0")).st_mtime_ns

    summary = compute_proposals(items, _config(), out, workers=1, progress=False)
    assert summary["total"] == 4 and summary["cached"] == 1 and summary["done"] == 2
    assert [s["key"] for s in summary["skipped"]] == ["img/2"]
    assert "cannot read image" in summary["skipped"][0]["problem"]
    cache = ProposalCache(out)
    assert cache.keys() == ["img/0", "img/1", "img/3"]
    assert os.stat(cache.path("img/0")).st_mtime_ns == mtime  # not recomputed
    boxes, sources = cache.get("img/0")
    assert (box_iou(rectangles_gt(), boxes).max(1).values >= 0.7).all() and (sources == 0).all()
    assert (out / "config.yaml").is_file() and (out / "summary.json").is_file()

    again = compute_proposals(items, _config(), out, workers=1, progress=False)
    assert again["done"] == 0 and again["cached"] == 3 and len(again["skipped"]) == 1


def test_a_different_config_is_refused(tmp_path):
    items = _images(tmp_path / "images", n=1)
    compute_proposals(items, _config(2.0), tmp_path / "c", workers=1, progress=False)
    with pytest.raises(InputError, match="different proposal config"):
        compute_proposals(items, _config(1.0), tmp_path / "c", workers=1, progress=False)


def test_worker_processes_match_one_process(tmp_path):
    items = _images(tmp_path / "images", n=4)
    compute_proposals(items, _config(), tmp_path / "one", workers=1, progress=False)
    summary = compute_proposals(items, _config(), tmp_path / "two", workers=2, progress=False)
    assert summary["done"] == 4 and summary["workers"] == 2
    found_one, _ = read_cache(tmp_path / "one", [k for k, _ in items])
    found_two, missing = read_cache(tmp_path / "two", [k for k, _ in items] + ["nope"])
    assert missing == ["nope"] and len(found_two) == 4
    for (k1, b1, s1), (k2, b2, s2) in zip(found_one, found_two):
        assert k1 == k2 and torch.equal(b1, b2) and torch.equal(s1, s2)


def test_workers_do_not_hang_after_opencv_ran_in_the_parent(tmp_path):
    """A forked worker inherits OpenCV's thread pool; a busy pool used to hang the worker."""
    items = _images(tmp_path / "images", n=2)
    script = (
        "import sys, numpy as np\n"
        "from proposals import ProposalConfig, SelectiveSearchConfig, compute_proposals, selective_search\n"
        "selective_search(np.random.default_rng(0).integers(0, 255, (200, 300, 3), dtype=np.uint8))\n"
        "cfg = ProposalConfig(selective_search=SelectiveSearchConfig(mode='single', resize_width=0))\n"
        f"items = {[(k, str(p)) for k, p in items]!r}\n"
        "print(compute_proposals(items, cfg, sys.argv[1], workers=2, progress=False)['done'])\n")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    result = subprocess.run([sys.executable, "-c", script, str(tmp_path / "c")], env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.split() == ["2"], result.stderr


def test_shards_cover_everything_once(tmp_path):
    items = _images(tmp_path / "images", n=5)
    a = compute_proposals(items, _config(), tmp_path / "c", workers=1, shard=(0, 2), progress=False)
    b = compute_proposals(items, _config(), tmp_path / "c", workers=1, shard=(1, 2), progress=False)
    assert (a["done"], b["done"]) == (3, 2)
    assert ProposalCache(tmp_path / "c").keys() == [f"img/{i}" for i in range(5)]
    assert (tmp_path / "c" / "summary-1-of-2.json").is_file()
    with pytest.raises(InputError, match="shard"):
        compute_proposals(items, _config(), tmp_path / "c", shard=(2, 2), progress=False)
