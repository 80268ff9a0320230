"""Splitting `detect run --images` and `detect proposals` over shards: the merged result of 2
shards is the result of 1 run (same detections, same image ids, same order, same skipped list;
the same proposal cache entries)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from backbone.errors import InputError
from backbone.io import load_weights
from backbone.models import ModelMeta, build_model
from detect.cli import main
from detect.config import DetectorConfig
from detect.data import write_voc
from detect.detector import save_detector_run
from detect.sharding import join_results, merge_shards, parse_shard, resolve_shard

FAST = ["selective_search.mode=single", "selective_search.resize_width=0", "selective_search.min_size=4",
        "min_size=4", "selective_search.max_boxes=10"]


def invoke(capsys, *argv) -> tuple[int, str, str]:
    try:
        main([str(a) for a in argv])
        code = 0
    except SystemExit as e:
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err


def scene(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = rng.integers(90, 140, (40, 56, 3), dtype=np.uint8)
    img[4:20, 3 + seed:20 + seed] = (230, 30, 30)
    img[20:36, 30:50] = (20, 40, 220)
    return img


@pytest.fixture
def images(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(5):
        Image.fromarray(scene(i)).save(folder / f"{i}.png")
    (folder / "3_broken.jpg").write_bytes(b"not an image")
    return folder


def test_parse_shard_and_torchrun_share(monkeypatch):
    assert parse_shard("1/3") == (1, 3)
    for bad in ("3/3", "-1/2", "a/b", "1"):
        with pytest.raises(InputError, match="--shard"):
            parse_shard(bad)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert resolve_shard(None) is None
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "2")
    assert resolve_shard(None) == (2, 4) and resolve_shard("0/2") == (0, 2)


def test_join_results_orders_by_image_id_and_maps_ids(tmp_path):
    def entry(image_id, score):
        return {"image_id": image_id, "category_id": 1, "bbox": [0, 0, 1, 1], "score": score}

    (tmp_path / "a.json").write_text(json.dumps([entry(0, 0.9), entry(2, 0.8), entry(0, 0.7)]))
    (tmp_path / "b.json").write_text(json.dumps([entry(1, 0.6)]))
    files = [tmp_path / "a.json", tmp_path / "b.json"]
    # ids kept: sorted by image id, an image's entries in their order
    assert [(e["image_id"], e["score"]) for e in join_results(files)] == [(0, 0.9), (0, 0.7), (1, 0.6), (2, 0.8)]
    # shard a's ids 0, 2 are images 3, 4 of the whole list; shard b's id 1 is image 0
    mapped = join_results(files, [{0: 3, 2: 4}, {1: 0}])
    assert [(e["image_id"], e["score"]) for e in mapped] == [(0, 0.6), (3, 0.9), (3, 0.7), (4, 0.8)]
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(InputError, match="JSON list"):
        join_results([tmp_path / "bad.json"])


def test_two_shards_of_detect_run_merge_into_one_run(images, tmp_path, capsys):
    torch.manual_seed(0)
    member = build_model("googlenet", 3, width=0.125, aux_logits=False, dropout=0.0).eval()
    cfg = DetectorConfig()
    cfg.inference.precision = "float32"
    save_detector_run(tmp_path / "det", [(member, ModelMeta("googlenet", 3, ["bg", "a", "b"], 0.125, 32))],
                      cfg, ["a", "b"])
    args = ["run", "--images", images, "--model", tmp_path / "det", "--device", "cpu",
            "--score-threshold", "0.05", *[f"proposals.{o}" for o in FAST]]
    assert invoke(capsys, *args, "--out", tmp_path / "one")[0] == 1  # the broken image is skipped
    for i in range(2):
        assert invoke(capsys, *args, "--out", tmp_path / "two", "--shard", f"{i}/2")[0] == 1 - i
        if i == 0:  # one shard only: refuse to merge
            code, _, err = invoke(capsys, "merge-results", tmp_path / "two")
            assert code == 2 and "shards [1] of 2" in err
    code, out, _ = invoke(capsys, "merge-results", tmp_path / "two")
    assert code == 0 and "merged 2 shards: 5 image(s), 1 skipped" in out

    one = json.loads((tmp_path / "one" / "detections.json").read_text())
    two = json.loads((tmp_path / "two" / "detections.json").read_text())
    assert one and one == two  # same entries, image ids and order
    run1 = json.loads((tmp_path / "one" / "run.json").read_text())
    run2 = json.loads((tmp_path / "two" / "run.json").read_text())
    drop = ("seconds", "png")
    assert [{k: v for k, v in r.items() if k not in drop} for r in run1["images"]] \
        == [{k: v for k, v in r.items() if k not in drop} for r in run2["images"]]
    assert run1["skipped"] == run2["skipped"] and run1["skipped"][0]["file"].endswith("3_broken.jpg")
    assert all((tmp_path / "two" / r["png"]).is_file() for r in run2["images"])
    with pytest.raises(InputError, match="shard-I-of-N"):
        merge_shards(tmp_path / "one")


def test_proposals_shards_under_torchrun_fill_one_cache(tmp_path, monkeypatch, capsys):
    voc = tmp_path / "voc"
    (voc / "JPEGImages").mkdir(parents=True)
    for i in range(4):
        Image.fromarray(scene(i)).save(voc / "JPEGImages" / f"{i}.jpg", quality=95)
        write_voc(voc, str(i), (56, 40), torch.tensor([[3.0, 4.0, 20.0, 20.0]]), torch.tensor([1]), ["x"])
    args = ["proposals", "--data", voc, "--workers", "1", "--quiet", *FAST]
    assert invoke(capsys, *args, "--out", tmp_path / "one")[0] == 0
    for rank in (1, 0):  # what each rank does under `torchrun --nproc_per_node 2`
        monkeypatch.setenv("WORLD_SIZE", "2")
        monkeypatch.setenv("RANK", str(rank))
        code, out, _ = invoke(capsys, *args, "--out", tmp_path / "two")
        assert code == 0 and "2 image(s) computed" in out
    monkeypatch.delenv("WORLD_SIZE")
    names = sorted(p.name for p in (tmp_path / "one" / "boxes").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "two" / "boxes").iterdir()) and len(names) == 4
    for name in names:
        a, b = load_weights(tmp_path / "one" / "boxes" / name), load_weights(tmp_path / "two" / "boxes" / name)
        assert torch.equal(a["boxes"], b["boxes"]) and torch.equal(a["sources"], b["sources"])
    assert (tmp_path / "two" / "summary-0-of-2.json").is_file()


def _run_rank(rank: int, port: int, argv: list) -> None:
    import os

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2",
                      LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE="2")
    torch.set_num_threads(1)
    try:
        main(argv)
    except SystemExit as e:
        assert e.code in (0, None), e.code


def test_detect_run_under_two_gloo_ranks_merges_on_rank_0(tmp_path, capsys):
    import socket

    import torch.multiprocessing as mp

    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(scene(i)).save(folder / f"{i}.png")
    torch.manual_seed(0)
    member = build_model("googlenet", 2, width=0.125, aux_logits=False, dropout=0.0).eval()
    cfg = DetectorConfig()
    cfg.inference.precision = "float32"
    save_detector_run(tmp_path / "det", [(member, ModelMeta("googlenet", 2, ["bg", "a"], 0.125, 32))], cfg, ["a"])
    argv = [str(a) for a in ["run", "--images", folder, "--model", tmp_path / "det", "--device", "cpu",
                             "--score-threshold", "0.05", *[f"proposals.{o}" for o in FAST]]]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each rank: float32 sums in the same order
    try:
        assert invoke(capsys, *argv, "--out", tmp_path / "one")[0] == 0
    finally:
        torch.set_num_threads(threads)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.start_processes(_run_rank, args=(port, [*argv, "--out", str(tmp_path / "two")]), nprocs=2,
                       join=True, start_method="fork")
    assert (tmp_path / "two" / "shard-1-of-2" / "run.json").is_file()
    one = json.loads((tmp_path / "one" / "detections.json").read_text())
    assert one and one == json.loads((tmp_path / "two" / "detections.json").read_text())
