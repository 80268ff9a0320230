"""`detect train-classifier`: the paper's classification training from the command line."""
from __future__ import annotations

import click


@click.command("train-classifier")
@click.option("--data", required=True, type=click.Path(exists=True, file_okay=False),
              help="Folder holding train/ and val/ (one folder per class, or the ILSVRC val layout).")
@click.option("--config", "config_path", required=True, type=click.Path(),
              help="YAML recipe, e.g. configs/imagenet_googlenet.yaml.")
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Run folder: model.safetensors + model.json, config.yaml, metrics.jsonl, checkpoint.pt.")
@click.option("--resume", is_flag=True, help="Continue from the run folder's last checkpoint.")
@click.option("--device", default="auto", show_default=True, help="cpu, cuda, cuda:1 or auto.")
@click.argument("overrides", nargs=-1)
def train_classifier(data, config_path, out, resume, device, overrides) -> None:
    """Train a GoogLeNet classifier (paper section 6) on an image folder.

    \b
    OVERRIDES are key=value settings of the config, e.g.
      train.epochs=30 train.lr=0.02 model.width=0.5 train.workers=8
    Runs unchanged under `torchrun --nproc_per_node N` (train.batch_size is the global batch).
    """
    from backbone.config import load_config
    from backbone.train import ClassifierConfig
    from backbone.train import train_classifier as train

    cfg = load_config(ClassifierConfig, config_path, overrides)
    run_dir = train(cfg, data, out, resume=resume, device=device)
    click.echo(f"model saved in {run_dir}")
