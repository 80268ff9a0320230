"""`detect train-classifier`: the paper's classification training from the command line."""
from __future__ import annotations

import click


def option_overrides(section: str, **values: int | None) -> list[str]:
    """"section.key=value" for each option given (not None): the options are shortcuts for
    config settings, and the OVERRIDES written after them win."""
    return [f"{section}.{key}={value}" for key, value in values.items() if value is not None]


@click.command("train-classifier")
@click.option("--data", required=True, type=click.Path(exists=True, file_okay=False),
              help="Folder holding train/ and val/ (one folder per class, or the ILSVRC val layout).")
@click.option("--config", "config_path", required=True, type=click.Path(),
              help="YAML recipe, e.g. configs/imagenet_googlenet.yaml.")
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Run folder: model.safetensors + model.json, config.yaml, metrics.jsonl, checkpoint.pt.")
@click.option("--init", "init_run", type=click.Path(exists=True, file_okay=False), default=None,
              help="Start from this classifier run (train-classifier, convert-weights): its network, "
                   "arch, width, mean and std; the head's rows of classes it knows by name (model.init_run).")
@click.option("--resume", is_flag=True, help="Continue from the run folder's last checkpoint.")
@click.option("--device", default="auto", show_default=True, help="cpu, cuda, cuda:1 or auto.")
@click.option("--batch-size", type=click.IntRange(min=1), default=None,
              help="Images per step, all processes together (train.batch_size).")
@click.option("--workers", type=click.IntRange(min=0), default=None,
              help="Data loading processes per training process (train.workers).")
@click.option("--threads", type=click.IntRange(min=0), default=None,
              help="CPU threads of torch per process, 0 = torch's default (train.threads).")
@click.argument("overrides", nargs=-1)
def train_classifier(data, config_path, out, init_run, resume, device, batch_size, workers, threads,
                     overrides) -> None:
    """Train a GoogLeNet classifier (paper section 6) on an image folder.

    \b
    OVERRIDES are key=value settings of the config, e.g.
      train.epochs=30 train.lr=0.02 model.width=0.5 train.workers=8
    Runs unchanged under `torchrun --nproc_per_node N` (train.batch_size is the global batch).
    """
    from backbone.config import load_config
    from backbone.train import ClassifierConfig
    from backbone.train import train_classifier as train

    shortcuts = option_overrides("train", batch_size=batch_size, workers=workers, threads=threads)
    shortcuts += option_overrides("model", init_run=init_run)
    cfg = load_config(ClassifierConfig, config_path, [*shortcuts, *overrides])
    run_dir = train(cfg, data, out, resume=resume, device=device)
    click.echo(f"model saved in {run_dir}")
