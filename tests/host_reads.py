"""Count the reads of tensor values by the host (`.item()`, `.tolist()`, `float(t)`, `bool(t)`,
...): on a GPU each one waits for the device to finish its queue. Training steps make none."""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch

READS = ("item", "tolist", "numpy", "__float__", "__int__", "__bool__", "__index__")


@contextmanager
def count_host_reads() -> Iterator[list[str]]:
    """Yields a list that grows by one name per host read of a tensor inside the block."""
    seen: list[str] = []
    with pytest.MonkeyPatch.context() as patch:
        for name in READS:
            original = getattr(torch.Tensor, name)

            def probe(self, *args, _original=original, _name=name, **kwargs):
                seen.append(_name)
                return _original(self, *args, **kwargs)
            patch.setattr(torch.Tensor, name, probe)
        yield seen
