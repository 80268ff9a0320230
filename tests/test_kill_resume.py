"""A training command killed with SIGKILL at a random moment, then run again with --resume,
ends with exactly the weights of a run that was never interrupted (CPU, fixed seed).

The killed run is a real `detect` subprocess; it is killed a random delay after its first
checkpoint appears (the delay is printed, so a failure can be replayed). The uninterrupted run
and the resumed run go through the same entry point in this process, on one thread.
"""
from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from backbone.checkpoint import load_checkpoint
from backbone.io import load_weights
from detect.cli import main
from detect.data import write_voc

ROOT = Path(__file__).resolve().parents[1]
CLASSIFIER = ["model.width=0.125", "model.input_size=32", "train.batch_size=4", "train.epochs=4",
              "train.workers=0", "train.threads=1", "train.eval_batch_size=8", "train.ema_decay=0.9",
              "train.lr=0.01", "train.seed=3"]
MULTIBOX = ["model.width=0.125", "model.input_size=64", "model.num_priors=8", "train.batch_size=4",
            "train.epochs=4", "train.workers=0", "train.seed=3"]


def cli(*argv: object) -> None:
    try:
        main([str(a) for a in argv])
    except SystemExit as e:
        assert e.code in (0, None), e.code


def kill_after_first_checkpoint(argv: list, run_dir: Path, rng: random.Random) -> float:
    """Start `detect ARGV` in a subprocess; SIGKILL it a random delay after run_dir/checkpoint.pt
    appears. Returns the delay (s); fails if it never checkpoints."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", "from detect.cli import main; main()",
                             *[str(a) for a in argv]], env=env, cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not (run_dir / "checkpoint.pt").exists():
            assert proc.poll() is None, f"exited {proc.returncode} before a checkpoint: {proc.stderr.read()}"
            assert time.monotonic() < deadline, "no checkpoint within 120 s"
            time.sleep(0.01)
        delay = rng.uniform(0.0, 0.4)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return delay


def epochs_logged(run_dir: Path) -> int:
    log = run_dir / "metrics.jsonl"
    return len(log.read_text().splitlines()) if log.is_file() else 0


def assert_same_tensors(a: dict, b: dict, what: str) -> None:
    assert a.keys() == b.keys(), what
    for key in a:
        assert torch.equal(a[key], b[key]), f"{what}: {key} differs"


def class_folders(root: Path) -> Path:
    rng = np.random.default_rng(0)
    colours = [(220, 40, 40), (40, 200, 60), (50, 60, 230)]
    for split, n in (("train", 8), ("val", 2)):
        for k, colour in enumerate(colours):
            (root / split / f"c{k}").mkdir(parents=True)
            for i in range(n):
                pixels = np.clip(np.array(colour) + rng.integers(-40, 41, (36, 36, 3)), 0, 255)
                Image.fromarray(pixels.astype(np.uint8)).save(root / split / f"c{k}" / f"{i}.png")
    return root


def test_train_classifier_killed_and_resumed_matches_uninterrupted(tmp_path, one_thread):
    rng = random.Random()
    data = class_folders(tmp_path / "data")
    config = tmp_path / "tiny.yaml"
    config.write_text("{}\n")
    args = ["train-classifier", "--data", data, "--config", config, "--device", "cpu"]
    cli(*args, "--out", tmp_path / "straight", *CLASSIFIER)
    delay = kill_after_first_checkpoint([*args, "--out", tmp_path / "killed", *CLASSIFIER],
                                        tmp_path / "killed", rng)
    note = f"killed {delay:.3f} s after the first checkpoint, {epochs_logged(tmp_path / 'killed')} epochs logged"
    print(note)
    cli(*args, "--out", tmp_path / "killed", "--resume", *CLASSIFIER)
    a, b = load_checkpoint(tmp_path / "straight" / "checkpoint.pt"), load_checkpoint(tmp_path / "killed" / "checkpoint.pt")
    assert a["epoch"] == b["epoch"] == 4, note
    assert_same_tensors(a["model"], b["model"], note)
    assert_same_tensors(load_weights(tmp_path / "straight" / "model.safetensors"),
                        load_weights(tmp_path / "killed" / "model.safetensors"), note)
    epochs = [line for line in (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()]
    assert len(epochs) == 4, note  # log lines of the epoch that was cut short are not repeated


def detection_folder(root: Path, n: int = 12) -> Path:
    rng = np.random.default_rng(1)
    for i in range(n):
        pixels = rng.integers(80, 150, (64, 80, 3)).astype(np.uint8)
        x, y = int(rng.integers(0, 40)), int(rng.integers(0, 24))
        pixels[y:y + 30, x:x + 30] = (220, 40, 40)
        write_voc(root, f"{i:02d}", (80, 64), torch.tensor([[x, y, x + 30, y + 30]], dtype=torch.float32),
                  torch.tensor([1]), ["square"])
        (root / "JPEGImages").mkdir(exist_ok=True)
        Image.fromarray(pixels).save(root / "JPEGImages" / f"{i:02d}.png")
        text = (root / "Annotations" / f"{i:02d}.xml").read_text()
        (root / "Annotations" / f"{i:02d}.xml").write_text(text.replace(f"{i:02d}.jpg", f"{i:02d}.png"))
    return root


def test_train_multibox_killed_and_resumed_matches_uninterrupted(tmp_path, one_thread):
    rng = random.Random()
    data = detection_folder(tmp_path / "voc")
    config = ROOT / "configs" / "demo_multibox.yaml"
    args = ["train-multibox", "--data", data, "--config", config, "--device", "cpu"]
    cli(*args, "--out", tmp_path / "straight", *MULTIBOX)
    delay = kill_after_first_checkpoint([*args, "--out", tmp_path / "killed", *MULTIBOX],
                                        tmp_path / "killed", rng)
    note = f"killed {delay:.3f} s after the first checkpoint, {epochs_logged(tmp_path / 'killed')} epochs logged"
    print(note)
    cli(*args, "--out", tmp_path / "killed", "--resume", *MULTIBOX)
    a, b = load_checkpoint(tmp_path / "straight" / "checkpoint.pt"), load_checkpoint(tmp_path / "killed" / "checkpoint.pt")
    assert_same_tensors(a["model"], b["model"], note)
    assert_same_tensors(load_weights(tmp_path / "straight" / "model.safetensors"),
                        load_weights(tmp_path / "killed" / "model.safetensors"), note)
    assert epochs_logged(tmp_path / "killed") == 4, note  # the epoch cut short is logged once
