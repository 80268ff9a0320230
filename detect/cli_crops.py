"""`detect crops`: classifier crops of a detection data set, cut as the detector cuts regions."""
from __future__ import annotations

import click


@click.command("crops")
@click.option("--data", required=True, type=click.Path(exists=True),
              help="A detection data set: VOC/ILSVRC folder or COCO instances JSON.")
@click.option("--split", default="train", show_default=True,
              help="Split whose images fill train/ (VOC: ImageSets/Main/SPLIT.txt; COCO: the JSON ending in _SPLIT).")
@click.option("--val-split", default=None,
              help="Split whose images fill val/ [default: a held-out --val-share of --split's images].")
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Folder to write: train/ and val/ of class folders (created; resumed if present).")
@click.option("--size", type=click.IntRange(min=8), default=128, show_default=True,
              help="Side of a saved crop: 256/224 x the classifier's model.input_size (128 for 112).")
@click.option("--per-box", type=click.IntRange(min=1), default=8, show_default=True,
              help="Crops per ground-truth box: the box, then jittered copies at IoU >= 0.7 to it.")
@click.option("--background", type=click.FloatRange(0, 1, max_open=True), default=0.4, show_default=True,
              help="Share of the crops that are background regions (IoU < 0.3 to every box), "
                   "class __background__; 0: none.")
@click.option("--context-pad", type=click.IntRange(0, 111), default=16, show_default=True,
              help="Context pixels around a box at 224: the detector's regions.context_pad.")
@click.option("--val-share", type=click.FloatRange(0, 1, max_open=True), default=0.1, show_default=True,
              help="Without --val-split: this share of --split's images goes to val/.")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seeds the jitter, the background regions and the held-out images (same seed, same files).")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Only the first N images of each split (a quick look).")
@click.option("--workers", type=click.IntRange(min=1), default=None, help="Worker processes [default: all cores].")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def crops(data, split, val_split, out, size, per_box, background, context_pad, val_share, seed, limit,
          workers, quiet) -> None:
    """Cut a train-classifier folder out of a detection data set.

    Every ground-truth box becomes --per-box crops of its class (the box and jittered copies),
    and regions clear of every box become crops of __background__, each warped with the
    detector's context, so that a classifier trained on them (detect train-classifier) starts
    the detector (train-detector --init) in its own task. Interrupt it and run it again:
    finished images are kept. Unreadable images are skipped and listed at the end (exit 1).
    """
    from detect.region_crops import CropSettings, write_region_crops
    from detect.sharding import cores_per_process

    settings = CropSettings(size=size, per_box=per_box, background=background, context_pad=context_pad,
                            seed=seed, val_share=val_share)
    summary = write_region_crops(data, out, split, val_split, settings, workers=workers or cores_per_process(),
                                 limit=limit, progress=not quiet)
    for name, counts in summary["crops"].items():
        click.echo(f"{name}: {sum(counts.values())} crops, " + ", ".join(f"{c} {n}" for c, n in sorted(counts.items())))
    click.echo(f"{summary['done']} image(s) cut, {summary['cached']} already done, {len(summary['skipped'])} "
               f"skipped; {summary['written']} crops in {summary['seconds']:.1f} s "
               f"({summary['crops_per_s']:.1f} crops/s); folder {out}")
    for item in summary["skipped"]:
        click.echo(f"  skipped {item['path']}: {item['problem']}", err=True)
    if summary["skipped"]:
        raise SystemExit(1)
