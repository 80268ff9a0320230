"""`detect train-detector` and `detect run`: the R-CNN detector from the command line."""
from __future__ import annotations

from pathlib import Path

import click

from backbone.errors import InputError
from detect.visualize import DISPLAY_THRESHOLD

@click.command("train-detector")
@click.option("--data", required=True, type=click.Path(exists=True),
              help="Detection data set: a VOC/ILSVRC root or a COCO instances .json (or a folder with one).")
@click.option("--proposals", "proposals_dir", required=True, type=click.Path(exists=True, file_okay=False),
              help="Proposal cache of the training (and validation) images, from `detect proposals`.")
@click.option("--init", "init_run", required=True, multiple=True, type=click.Path(exists=True, file_okay=False),
              help="Classifier run the members start from (`detect train-classifier --out`). Repeat it "
                   "to start member i from the i-th run, cycling (--init A --init B --members 3: "
                   "A, B, A): members of different classifiers make less alike errors.")
@click.option("--config", "config_path", default=None, type=click.Path(),
              help="Detector YAML, e.g. configs/detector_ilsvrc.yaml (default: R-CNN's settings).")
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Detector run folder (what `detect run --model` and `Detector.load` read).")
@click.option("--members", type=click.IntRange(min=1), default=None,
              help="Ensemble size (default: finetune.members of the config).")
@click.option("--split", default=None,
              help="Training split of a VOC/ILSVRC data set (ImageSets/Main/SPLIT.txt; default: every image).")
@click.option("--val-split", default=None,
              help="Validation split: VOC 2012 mAP@0.5 of each member after every epoch.")
@click.option("--resume", is_flag=True, help="Continue from the run folder's checkpoints.")
@click.option("--device", default="auto", show_default=True, help="cpu, cuda, cuda:1 or auto.")
@click.option("--workers", type=click.IntRange(min=0), default=None,
              help="Data loading processes per training process (finetune.workers).")
@click.option("--threads", type=click.IntRange(min=0), default=None,
              help="CPU threads of torch per process, 0 = torch's default (finetune.threads).")
@click.argument("overrides", nargs=-1)
def train_detector(data, proposals_dir, init_run, config_path, out, members, split, val_split, resume,
                   device, workers, threads, overrides) -> None:
    """Fine-tune an ensemble of GoogLeNet region classifiers, R-CNN style.

    \b
    OVERRIDES are key=value settings of the config, e.g.
      finetune.epochs=4 finetune.lr=0.002 finetune.workers=8 regions.crop_size=224
    Runs unchanged under `torchrun --nproc_per_node N` (each process takes an equal share of
    the images of every mini-batch; finetune.images_per_batch must be a multiple of N).
    """
    from backbone.config import load_config
    from detect.cli_train import option_overrides
    from detect.config import DetectorConfig
    from detect.data import load_dataset
    from detect import finetune, shared_finetune

    shortcuts = option_overrides("finetune", workers=workers, threads=threads)
    cfg = load_config(DetectorConfig, config_path, [*shortcuts, *overrides])
    train = shared_finetune.train_detector if cfg.mode == "shared" else finetune.train_detector
    dataset = load_dataset(data, split=split)
    val = load_dataset(data, split=val_split) if val_split else None
    run_dir = train(cfg, dataset, val, proposals_dir, init_run, out, members=members, resume=resume,
                    device=device)
    from detect.sharding import torchrun_shard
    if (torchrun_shard() or (0, 1))[0] == 0:  # under torchrun: once, from rank 0
        click.echo(f"detector saved in {run_dir} (detect run --model {run_dir} --image PHOTO)")


@click.command("run", context_settings={"ignore_unknown_options": False})
@click.option("--image", "images", multiple=True, type=click.Path(),
              help="An image file; repeat for several.")
@click.option("--images", "image_dir", type=click.Path(), default=None,
              help="A folder: every image file directly inside it.")
@click.option("--model", default=None, type=click.Path(),
              help="Detector run folder (detect train-detector --out). Default: the built-in model.")
