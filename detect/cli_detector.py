"""`detect train-detector` and `detect run`: the R-CNN detector from the command line."""
from __future__ import annotations

import click

from backbone.errors import InputError

@click.command("train-detector")
@click.option("--data", required=True, type=click.Path(exists=True),
              help="Detection data set: a VOC/ILSVRC root or a COCO instances .json (or a folder with one).")
@click.option("--proposals", "proposals_dir", required=True, type=click.Path(exists=True, file_okay=False),
              help="Proposal cache of the training (and validation) images, from `detect proposals`.")
@click.option("--init", "init_run", required=True, type=click.Path(exists=True, file_okay=False),
              help="Classifier run every member starts from (`detect train-classifier --out`).")
@click.option("--config", "config_path", default=None, type=click.Path(),
              help="Detector YAML, e.g. configs/detector_ilsvrc.yaml (default: R-CNN's settings).")
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Detector run folder (what `detect run --model` and `Detector.load` read).")
@click.option("--members", type=int, default=None,
              help="Ensemble size (default: finetune.members of the config).")
@click.option("--split", default=None,
              help="Training split of a VOC/ILSVRC data set (ImageSets/Main/SPLIT.txt; default: every image).")
@click.option("--val-split", default=None,
              help="Validation split: VOC 2012 mAP@0.5 of each member after every epoch.")
@click.option("--resume", is_flag=True, help="Continue from the run folder's checkpoints.")
@click.option("--device", default="auto", show_default=True, help="cpu, cuda, cuda:1 or auto.")
@click.argument("overrides", nargs=-1)
def train_detector(data, proposals_dir, init_run, config_path, out, members, split, val_split, resume,
                   device, overrides) -> None:
    """Fine-tune an ensemble of GoogLeNet region classifiers, R-CNN style.

    \b
    OVERRIDES are key=value settings of the config, e.g.
      finetune.epochs=4 finetune.lr=0.002 finetune.workers=8 regions.crop_size=224
    Runs unchanged under `torchrun --nproc_per_node N` (each process takes an equal share of
    the images of every mini-batch; finetune.images_per_batch must be a multiple of N).
    """
    from backbone.config import load_config
    from detect.config import DetectorConfig
    from detect.data import load_dataset
    from detect.finetune import train_detector as train

    cfg = load_config(DetectorConfig, config_path, overrides)
    dataset = load_dataset(data, split=split)
    val = load_dataset(data, split=val_split) if val_split else None
    run_dir = train(cfg, dataset, val, proposals_dir, init_run, out, members=members, resume=resume,
                    device=device)
    click.echo(f"detector saved in {run_dir} (detect run --model {run_dir} --image PHOTO)")


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
        if not done and len(skipped) == 1:  # one image: its own problem is the error
            raise InputError(skipped[0]["file"], skipped[0]["error"])
        if not done:
            raise InputError(None, f"none of the {len(skipped)} images could be read (listed above)")
        raise SystemExit(1)
