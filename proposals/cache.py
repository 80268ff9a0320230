"""A proposal cache: one safetensors file per image, computed once by all cores.

Layout of a cache folder:

    config.yaml          the ProposalConfig that produced it
    boxes/<key>.safetensors   "boxes" float32 [N, 4] xyxy pixels, "sources" uint8 [N]
    summary[-i-of-n].json     what the last run (or shard) did, skipped images listed

Every entry is written atomically (temporary file, then rename), so an interrupted run leaves
only whole entries and a rerun computes just the missing ones. Keys are percent-encoded into
file names, so any string (with slashes too) is a key.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Iterator, Sequence
from urllib.parse import quote, unquote

import torch

from backbone.config import config_from_dict, config_to_dict, read_yaml, save_config
from backbone.errors import InputError
from backbone.io import atomic_write_json, load_image, load_weights, save_weights
from backbone.pool import process_map
from proposals.merge import ProposalConfig, build_proposer

SUFFIX = ".safetensors"


class ProposalCache:
    """Per-image proposals stored under `root`; `get(key) -> (boxes [N, 4], sources [N]) | None`."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.entries = self.root / "boxes"

    def path(self, key: str) -> Path:
        """The file of `key` (percent-encoded, so '/' and other odd characters are safe)."""
        return self.entries / (quote(key, safe="") + SUFFIX)

    def __contains__(self, key: str) -> bool:
        return self.path(key).is_file()

    def get(self, key: str) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Boxes (Tensor[N, 4]) and sources (Tensor[N] uint8) of `key`, or None if absent."""
        path = self.path(key)
        if not path.is_file():
            return None
        tensors = load_weights(path)
        boxes, sources = tensors.get("boxes"), tensors.get("sources")
        if boxes is None or sources is None or boxes.ndim != 2 or boxes.shape[1] != 4 \
                or sources.shape != (boxes.shape[0],):
            raise InputError(path, "not a proposal cache entry (needs boxes [N, 4] and sources [N])")
        return boxes.float(), sources.to(torch.uint8)

    def put(self, key: str, boxes: torch.Tensor, sources: torch.Tensor) -> None:
        """Store `boxes` (Tensor[N, 4]) and `sources` (Tensor[N]) for `key`, atomically."""
        boxes = boxes.detach().float().cpu().reshape(-1, 4)
        sources = sources.detach().to(torch.uint8).cpu().reshape(-1)
        if len(sources) != len(boxes):
            raise ValueError(f"{len(boxes)} boxes but {len(sources)} sources for key {key!r}")
        save_weights(self.path(key), {"boxes": boxes, "sources": sources}, metadata={"key": key})

    def keys(self) -> list[str]:
        """All keys with a finished entry, sorted."""
        if not self.entries.is_dir():
            return []
        names = (p.name for p in self.entries.iterdir() if p.name.endswith(SUFFIX) and not p.name.startswith("."))
        return sorted(unquote(n[: -len(SUFFIX)]) for n in names)

    def __len__(self) -> int:
        return len(self.keys())

    def config(self) -> ProposalConfig | None:
        """The config saved with the cache, or None for a cache without one."""
        path = self.root / "config.yaml"
        return config_from_dict(ProposalConfig, read_yaml(path), str(path)) if path.is_file() else None


def _check_config(cache: ProposalCache, config: ProposalConfig) -> None:
    """Refuse to mix proposals of two configs in one cache; save the config in a new one."""
    saved = cache.config()
    if saved is None:
        save_config(config, cache.root / "config.yaml")
    elif config_to_dict(saved) != config_to_dict(config):
        raise InputError(cache.root / "config.yaml", "the cache was computed with a different proposal "
                                                     "config; use a new output folder or the same config")


# Worker state: each worker process builds its proposer (and loads MultiBox) once.
_worker: dict = {}


def _init_worker(config_dict: dict, root: str) -> None:
    """Set one thread per library, since parallelism comes from the processes."""
    import cv2

    cv2.setNumThreads(1)
    torch.set_num_threads(1)
    _worker["proposer"] = build_proposer(config_from_dict(ProposalConfig, config_dict))
    _worker["cache"] = ProposalCache(root)


def _compute_one(item: tuple[str, str]) -> tuple[str, str, int, str | None]:
    """Propose for one (key, path) and store it; return (key, path, boxes, problem or None)."""
    import cv2

    key, path = item
    try:
        boxes, sources = _worker["proposer"](load_image(path))
    except InputError as e:
        return key, path, 0, str(e.problem)
    except cv2.error as e:
        return key, path, 0, f"selective search failed: {str(e).strip().splitlines()[-1]}"
    _worker["cache"].put(key, boxes, sources)
    return key, path, len(boxes), None


def _run(todo: list[tuple[str, str]], config: ProposalConfig, root: Path,
         workers: int) -> Iterator[tuple[str, str, int, str | None]]:
    """Results of `_compute_one` over `todo`, in this process (workers <= 1) or a pool."""
    return process_map(_compute_one, todo, workers, _init_worker, (config_to_dict(config), str(root)))


def compute_proposals(items: Sequence[tuple[str, str | Path]], config: ProposalConfig,
                      out_dir: str | Path, workers: int | None = None,
                      shard: tuple[int, int] | None = None, progress: bool = True) -> dict:
    """Compute and cache the proposals of every (key, image path) not cached yet.

    Args:
        items: (key, image path) pairs, e.g. one per image of a data set.
        config: the proposal config (saved as out_dir/config.yaml; a cache made with another
            config is refused).
        out_dir: the cache folder.
        workers: worker processes (default: all cores); 1 runs in this process.
        shard: (i, n) to do only items i, i+n, i+2n, ... (0 <= i < n), e.g. one per machine.
        progress: show a progress bar.

    Returns:
        summary dict: total, cached (found already), done (computed now), skipped (list of
        {key, path, problem} for unreadable images), boxes_per_image (of those computed now),
        seconds, images_per_s. Also written to out_dir/summary[-i-of-n].json.
    """
    from backbone.progress import progress as progress_bar

    cache = ProposalCache(out_dir)
    _check_config(cache, config)
    items = [(str(k), str(p)) for k, p in items]
    if shard is not None:
        i, n = shard
        if not 0 <= i < n:
            raise InputError(None, f"shard {i}/{n}: need 0 <= i < n")
        items = items[i::n]
    todo = [item for item in items if item[0] not in cache]
    workers = workers or os.cpu_count() or 1
    start = time.perf_counter()
    skipped, n_boxes = [], 0
    bar = progress_bar(total=len(todo), desc="proposals", unit="img", disable=not progress)
    for key, path, n, problem in _run(todo, config, cache.root, workers):
        if problem is not None:
            skipped.append({"key": key, "path": path, "problem": problem})
        n_boxes += n
        bar.update(1)
    bar.close()
    seconds = time.perf_counter() - start
    done = len(todo) - len(skipped)
    summary = {"total": len(items), "cached": len(items) - len(todo), "done": done,
               "skipped": skipped, "boxes_per_image": n_boxes / max(done, 1),
               "seconds": seconds, "images_per_s": len(todo) / seconds if seconds > 0 else 0.0,
               "workers": workers}
    name = "summary.json" if shard is None else f"summary-{shard[0]}-of-{shard[1]}.json"
    atomic_write_json(cache.root / name, summary)
    return summary


def read_cache(root: str | Path, keys: Sequence[str]) -> tuple[list, list[str]]:
    """Entries (boxes, sources) of `keys` found in the cache at `root`, and the keys missing."""
    cache = ProposalCache(root)
    if not cache.entries.is_dir():
        raise InputError(root, "not a proposal cache (no boxes/ folder); make one with `detect proposals`")
    found, missing = [], []
    for key in keys:
        entry = cache.get(key)
        if entry is None:
            missing.append(key)
        else:
            found.append((key, *entry))
    return found, missing
