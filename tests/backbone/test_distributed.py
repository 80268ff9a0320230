"""Two gloo processes on the CPU train the same weights as one process with the same global batch."""
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from backbone.checkpoint import load_checkpoint
from backbone.config import load_config
from backbone.train import ClassifierConfig, train_classifier
from classification_data import make_image_folder

# Dropout off: its random masks are per process (seeded by rank), the rest is rank-independent.
OVERRIDES = ["model.width=0.125", "model.input_size=32", "model.dropout=0.0", "model.aux_dropout=0.0",
             "train.batch_size=8", "train.epochs=2", "train.lr=0.01", "train.workers=0",
             "train.ema_decay=0.9", "train.threads=1", "train.eval_batch_size=8"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, data: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    train_classifier(load_config(ClassifierConfig, None, OVERRIDES), data, out, device="cpu")


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="no gloo backend")
def test_two_gloo_processes_match_one_process(tmp_path):
    data = make_image_folder(tmp_path / "data", per_class=8, val_per_class=3)
    single = train_classifier(load_config(ClassifierConfig, None, OVERRIDES), data, tmp_path / "one", device="cpu")
    # fork: the children need not import torch again (train.threads=1 keeps OpenMP out of it).
    mp.start_processes(_worker, args=(2, _free_port(), str(data), str(tmp_path / "two")), nprocs=2,
                       join=True, start_method="fork")
    a, b = load_checkpoint(single / "checkpoint.pt"), load_checkpoint(tmp_path / "two" / "checkpoint.pt")
    assert a["epoch"] == b["epoch"] == 2
    moved = 0.0
    for key, weight in a["model"].items():
        torch.testing.assert_close(b["model"][key], weight, rtol=1e-4, atol=1e-5, msg=key)
        torch.testing.assert_close(b["ema"]["module"][key], a["ema"]["module"][key], rtol=1e-4, atol=1e-5)
        moved += (weight - a["ema"]["module"][key]).abs().sum().item()
    assert moved > 0  # training happened: the raw weights moved away from their average
