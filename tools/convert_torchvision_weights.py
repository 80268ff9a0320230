"""Turn torchvision's GoogLeNet ImageNet weights (a local .pth file) into a model folder.

    python tools/convert_torchvision_weights.py googlenet-1378be20.pth --out runs/tv_googlenet \
        [--classes imagenet_classes.txt] [--no-transform-input]

The folder (model.safetensors + model.json, arch torchvision_googlenet) loads with
`backbone.models.load_classifier` and works with every `detect` command, e.g.
`detect eval --accuracy --data VAL_DIR --model runs/tv_googlenet --crops 10`.
Nothing is downloaded: fetch the file yourself where you have a network.
"""
from __future__ import annotations

import sys

import click

from backbone.convert import convert_torchvision_weights
from backbone.errors import InputError


@click.command()
@click.argument("weights", type=click.Path())
@click.option("--out", required=True, type=click.Path(), help="Model folder to write.")
@click.option("--classes", type=click.Path(), default=None,
              help="Class names, one per line, in output order (default class_0..class_K-1).")
@click.option("--transform-input/--no-transform-input", default=True, show_default=True,
              help="The weights expect torchvision's transform_input (true for its ImageNet "
                   "weights): record mean = std = 0.5 instead of ImageNet's mean/std.")
def main(weights: str, out: str, classes: str | None, transform_input: bool) -> None:
    """Convert WEIGHTS (a torchvision googlenet state dict) into the model folder --out."""
    try:
        meta = convert_torchvision_weights(weights, out, classes, transform_input)
    except InputError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(2)
    click.echo(f"wrote {out}: {meta.arch}, {meta.num_classes} classes, input {meta.input_size}, "
               f"mean {meta.mean}, std {meta.std}")


if __name__ == "__main__":
    main()
