"""`detect run`'s default split of the CPU between proposal workers and the network's threads."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from cli_helpers import run
from detect.detector import save_detector_run
from tiny_detector import CLASSES, make_config, tiny_member

FAST = ["proposals.selective_search.mode=single", "proposals.selective_search.resize_width=0",
        "proposals.selective_search.min_size=8", "proposals.min_size=8", "proposals.selective_search.max_boxes=8"]


@pytest.fixture
def setup(tmp_path):
    """A tiny detector run and a folder of two images; torch's thread count restored after."""
    threads = torch.get_num_threads()
    save_detector_run(tmp_path / "run", [tiny_member(0)], make_config(), CLASSES)
    folder = tmp_path / "imgs"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in ("a.png", "b.png"):
        Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(folder / name)
    yield tmp_path
    torch.set_num_threads(threads)


def _threads_used(capsys, root, *options: str) -> int:
    out = root / f"out{len(list(root.glob('out*')))}"
    code, _, err = run(capsys, "run", "--images", str(root / "imgs"), "--model", str(root / "run"),
                       "--out", str(out), "--device", "cpu", *options, *FAST)
    assert code == 0, err
    return json.loads((out / "run.json").read_text())["environment"]["torch_threads"]


def test_the_network_gets_the_cores_the_workers_leave(setup, capsys):
    cores = os.cpu_count() or 1
    # default: cores - 1 workers (at least 1) leave the network max(1, cores - workers) = 1 thread
    assert _threads_used(capsys, setup) == 1
    assert _threads_used(capsys, setup, "--workers", "1") == max(1, cores - 1)
    assert _threads_used(capsys, setup, "--workers", "1", "--threads", "3") == 3  # asked for: kept


def test_inline_proposals_leave_the_threads_alone(setup, capsys):
    torch.set_num_threads(2)
    assert _threads_used(capsys, setup, "--workers", "0") == 2
