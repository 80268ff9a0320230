"""Splitting a data set over processes (`--shard i/n`, or each rank's share under torchrun),
and joining what the shards wrote.

Shard i of n takes items i, i+n, i+2n, ... of the full list (0-based), so n shards cover every
item exactly once and each shard's share of a sorted list is spread evenly across it.
`join_results` is the one join of COCO results files; `merge_shards` joins the shard folders
of `detect run --shard i/n` with it.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from backbone.errors import InputError
from backbone.io import atomic_write_json, read_json


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


def join_results(files: Sequence[str | Path], image_ids: Sequence[dict[int, int]] | None = None) -> list[dict]:
    """The COCO results entries of several shards' files as one list, ordered by image id.

    image_ids[i] maps the ids of files[i] to the joined ids (default: the ids are kept, as
    when every shard numbers the images of one data set). The sort is stable: an image's
    entries keep their order, so the join of n shards is the file one process would write.
    """
    entries = []
    for i, file in enumerate(files):
        rows = read_json(file)
        if not isinstance(rows, list):
            raise InputError(file, "a detections file is a JSON list of COCO results entries")
        ids = image_ids[i] if image_ids is not None else None
        entries += rows if ids is None else [{**e, "image_id": ids[e["image_id"]]} for e in rows]
    return sorted(entries, key=lambda e: e["image_id"])


def shard_folder(out_dir: str | Path, shard: tuple[int, int]) -> Path:
    """Where `detect run --shard i/n` writes: OUT/shard-i-of-n/."""
    return Path(out_dir) / f"shard-{shard[0]}-of-{shard[1]}"


def merge_shards(out_dir: str | Path) -> dict:
    """Merge OUT/shard-i-of-n/ (every i of one n) into OUT/detections.json and OUT/run.json.

    Images come back in their order in the whole list (run.json's "index") with image ids
    0, 1, ... as one unsharded run gives them; "png" names the shard's drawing. InputError if
    a shard is missing or unfinished. Returns the merged run.json content.
    """
    out = Path(out_dir)
    shards = sorted(p for p in out.glob("shard-*-of-*") if p.is_dir())
    counts = {p.name.rsplit("-of-", 1)[1] for p in shards}
    if len(counts) != 1 or not all(c.isdigit() for c in counts):
        raise InputError(out, f"expected shard-I-of-N folders of one N, found {[p.name for p in shards]}")
    n = int(counts.pop())
    folders = [shard_folder(out, (i, n)) for i in range(n)]
    missing = [i for i, folder in enumerate(folders) if not (folder / "run.json").is_file()]
    if missing:
        raise InputError(out, f"shards {missing} of {n} have no run.json (not run or not finished)")
    runs = [read_json(folder / "run.json") for folder in folders]
    # (shard, image) in the order of the whole list: its position there is the joined image id
    rows = sorted(((i, img) for i, run in enumerate(runs) for img in run["images"]), key=lambda r: r[1]["index"])
    ids: list[dict[int, int]] = [{} for _ in folders]  # per shard: its image id -> the joined one
    images = []
    for image_id, (i, img) in enumerate(rows):
        ids[i][img["image_id"]] = image_id
        images.append({**img, "image_id": image_id, "png": f"{folders[i].name}/{img['png']}"})
    detections = join_results([folder / "detections.json" for folder in folders], ids)
    skipped = sorted((s for run in runs for s in run["skipped"]), key=lambda s: s["index"])
    summary = {"images": images, "skipped": skipped, "shards": n}
    atomic_write_json(out / "detections.json", detections, indent=None)
    atomic_write_json(out / "run.json", summary)
    return summary
