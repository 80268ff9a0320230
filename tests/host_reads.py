"""Count the reads of tensor values by the host (`.item()`, `.tolist()`, `float(t)`, `bool(t)`,
...): on a GPU each one waits for the device to finish its queue. Training steps make none."""
from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch

READS = ("item", "tolist", "__float__", "__int__", "__bool__", "__index__")  # .numpy() refuses CUDA tensors


@contextmanager
def count_host_reads(callers: tuple[str, ...] = ()) -> Iterator[list[str]]:
    """Yields a list that grows by one name per host read of a tensor inside the block; with
    `callers`, only the reads made by code in files whose path ends with one of them (e.g. the
    trainer's own, not the CPU-side region sampling it calls)."""
    seen: list[str] = []
    with pytest.MonkeyPatch.context() as patch:
        for name in READS:
            original = getattr(torch.Tensor, name)

            def probe(self, *args, _original=original, _name=name, **kwargs):
                where = sys._getframe(1).f_code.co_filename.replace("\\", "/")
                if not callers or where.endswith(callers):
                    seen.append(_name)
                return _original(self, *args, **kwargs)
            patch.setattr(torch.Tensor, name, probe)
        yield seen
