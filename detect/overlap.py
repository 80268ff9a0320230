"""Proposals computed ahead in worker processes while the network scores the current image.

Shapes: N proposals of one image, boxes Tensor[N, 4] xyxy pixels.

R-CNN's two costly stages use different hardware paths: selective search is single-threaded
OpenCV code, region scoring is a multi-threaded (or GPU) network. `proposals_ahead` keeps a
bounded number of images' proposals in flight in a pool of one-thread worker processes and
hands them back in order, so the caller scores image i while the workers segment images
i+1 .. i+look-ahead. The results are the sequential path's: the same proposer code on the same
pixels (tests/detect/test_run_resume.py checks it).
"""
from __future__ import annotations

import collections
import os
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch
from torch import Tensor

from backbone.errors import InputError
from backbone.io import load_image
from backbone.pool import fork_context, one_opencv_thread

Proposer = Callable[[Any], tuple[Tensor, Tensor]]

# The proposer a worker uses. Set in the parent just before forking, so forked workers inherit
# a detector's own proposer (even one given as a Python function); spawned ones build it.
_proposer: dict[str, Any] = {}


def default_proposal_workers() -> int:
    """Cores - 1 (one core is left to the network), at least 1."""
    return max(1, (os.cpu_count() or 1) - 1)


def _init_worker(config: Any) -> None:
    """One thread per library in a worker (the parallelism comes from the processes), and its
    proposer: the parent's, inherited through fork, else built from `config`."""
    import cv2

    cv2.setNumThreads(1)
    torch.set_num_threads(1)
    if _proposer.get("fn") is None:
        from proposals import build_proposer

        _proposer["fn"] = build_proposer(config)


def _propose_one(path: Any) -> tuple[Tensor | None, float]:
    """(boxes [N, 4], worker seconds) of one image (path or pixels); boxes None if it cannot be read
    (the caller reads it again and reports the InputError itself)."""
    start = time.perf_counter()
    try:
        pixels = load_image(path)
    except InputError:
        return None, 0.0
    boxes = _proposer["fn"](pixels)[0].float().reshape(-1, 4)
    return boxes, time.perf_counter() - start


def _worker_config(detector: Any) -> Any:
    """The detector's proposal config; a MultiBox in a forked worker runs on the CPU (a CUDA
    context cannot cross a fork)."""
    import copy

    config = copy.deepcopy(detector.config.proposals)
    config.multibox.device = "cpu"
    return config


def proposals_ahead(detector: Any, paths: Sequence[str | Path], workers: int,
                    lookahead: int | None = None) -> Iterator[Tensor | None]:
    """Proposals (Tensor[N, 4]) of each image file, in order, computed ahead by `workers`
    processes; at most `lookahead` images (default 2 x workers) are in flight.

    workers <= 0 yields None for every image (the caller's `detector.detect(pixels, None)`
    then proposes inline). Also None for an image a worker could not read. The workers'
    seconds are added to `detector.timings["proposals"]`.
    """
    if workers <= 0 or not paths:
        yield from (None for _ in paths)
        return
    lookahead = max(1, lookahead or 2 * workers)
    _proposer["fn"] = detector.proposer  # inherited by forked workers; None: built from config
    try:
        with one_opencv_thread():  # only while forking: the parent's OpenCV keeps its threads
            pool = fork_context().Pool(min(workers, len(paths)), initializer=_init_worker,
                                       initargs=(_worker_config(detector),))
        with pool:
            pending: collections.deque = collections.deque()
            todo = iter(paths)
            for path in todo:
                pending.append(pool.apply_async(_propose_one, (path,)))
                if len(pending) >= lookahead:
                    break
            while pending:
                boxes, seconds = pending.popleft().get()
                nxt = next(todo, None)
                if nxt is not None:  # keep the queue full before the caller takes its turn
                    pending.append(pool.apply_async(_propose_one, (nxt,)))
                detector.timings["proposals"] += seconds
                yield boxes
    finally:
        _proposer.clear()
