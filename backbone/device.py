"""Where a network runs: the one reading of a `--device` option ("auto", "cpu", "cuda", "cuda:1")."""
from __future__ import annotations

import torch

from backbone.errors import InputError


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """"auto" -> the first GPU if there is one, else the CPU; any other name as torch reads it.

    InputError for a name torch does not know, or for a CUDA device on a machine without one
    (torch would only fail later, at the first tensor moved there).
    """
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise InputError(None, f"unknown device '{device}' (use cpu, cuda, cuda:1 or auto)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError(None, f"device '{device}' asked for, but no CUDA GPU is available")
    return dev
