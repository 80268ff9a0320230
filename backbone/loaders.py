"""DataLoader workers started once per run, before the model exists.

A worker process forked from a trainer that already holds a model, its optimizer state and
the memory of earlier steps' activations shares all of those pages copy-on-write: while the
worker lives, the trainer's next writes into them fault and copy page by page. With a new
worker per epoch (non-persistent loaders) that cost came back every epoch and slowed the
steps after the fork: at full width (224 px, 128 regions a step, 2 threads) the forward pass
of a fine-tuning step took 2-3x as long as on pre-made tensors. Forking the workers once,
while the process is still small, and keeping them for the whole run removes it (same
measurement: 0.97 of the pre-made rate; docs/performance.md).

Persistent workers keep their own copy of the dataset, so what changes per epoch must travel
with the indices: `EpochKeys` yields `(epoch, index)` keys (`backbone.data.ImageDataset`
accepts them), and samplers yield nothing until their first `set_epoch`, so that
`start_workers` can fork the workers without them decoding anything.
"""
from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader, Sampler


class EpochKeys(Sampler):
    """Wraps an index sampler: yields `(epoch, index)`; nothing until `set_epoch` is called.

    `set_epoch` is passed on to the wrapped sampler (e.g. `DistributedSampler`'s shuffle).
    """

    def __init__(self, sampler: Sampler):
        self.sampler = sampler
        self.epoch: int | None = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        if self.epoch is None:
            return iter(())
        epoch = self.epoch
        return ((epoch, int(i)) for i in self.sampler)

    def __len__(self) -> int:
        return len(self.sampler)


def start_workers(loader: DataLoader) -> DataLoader:
    """Fork a persistent loader's worker processes now (call before building the model).

    Its sampler must yield nothing yet (e.g. an `EpochKeys` before `set_epoch`), or the
    batches the workers prefetch are decoded and then dropped at the first real iteration.
    A loader without workers, or with non-persistent ones, is returned untouched.
    """
    if loader.num_workers > 0 and loader.persistent_workers:
        iter(loader)
    return loader


def worker_init(_: int) -> None:
    """Each worker decodes one image at a time; library threads would only fight for cores."""
    import cv2
    cv2.setNumThreads(1)
    torch.set_num_threads(1)
