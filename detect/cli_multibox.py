"""`detect train-multibox`: train the MultiBox proposal network on a detection data set."""
from __future__ import annotations

import click


@click.command("train-multibox")
@click.option("--data", required=True, type=click.Path(exists=True),
              help="Detection data set: a VOC/ILSVRC folder or a COCO instances JSON (or its folder).")
@click.option("--config", "config_path", required=True, type=click.Path(),
              help="YAML recipe, e.g. configs/demo_multibox.yaml.")
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Run folder: model.safetensors + multibox.json, config.yaml, metrics.jsonl, checkpoint.pt.")
@click.option("--split", default=None, help="Training split (VOC/ILSVRC ImageSets/Main/SPLIT.txt, COCO file suffix).")
@click.option("--val-split", default=None, help="If given, recall of the top boxes on this split is logged per epoch.")
@click.option("--init", "init_run", type=click.Path(exists=True, file_okay=False), default=None,
              help="Start the trunk from this classifier run (`train-classifier`); its arch and width are used.")
@click.option("--resume", is_flag=True, help="Continue from the run folder's last checkpoint.")
@click.option("--device", default="auto", show_default=True, help="cpu, cuda, cuda:1 or auto.")
@click.option("--batch-size", type=click.IntRange(min=1), default=None,
              help="Images per step, all processes together (train.batch_size).")
@click.option("--workers", type=click.IntRange(min=0), default=None,
              help="Data loading processes (train.workers).")
@click.argument("overrides", nargs=-1)
def train_multibox(data, config_path, out, split, val_split, init_run, resume, device, batch_size, workers,
                   overrides) -> None:
    """Train MultiBox (class-agnostic boxes from k-means priors) on a detection data set.

    \b
    OVERRIDES are key=value settings of the config, e.g.
      train.epochs=20 train.alpha=0.3 model.num_priors=800 model.width=0.5
    Runs unchanged under `torchrun --nproc_per_node N` (train.batch_size is the global batch).
    """
    from backbone.config import load_config
    from detect.cli_train import option_overrides
    from detect.data import load_dataset
    from proposals.multibox_train import MultiBoxConfig
    from proposals.multibox_train import train_multibox as train

    shortcuts = option_overrides("train", batch_size=batch_size, workers=workers)
    cfg = load_config(MultiBoxConfig, config_path, [*shortcuts, *overrides])
    samples = [(rec.path, rec.boxes) for rec in load_dataset(data, split).images]
    val = [(rec.path, rec.boxes) for rec in load_dataset(data, val_split).images] if val_split else None
    run_dir = train(cfg, samples, out, resume=resume, device=device, val_samples=val, init_run=init_run)
    click.echo(f"MultiBox model saved in {run_dir}")
