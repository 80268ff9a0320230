"""`detect run --images` killed with SIGKILL part-way and started again continues where it
stopped, and ends with exactly the results of an uninterrupted run; proposals computed ahead
in worker processes give the sequential path's detections.

The killed run is a real `detect` subprocess (with one proposal worker); the reference run is
inline (--proposal-workers 0), so the comparison also checks the overlap against the
sequential path.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from detect.cli import main
from detect.data import DetectionDataset, ImageRecord
from detect.dataset_detections import detect_dataset
from detect.detector import Detector, save_detector_run
from tiny_detector import CLASSES, make_config, tiny_member

ROOT = Path(__file__).resolve().parents[2]
N_IMAGES = 10
# One selective-search strategy at the image's own size, so that an image takes a fraction of a
# second; a 160 x 120 scene still gives tens of proposals.
PROPOSALS = ["proposals.selective_search.mode=single", "proposals.selective_search.resize_width=0",
             "proposals.selective_search.min_size=8", "proposals.min_size=8",
             "proposals.selective_search.max_boxes=40"]


def scene(seed: int) -> np.ndarray:
    """Noisy background with three flat shapes at seeded places: [120, 160, 3] uint8."""
    rng = np.random.default_rng(seed)
    img = rng.integers(80, 150, (120, 160, 3), dtype=np.uint8)
    for colour in ((230, 30, 30), (20, 40, 220), (240, 220, 20)):
        x, y = rng.integers(0, 110), rng.integers(0, 75)
        img[y:y + 40, x:x + 45] = colour
    return img


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    save_detector_run(root / "run", [tiny_member(0, spread=5.0)], make_config(), CLASSES)
    (root / "imgs").mkdir()
    for i in range(N_IMAGES):
        Image.fromarray(scene(i)).save(root / "imgs" / f"img{i:02d}.png")
    (root / "imgs" / "broken.jpg").write_bytes(b"not an image")  # skipped in every run
    return root


def run_args(root: Path, out: Path, *extra: object) -> list[str]:
    return [str(a) for a in ["run", "--images", root / "imgs", "--model", root / "run", "--out", out,
                             "--device", "cpu", "--score-threshold", "0.05", *extra, *PROPOSALS]]


def cli(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 1  # broken.jpg skipped, the others done


def finished(out: Path) -> list[Path]:
    return sorted(p for p in (out / ".per_image").glob("*.json") if p.name != "fingerprint.json")


def results(out: Path) -> tuple[list, list]:
    """detections.json and run.json's images without their timings."""
    dets = json.loads((out / "detections.json").read_text())
    run = json.loads((out / "run.json").read_text())
    return dets, [{k: v for k, v in img.items() if k != "seconds"} for img in run["images"]]


def kill_part_way(argv: list[str], out: Path) -> int:
    """Start `detect ARGV` in its own process group; SIGKILL the group (the run and its proposal
    workers) once 2 images are finished. Returns how many were finished then."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", "from detect.cli import main; main()", *argv],
                            env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while (out / ".per_image").is_dir() is False or len(finished(out)) < 2:
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "the run never finished an image"
            time.sleep(0.02)
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    return len(finished(out))


@pytest.fixture
def one_thread():
    """Every run here scores on one thread (`--threads 1`, which the in-process runs set for this
    process: restored afterwards), so that the float sums (and so the scores) are bit for bit
    comparable."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # not 1: so that `--threads 1` is what sets it
    yield
    torch.set_num_threads(threads)


def test_killed_run_continues_and_matches_an_uninterrupted_run(setup, tmp_path, capsys, one_thread):
    reference = tmp_path / "reference"
    cli(run_args(setup, reference, "--proposal-workers", 0, "--threads", 1))
    assert torch.get_num_threads() == 1
    out = tmp_path / "killed"
    argv = run_args(setup, out, "--proposal-workers", 1, "--threads", 1)
    done_at_kill = kill_part_way(argv, out)
    assert 2 <= done_at_kill < N_IMAGES, f"killed too late to test resuming ({done_at_kill} done)"
    assert not (out / "run.json").exists()  # killed before the end: no summary yet
    kept = {p.name: p.stat().st_mtime_ns for p in finished(out)}
    capsys.readouterr()
    cli(argv)
    assert f"{done_at_kill} of {N_IMAGES + 1} images already done" in capsys.readouterr().out
    assert {p.name: p.stat().st_mtime_ns for p in finished(out) if p.name in kept} == kept  # not redone
    assert len(finished(out)) == N_IMAGES
    dets, images = results(out)
    assert len(images) == N_IMAGES and dets  # a peaked random net still scores some regions >= 0.05
    ref_dets, ref_images = results(reference)
    assert images == ref_images
    assert [d["score"] for d in dets] == [d["score"] for d in ref_dets]
    assert dets == ref_dets
    summary = json.loads((out / "run.json").read_text())
    assert [s["file"] for s in summary["skipped"]] == [str(setup / "imgs" / "broken.jpg")]


def test_rerun_with_another_config_starts_over(setup, tmp_path, capsys):
    imgs = tmp_path / "few"
    imgs.mkdir()
    for name in ("img00.png", "img01.png"):
        (imgs / name).write_bytes((setup / "imgs" / name).read_bytes())
    argv = lambda out, threshold: [str(a) for a in [  # noqa: E731
        "run", "--images", imgs, "--model", setup / "run", "--out", out, "--device", "cpu",
        "--score-threshold", threshold, "--proposal-workers", 0, *PROPOSALS]]
    main(argv(tmp_path / "out", 0.05))
    capsys.readouterr()
    main(argv(tmp_path / "out", 0.2))  # another config: the old per-image results are dropped
    assert "starting over" in capsys.readouterr().out
    main(argv(tmp_path / "fresh", 0.2))
    assert results(tmp_path / "out") == results(tmp_path / "fresh")
    dets, _ = results(tmp_path / "out")
    assert all(d["score"] >= 0.2 for d in dets)


def test_detect_dataset_with_proposal_workers_equals_inline(setup):
    detector = Detector.load(setup / "run", "cpu", PROPOSALS, score_threshold=0.05)
    paths = sorted((setup / "imgs").glob("*.png"))[:4]
    records = [ImageRecord(i, p.stem, p, 160, 120, torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64),
                           torch.zeros(0, dtype=torch.bool)) for i, p in enumerate(paths)]
    dataset = DetectionDataset(CLASSES, records, setup, [1, 2, 3])
    inline = detect_dataset(detector, dataset, progress=False, proposal_workers=0)
    ahead = detect_dataset(detector, dataset, progress=False, proposal_workers=2)
    assert inline.keys() == ahead.keys() == {0, 1, 2, 3}
    assert sum(len(d["scores"]) for d in inline.values()) > 0
    for i in inline:
        for k in ("boxes", "scores", "labels"):
            assert torch.equal(inline[i][k], ahead[i][k]), (i, k)
