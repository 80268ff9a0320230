"""`detect fit-boxes`: R-CNN's box regressors for an existing detector run."""
from __future__ import annotations

from pathlib import Path

import click

from backbone.errors import InputError


def parse_lambdas(ctx, param, value: str | None) -> list[float]:
    """"100,1000,10000" -> [100.0, 1000.0, 10000.0]; each must be a positive number."""
    if not value:
        return []
    try:
        lambdas = [float(v) for v in value.split(",")]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated numbers, got '{value}'") from None
    if any(not lam > 0 for lam in lambdas):
        raise click.BadParameter(f"every lambda must be > 0, got '{value}'")
    return lambdas


@click.command("fit-boxes")
@click.option("--model", required=True, type=click.Path(exists=True, file_okay=False),
              help="Detector run folder (detect train-detector --out); the regressors are written into it.")
@click.option("--data", required=True, type=click.Path(exists=True),
              help="Detection data set: a VOC/ILSVRC root or a COCO instances .json (or a folder with one).")
@click.option("--split", default=None, help="Training split (ImageSets/Main/SPLIT.txt; default: every image).")
@click.option("--proposals", "proposals_dir", required=True, type=click.Path(exists=True, file_okay=False),
              help="Proposal cache of the training (and validation) images, from `detect proposals`.")
@click.option("--val-split", default=None,
              help="With --lambdas: choose the ridge lambda by COCO AP on this split.")
@click.option("--lambdas", callback=parse_lambdas, default=None,
              help="Ridge lambdas to try on --val-split, comma-separated (e.g. 100,1000,10000).")
@click.option("--device", default="auto", show_default=True, help="cpu, cuda, cuda:1 or auto.")
@click.option("--batch-size", type=click.IntRange(min=1), default=None,
              help="Regions per forward pass (default: the run's inference.batch_size).")
@click.option("--workers", type=click.IntRange(min=0), default=0, show_default=True,
              help="Image decoding processes (0: decode in the main process).")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="CPU threads of the network (default: torch's, every core; 1 wins on a busy machine).")
@click.argument("overrides", nargs=-1)
def fit_boxes(model, data, split, proposals_dir, val_split, lambdas, device, batch_size, workers, threads,
              overrides) -> None:
    """Fit each member's box regressors (R-CNN) on a data set's cached proposals.

    \b
    Pairs: proposals with IoU >= box_regression.min_iou to a ground-truth box, features: each
    member's pooled region vector; one ridge regression per class and member, written as
    RUN/members/<i>/box_regressor.safetensors (read by `detect run` and Detector.load).
    OVERRIDES are key=value settings of the run's detector.yaml, e.g.
      box_regression.ridge_lambda=100 box_regression.min_iou=0.7
    """
    from backbone.config import load_config
    from detect.config import DetectorConfig
    from detect.data import load_dataset
    from detect.fit_boxes import fit_run

    if lambdas and not val_split:
        raise click.UsageError("--lambdas needs --val-split")
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    run = Path(model)
    if not (run / "detector.yaml").is_file():
        raise InputError(run, "not a detector run (detector.yaml missing; make one with `detect train-detector`)")
    box = load_config(DetectorConfig, run / "detector.yaml", list(overrides)).box_regression
    val = load_dataset(data, split=val_split) if val_split else None
    result = fit_run(run, load_dataset(data, split=split), proposals_dir, box.ridge_lambda, box.min_iou,
                     device=device, batch_size=batch_size or 0, workers=workers, val=val, lambdas=lambdas)
    for row in result["table"]:
        name = "none" if row["lambda"] is None else f"{row['lambda']:g}"
        click.echo(f"lambda {name:>8}  {val_split}: COCO AP {row['coco_ap']:.4f}  VOC12 mAP@0.5 "
                   f"{row['voc12_map50']:.4f}  mAP@0.7 {row['voc12_map70']:.4f}")
    click.echo(f"fitted on {result['pairs']} pairs at lambda {result['lambda']:g}: "
               f"{len(result['files'])} regressors in {run}/members/*/")
