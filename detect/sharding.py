"""Splitting a data set over processes: `--shard i/n`, or each rank's share under torchrun.

Shard i of n takes items i, i+n, i+2n, ... of the full list (0-based), so n shards cover every
item exactly once and each shard's share of a sorted list is spread evenly across it.
"""
from __future__ import annotations

import os

from backbone.errors import InputError


def parse_shard(text: str) -> tuple[int, int]:
    """'i/n' -> (i, n) with 0 <= i < n; InputError otherwise."""
    try:
        i, n = (int(part) for part in text.split("/"))
    except ValueError:
        raise InputError("<command line>", f"--shard {text!r} must look like i/n, e.g. 0/4") from None
    if not 0 <= i < n:
        raise InputError("<command line>", f"--shard {text}: need 0 <= i < n")
    return i, n


def torchrun_shard() -> tuple[int, int] | None:
    """(RANK, WORLD_SIZE) when launched by torchrun with several processes, else None."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return (int(os.environ.get("RANK", "0")), world) if world > 1 else None


def resolve_shard(text: str | None) -> tuple[int, int] | None:
    """--shard if given, else this rank's share under torchrun, else None (everything)."""
    return parse_shard(text) if text is not None else torchrun_shard()


def cores_per_process() -> int:
    """This machine's cores divided among the processes torchrun started on it."""
    return max(1, (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