@click.option("--out", default="runs/detect", show_default=True, type=click.Path(),
              help="Output folder: detections.json (COCO results), one PNG per image, run.json.")
@click.option("--device", default="auto", show_default=True, help="cpu, cuda, cuda:1 or auto.")
@click.option("--score-threshold", type=click.FloatRange(0.0, 1.0), default=None,
              help="Keep detections scoring at least this in detections.json (default: the run's "
                   "inference.score_threshold, 0.05 for the built-in model).")
@click.option("--display-threshold", type=click.FloatRange(0.0, 1.0), default=DISPLAY_THRESHOLD,
              show_default=True, help="Draw detections scoring at least this in the PNGs (fewer boxes "
                                      "than the JSON keeps, so that the picture reads).")
@click.option("--batch-size", type=click.IntRange(min=1), default=None,
              help="Regions (crops) per forward pass (inference.batch_size; default: 16 on a CPU, 128 on CUDA).")
@click.option("--shard", default=None,
              help="i/n: only images i, i+n, ... into OUT/shard-i-of-n/; join them with "
                   "`detect merge-results OUT`. Under torchrun each rank takes its shard and rank 0 merges.")
@click.option("--workers", type=click.IntRange(min=0), default=None,
              help="Processes computing the next images' proposals while the network scores this "
                   "one (0 = inline; default: cores - 1, at least 1; one image: inline). Results are "
                   "the same at the same --threads.")
@click.option("--proposal-workers", "old_workers", type=click.IntRange(min=0), default=None, hidden=True)
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="CPU threads of the network. Default: on a CPU, the cores the proposal workers "
                   "leave (at least 1), so that proposals and scoring run side by side; one image: "
                   "every core. Scores depend on the thread count only through rounding.")
@click.argument("overrides", nargs=-1)
def run(images, image_dir, model, out, device, score_threshold, display_threshold, batch_size, shard, workers,
        old_workers, threads, overrides) -> None:
    """Detect objects in images with a detector run.

    \b
    OVERRIDES are key=value settings of the run's detector.yaml, e.g.
      inference.nms_iou=0.4 inference.batch_size=16 proposals.selective_search.mode=single
    One --image is detected straight through. Several (--images, a repeated --image, --shard)
    run resumably: a run killed part-way and started again with the same --out continues where
    it stopped (finished images are kept in OUT/.per_image/; another model or config starts over).
    Exit status: 0 if every image was processed; 1 if some were skipped (unreadable; they
    are listed at the end, the others' results are written); 2 if none could be read.
    """
    from detect.detector import Detector
    from detect.run_images import detect_image
    from detect.sharding import parse_shard, torchrun_shard

    paths = _checked_images(images, image_dir)  # before the model loads: a bad input is one line
    part = parse_shard(shard) if shard is not None else torchrun_shard()
    single = len(images) == 1 and image_dir is None and part is None
    workers = thread_split(workers if workers is not None else old_workers, threads, device, single)
    settings = {k: v for k, v in (("score_threshold", score_threshold), ("batch_size", batch_size)) if v is not None}
    if single:  # one picture: the straight path
        detector = Detector.load(model, device, overrides, **settings)
        summary = detect_image(detector, images[0], out, echo=click.echo, display_threshold=display_threshold)
        folder = out
    else:
        summary, folder = _run_batch(paths, model, out, device, settings, shard, part, workers, overrides,
                                     display_threshold)
    done, skipped = len(summary["images"]), summary["skipped"]
    click.echo(f"{done} image(s) done, results in {folder}/detections.json"
               + (f"; {len(skipped)} skipped:" if skipped else ""))
    for item in skipped:
        click.echo(f"  {item['file']}: {item['error']}", err=True)
    if skipped:
        if not done and len(skipped) == 1:  # one image: its own problem is the error
            raise InputError(skipped[0]["file"], skipped[0]["error"])
        if not done:
            raise InputError(None, f"none of the {len(skipped)} images could be read (listed above)")
        raise SystemExit(1)


