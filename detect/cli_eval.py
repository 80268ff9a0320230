"""`detect eval`: one command, four measurements (--accuracy, --map, --recall, --box-accuracy)."""
from __future__ import annotations

import click

from backbone.errors import InputError


@click.command("eval")
@click.option("--accuracy", "mode", flag_value="accuracy",
              help="Classification top-1/top-5 of one or more classifier runs on an image folder.")
@click.option("--map", "mode", flag_value="map",
              help="Detection mAP of a detections file (or of --model run over the data set).")
@click.option("--recall", "mode", flag_value="recall",
              help="Recall of cached proposals against the data set's ground truth.")
@click.option("--box-accuracy", "mode", flag_value="box-accuracy",
              help="Top-1 of classifier runs or detector members on the data set's ground-truth boxes "
                   "(naming with the boxes given; a detector run: each of its members).")
@click.option("--data", required=True, type=click.Path(exists=True),
              help="--accuracy: a folder of class folders (or ILSVRC val layout); --map/--recall: a detection data set.")
@click.option("--split", default=None, help="Split of a VOC/ILSVRC data set (ImageSets/Main/SPLIT.txt).")
@click.option("--model", "models", multiple=True, type=click.Path(exists=True),
              help="A run folder; repeat for an ensemble (--accuracy). With --map: a detector run to evaluate "
                   "(default: the built-in model); --box-accuracy: classifier or detector runs (default: the "
                   "built-in model's members).")
@click.option("--crops", type=click.Choice(["1", "10", "144"]), default="1", show_default=True,
              help="--accuracy: test crops per image (paper section 7).")
@click.option("--table", is_flag=True, help="--accuracy: print the paper's Table 3 layout (models x crops).")
@click.option("--detections", type=click.Path(exists=True), default=None,
              help="--map: COCO results JSON as written by `detect run`.")
@click.option("--protocol", default="voc12", show_default=True,
              type=click.Choice(["ilsvrc", "voc07", "voc12", "voc07-continuous", "voc12-continuous", "coco"]),
              help="--map: evaluation protocol. voc07/voc12: the VOC devkit's rules (+1 pixel sizes in IoU); "
                   "voc07-continuous/voc12-continuous: the same with IoU in continuous coordinates.")
@click.option("--iou", "iou_thresholds", type=click.FloatRange(0.0, 1.0, min_open=True), multiple=True,
              help="--map, VOC protocols only: the IoU a match needs (>=); repeat for a table at each from "
                   "one detection pass (--iou 0.5 --iou 0.7).  [default: 0.5]")
@click.option("--proposals", "proposals_path", type=click.Path(exists=True), default=None,
              help="--recall: a proposal cache written by `detect proposals`.")
@click.option("--json", "json_path", type=click.Path(), default=None, help="Also write the numbers as JSON here.")
@click.option("--plots", type=click.Path(), default=None, help="--map: write precision-recall curves (PNG) here.")
@click.option("--errors", is_flag=True,
              help="--map: also show where the mAP goes: per class the objects found, named correctly and "
                   "confused with which class, and its top detections' kinds (tp, dup, loc, conf, bg).")
@click.option("--shared-split", "shared_splits", multiple=True,
              help="--box-accuracy: also name the boxes in the shared mode, pooled from the map after this block "
                   "(stem, inception3a .. inception5a; repeat for several): does the classifier carry over to it?")
@click.option("--shared-short-side", type=click.IntRange(min=0), default=0, show_default=True,
              help="--box-accuracy with --shared-split: the image's shorter side scaled to this (0: as it is).")
@click.option("--device", default="auto", show_default=True, help="cpu, cuda, cuda:1 or auto.")
@click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True,
              help="Images (crops) per forward pass.")
@click.option("--workers", type=click.IntRange(min=0), default=2, show_default=True,
              help="Data loading worker processes (0: load in the main process).")
def eval_command(mode, data, split, models, crops, table, detections, protocol, iou_thresholds, proposals_path,
                 json_path, plots, errors, shared_splits, shared_short_side, device, batch_size, workers) -> None:
    """Measure a classifier (--accuracy), a detector (--map, --box-accuracy) or proposals (--recall)."""
    if errors and mode != "map":
        raise click.UsageError("--errors goes with --map")
    if shared_splits and mode != "box-accuracy":
        raise click.UsageError("--shared-split goes with --box-accuracy")
    if mode == "accuracy":
        from detect.cli_backbone import eval_accuracy
        if not models:
            raise InputError(None, "--accuracy needs at least one --model RUN")
        eval_accuracy(data=data, models=list(models), crops=int(crops), table=table,
                      json_path=json_path, device=device, batch_size=batch_size, workers=workers)
    elif mode == "map":
        from detect.cli_data import eval_map
        if iou_thresholds and not protocol.startswith("voc"):
            raise click.UsageError(f"--iou applies to the VOC protocols only, not to {protocol}")
        eval_map(data=data, split=split, detections=detections, models=list(models),
                 protocol=protocol, json_path=json_path, plots=plots, device=device,
                 batch_size=batch_size, errors=errors,
                 iou_thresholds=iou_thresholds or (0.5,))
    elif mode == "recall":
        from detect.cli_proposals import eval_recall
        if proposals_path is None:
            raise InputError(None, "--recall needs --proposals CACHE")
        eval_recall(data=data, split=split, proposals=proposals_path, json_path=json_path)
    elif mode == "box-accuracy":
        from detect.error_analysis import eval_box_accuracy
        if not models:
            from detect.detector import DEFAULT_MODEL_DIR
            models = (str(DEFAULT_MODEL_DIR),)
        eval_box_accuracy(data=data, split=split, models=list(models), json_path=json_path, device=device,
                          shared_splits=shared_splits, short_side=shared_short_side)
    else:
        raise click.UsageError("choose one of --accuracy, --map, --recall, --box-accuracy")
