"""`detect train-detector` and `detect run`: the R-CNN detector from the command line."""
from __future__ import annotations

import click

# Placeholder: the fine-tuning engineer replaces this with the real command.
train_detector = click.Command("train-detector")


@click.command("run")
def run() -> None:
    """Detect objects in images (being written)."""
    raise click.UsageError("detect run is not implemented yet")