def _checked_images(images: tuple[str, ...], image_dir: str | None) -> list:
    """The images to run, checked before the model loads (InputError, one line): each --image
    must be a file whose header reads (a folder there points to --images); a folder must hold
    at least one image whose header reads (the others are skipped and listed by the run). A
    single image is decoded whole, since damage past its header shows only then."""
    from backbone.io import check_image, load_image
    from detect.run_images import IMAGE_SUFFIXES, list_images

    for image in images:
        if Path(image).is_dir():
            raise InputError(image, "is a folder; give a folder of images with --images DIR")
        check_image(image)
    listed = list_images(image_dir) if image_dir else []
    if image_dir and not listed:
        raise InputError(image_dir, f"no image files in the folder ({', '.join(IMAGE_SUFFIXES)})")
    if listed and not any(_header_reads(p) for p in listed):
        raise InputError(image_dir, f"none of the {len(listed)} image files can be read")
    paths = [*images, *listed]
    if not paths:
        raise InputError(None, "no images: give --image PATH (repeatable) or --images DIR")
    if len(paths) == 1:
        load_image(paths[0])
    return paths


def _header_reads(path: Path) -> bool:
    from backbone.io import check_image

    try:
        check_image(path)
        return True
    except InputError:
        return False


def thread_split(workers: int | None, threads: int | None, device: str, single: bool) -> int:
    """Set torch's thread count and return the proposal workers. One image proposes inline
    with every core on the network. A folder on a CPU gives the network the cores the workers
    leave, at least 1 (2 cores: 1 worker, 1 thread), rather than torch's every core, which the
    workers would fight for (1.3x slower on 2 cores, docs/performance.md)."""
    import torch

    from backbone.device import resolve_device
    from detect.overlap import default_proposal_workers
    from detect.sharding import cores_per_process

    workers = 0 if single else default_proposal_workers() if workers is None else workers
    if threads is None and workers > 0 and resolve_device(device).type == "cpu":
        threads = max(1, cores_per_process() - workers)
    if threads is not None:
        torch.set_num_threads(threads)
    return workers


def _run_batch(paths: list, model, out, device, settings: dict, shard, part, proposal_workers,
               overrides, display_threshold: float) -> tuple[dict, Path]:
    """`detect run` over several images (or a shard of them): resumable, and under torchrun one
    shard per rank, merged by rank 0. Returns (run.json content, the folder written)."""
    from backbone.distributed import barrier, cleanup, init_distributed
    from detect.detector import Detector
    from detect.run_images import detect_images
    from detect.sharding import merge_shards, shard_folder

    under_torchrun = shard is None and part is not None
    if under_torchrun:
        device = str(init_distributed(device).device)  # one GPU per rank
    positions = list(range(len(paths)))[part[0]::part[1]] if part else None
    detector = Detector.load(model, device, overrides, **settings)
    folder = shard_folder(out, part) if part else Path(out)
    summary = detect_images(detector, [paths[i] for i in positions] if part else paths, folder,
                            progress=len(paths) > 1, echo=click.echo, positions=positions,
                            proposal_workers=0 if len(paths) == 1 else proposal_workers,
                            display_threshold=display_threshold)
    if under_torchrun:
        barrier()
        if part[0] == 0:
            merge_shards(out)
        cleanup()
    return summary, folder


@click.command("merge-results")
@click.argument("out", type=click.Path(exists=True, file_okay=False))
def merge_results(out) -> None:
    """Join the shards of `detect run --shard i/n --out OUT` (OUT/shard-i-of-n/) into
    OUT/detections.json and OUT/run.json, in the order of the whole image list."""
    from detect.sharding import merge_shards

    summary = merge_shards(out)
    click.echo(f"merged {summary['shards']} shards: {len(summary['images'])} image(s), "
               f"{len(summary['skipped'])} skipped; results in {out}/detections.json")
