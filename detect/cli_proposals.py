"""`detect proposals` (compute a proposal cache) and `detect eval --recall` (measure it)."""
from __future__ import annotations

import click

from backbone.errors import InputError


@click.command("proposals")
@click.option("--data", required=True, type=click.Path(exists=True),
              help="A detection data set: VOC/ILSVRC folder or COCO instances JSON.")
@click.option("--config", "config_path", type=click.Path(exists=True), default=None,
              help="Proposal config YAML (ProposalConfig; default: the paper's settings).")
@click.option("--out", required=True, type=click.Path(), help="Cache folder (created; resumed if present).")
@click.option("--split", default=None, help="Split of a VOC/ILSVRC data set (ImageSets/Main/SPLIT.txt).")
@click.option("--workers", type=int, default=None, help="Worker processes [default: all cores].")
@click.option("--shard", default=None,
              help="i/n: only images i, i+n, ... (0-based), e.g. one per machine. Under torchrun: "
                   "RANK/WORLD_SIZE. Shards write into one cache.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.argument("overrides", nargs=-1)
def proposals(data, config_path, out, split, workers, shard, quiet, overrides) -> None:
    """Compute the region proposals of every image of a data set into a cache.

    \b
    OVERRIDES are key=value settings of the config, e.g.
      selective_search.superpixel_scale=1.0 selective_search.mode=quality
      multibox.enabled=true multibox.model=runs/multibox
    Interrupt it and run it again: finished images are not recomputed. Unreadable images are
    skipped and listed at the end (exit status 1); everything else is kept.
    """
    from backbone.config import load_config
    from detect.data import load_dataset
    from detect.sharding import cores_per_process, resolve_shard
    from proposals import ProposalConfig, compute_proposals

    config = load_config(ProposalConfig, config_path, overrides)
    dataset = load_dataset(data, split=split)
    items = [(rec.key, rec.path) for rec in dataset.images]
    if not items:
        raise InputError(data, "the data set has no images")
    summary = compute_proposals(items, config, out, workers=workers or cores_per_process(),
                                shard=resolve_shard(shard), progress=not quiet)
    skipped = summary["skipped"]
    click.echo(f"{summary['done']} image(s) computed, {summary['cached']} already cached, "
               f"{len(skipped)} skipped; {summary['boxes_per_image']:.0f} boxes/image, "
               f"{summary['images_per_s']:.2f} images/s; cache in {out}")
    for item in skipped:
        click.echo(f"  skipped {item['path']}: {item['problem']}", err=True)
    if skipped:
        raise SystemExit(1)


def recall_table(found: list, gt: dict) -> dict[str, dict]:
    """Recall stats of each source present and of the merge.

    found: (key, boxes [N, 4], sources [N]) per image; gt: key -> ground-truth boxes [G, 4].
    """
    from proposals import recall_stats
    from proposals.merge import SOURCE_NAMES

    gts = [gt[key] for key, _, _ in found]
    present = sorted({int(s) for _, _, sources in found for s in sources.unique()})
    rows = {}
    for source in present:
        rows[SOURCE_NAMES.get(source, f"source {source}")] = recall_stats(
            [boxes[sources == source] for _, boxes, sources in found], gts)
    rows["merged"] = recall_stats([boxes for _, boxes, _ in found], gts)
    return rows


def eval_recall(data: str, split: str | None, proposals: str, json_path: str | None = None) -> dict:
    """`detect eval --recall`: recall of cached proposals against a data set's ground truth.

    Prints boxes/image, recall at IoU 0.5 and 0.7 and AR (0.5:0.95) for each source and for
    the merge. Ground-truth boxes marked difficult (VOC/ILSVRC) or crowd (COCO) are left out;
    images without a cache entry are counted and left out.
    """
    from backbone.io import atomic_write_json
    from detect.data import load_dataset
    from proposals import read_cache

    dataset = load_dataset(data, split=split)
    gt = {rec.key: rec.boxes[~rec.difficult.bool()] for rec in dataset.images}
    found, missing = read_cache(proposals, list(gt))
    if not found:
        raise InputError(proposals, f"no cache entry for any of the {len(gt)} images of {data}")
    rows = recall_table(found, gt)
    click.echo(f"{len(found)} images, {rows['merged']['gt_boxes']} ground-truth boxes"
               + (f" ({len(missing)} images without a cache entry left out)" if missing else ""))
    click.echo(f"{'source':<18} {'boxes/img':>9} {'R@0.5':>7} {'R@0.7':>7} {'AR':>7}")
    for name, s in rows.items():
        click.echo(f"{name:<18} {s['boxes_per_image']:>9.1f} {s['recall@0.5']:>7.4f} "
                   f"{s['recall@0.7']:>7.4f} {s['AR']:>7.4f}")
    result = {"images": len(found), "missing": missing, "sources": rows}
    if json_path:
        atomic_write_json(json_path, result)
    return result

