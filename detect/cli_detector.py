"""`detect train-detector` and `detect run`: the R-CNN detector from the command line."""
from __future__ import annotations

import click

from backbone.errors import InputError

# Placeholder: the fine-tuning engineer replaces this with the real command.
train_detector = click.Command("train-detector")


@click.command("run", context_settings={"ignore_unknown_options": False})
@click.option("--image", "images", multiple=True, type=click.Path(),
              help="An image file; repeat for several.")
@click.option("--images", "image_dir", type=click.Path(), default=None,
              help="A folder: every image file directly inside it.")
@click.option("--model", default=None, type=click.Path(),
              help="Detector run folder (detect train-detector --out). Default: the built-in model.")
@click.option("--out", default="detections", show_default=True, type=click.Path(),
              help="Output folder: detections.json (COCO results), one PNG per image, run.json.")
@click.option("--device", default="auto", show_default=True, help="cpu, cuda, cuda:1 or auto.")
@click.option("--score-threshold", type=float, default=None,
              help="Drop detections scoring below this (default: the run's inference.score_threshold).")
@click.argument("overrides", nargs=-1)
def run(images, image_dir, model, out, device, score_threshold, overrides) -> None:
    """Detect objects in images with a detector run.

    \b
    OVERRIDES are key=value settings of the run's detector.yaml, e.g.
      inference.nms_iou=0.4 inference.batch_size=16 proposals.selective_search.mode=single
    Exit status: 0 if every image was processed; 1 if some were skipped (unreadable; they
    are listed at the end, the others' results are written); 2 if none could be read.
    """
    from detect.detector import Detector
    from detect.run_images import detect_images, list_images

    paths = [*images, *(list_images(image_dir) if image_dir else [])]
    if not paths:
        raise InputError(None, "no images: give --image PATH (repeatable) or --images DIR")
    settings = {} if score_threshold is None else {"score_threshold": score_threshold}
    detector = Detector.load(model, device, overrides, **settings)
    summary = detect_images(detector, paths, out, progress=len(paths) > 1, echo=click.echo)
    done, skipped = len(summary["images"]), summary["skipped"]
    click.echo(f"{done} image(s) done, results in {out}/detections.json"
               + (f"; {len(skipped)} skipped:" if skipped else ""))
    for item in skipped:
        click.echo(f"  {item['file']}: {item['error']}", err=True)
    if skipped:
        if not done:
            raise InputError(None, "no image could be read")
        raise SystemExit(1)
