"""`detect convert-weights`: torchvision's GoogLeNet ImageNet weights as a classifier run folder."""
from __future__ import annotations

import click


@click.command("convert-weights")
@click.option("--torchvision", "weights", required=True, type=click.Path(exists=True, dir_okay=False),
              help="A torchvision googlenet state dict (.pth), e.g. googlenet-1378be20.pth.")
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Classifier run folder to write (model.safetensors + model.json).")
@click.option("--classes", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Class names, one per line, in output order [default: class_0..class_K-1]; "
                   "ImageNet wnids let train-detector and train-classifier --init carry rows by name.")
@click.option("--transform-input/--no-transform-input", default=True, show_default=True,
              help="The weights expect torchvision's transform_input (true for its ImageNet weights): "
                   "record mean = std = 0.5 instead of ImageNet's mean and std.")
def convert_weights(weights, out, classes, transform_input) -> None:
    """Convert torchvision's GoogLeNet weights (a local file) into a classifier run folder.

    The folder (arch torchvision_googlenet, 224 px) is used like a classifier trained here:
    train-classifier --init RUN and train-detector --init RUN start from it, and eval
    --accuracy, summary and run read it. Nothing is downloaded: fetch the file yourself where
    you have a network (torchvision.models.GoogLeNet_Weights.IMAGENET1K_V1.url).
    """
    from backbone.convert import convert_torchvision_weights

    meta = convert_torchvision_weights(weights, out, classes, transform_input)
    click.echo(f"wrote {out}: {meta.arch}, {meta.num_classes} classes, input {meta.input_size}, "
               f"mean {meta.mean}, std {meta.std}")
