"""Training checkpoints: written atomically, read back without executing code.

A checkpoint is a dict of tensors, numbers, strings, lists and dicts (model, averaged model,
optimizer state, epochs done: `backbone.engine.save_state`), stored with `torch.save` through a
temporary file and read with `torch.load(weights_only=True)`. Randomness in training is derived
from (seed, epoch, step), so resuming from a checkpoint reproduces an uninterrupted run exactly.
"""
from __future__ import annotations

from pathlib import Path

import torch

from backbone.errors import InputError
from backbone.io import atomic_path


def save_checkpoint(path: str | Path, state: dict) -> None:
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "checkpoint not found")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises many types for a corrupt file
        raise InputError(path, f"cannot read checkpoint: {e}") from None

