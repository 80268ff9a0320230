"""One function over many items in worker processes, results as they finish.

The batch jobs that cut or propose per image (`proposals.cache.compute_proposals`,
`detect.region_crops.write_region_crops`) share this: a pool forked where the OS has it, set
up once per worker, and OpenCV's thread pool shrunk while forking.
"""
from __future__ import annotations

import contextlib
import multiprocessing as mp
from typing import Any, Callable, Iterable, Iterator, Sequence


def fork_context() -> Any:
    """A multiprocessing context that forks where the OS has it (as torch's DataLoader does):
    workers start in milliseconds with everything imported (forkserver/spawn re-import torch
    and OpenCV: seconds), and a caller's script needs no `if __name__ == "__main__"` guard."""
    return mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")


@contextlib.contextmanager
def one_opencv_thread() -> Iterator[None]:
    """Shrink OpenCV's thread pool to one thread while forking, then restore it.

    A child forked while this process holds a multi-thread OpenCV pool (from any earlier
    OpenCV call) inherits a pool whose threads do not exist and hangs in its first parallel
    OpenCV call (measured: selective search in the parent, then a forked worker never ends).
    """
    import cv2

    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        yield
    finally:
        cv2.setNumThreads(threads)


def process_map(function: Callable[[Any], Any], items: Sequence[Any], workers: int,
                initializer: Callable[..., None] | None = None, initargs: Iterable[Any] = ()) -> Iterator[Any]:
    """`function(item)` for every item, in this process (workers <= 1 or a single item) or in
    `workers` forked processes, each set up once by `initializer(*initargs)`.

    Results come in the order they finish (`imap_unordered`, one item at a time), so a caller
    can count progress and a killed run loses at most the items in flight. `initializer` is
    where a worker sets its thread counts (one each: parallelism comes from the processes).
    """
    initargs = tuple(initargs)
    if workers <= 1 or len(items) <= 1:
        if initializer is not None:
            initializer(*initargs)
        yield from map(function, items)
        return
    with one_opencv_thread(), fork_context().Pool(min(workers, len(items)), initializer=initializer,
                                                  initargs=initargs) as pool:
        yield from pool.imap_unordered(function, items, chunksize=1)
