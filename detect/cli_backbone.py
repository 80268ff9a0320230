"""`detect summary` and `detect eval --accuracy`: the network and its classification testing."""
from __future__ import annotations

from pathlib import Path

import click

from backbone.errors import InputError

# backbone.models.ARCHS by name (that module imports torch, which `detect --help` must not
# wait for; tests/test_cli_vocabulary.py checks the two agree).
ARCH_NAMES = ("googlenet", "torchvision_googlenet")


@click.command("summary")
@click.option("--arch", type=click.Choice(ARCH_NAMES), default="googlenet", show_default=True,
              help="The paper's network or torchvision's variant.")
@click.option("--width", default=1.0, show_default=True, help="Filter-count multiplier (googlenet).")
@click.option("--input-size", default=224, show_default=True, help="Side of the square input.")
@click.option("--num-classes", default=1000, show_default=True, help="Classifier outputs.")
@click.option("--aux/--no-aux", default=False, show_default=True,
              help="Also list the auxiliary classifiers (training only; kept out of the totals).")
@click.option("--model", "run_dir", type=click.Path(exists=True), default=None,
              help="Summarize a saved model folder (its arch, width, input size and classes).")
def summary(arch: str, width: float, input_size: int, num_classes: int, aux: bool,
            run_dir: str | None) -> None:
    """Print the network as Table 1 of the paper: per layer the output size, parameters and
    multiply-adds (convolutions and linear layers), then the totals."""
    from backbone.models import read_meta
    from backbone.summary import build_summary, format_summary

    if run_dir is not None:
        meta = read_meta(run_dir)
        arch, width, input_size, num_classes = meta.arch, meta.width, meta.input_size, meta.num_classes
    click.echo(format_summary(build_summary(arch, width, input_size, num_classes, aux)))


def labelled_samples(data: str | Path, classes: list[str]) -> list[tuple[str, int]]:
    """The images of `data` labelled with indices into the model's `classes`.

    Folder / label names must be among the model's class names, except for a model whose names
    are the placeholders "class_0".."class_{K-1}" (e.g. converted torchvision weights without
    a classes file): its outputs are then taken to follow the sorted folder names.
    """
    from backbone.data import scan_image_folder

    placeholders = classes == [f"class_{i}" for i in range(len(classes))]
    try:
        _, samples = scan_image_folder(data, classes)
    except InputError:
        if not placeholders:
            raise
        names, samples = scan_image_folder(data)
        if len(names) != len(classes):
            raise InputError(data, f"{len(names)} classes here, the model has {len(classes)}") from None
        click.echo(f"note: the model's classes are unnamed; assuming they follow the {len(names)} "
                   "sorted class names of the data", err=True)
    return [(str(p), y) for p, y in samples]


def eval_accuracy(data: str, models: list[str], crops: int, table: bool, json_path: str | None,
                  device: str, batch_size: int, workers: int) -> dict:
    """`detect eval --accuracy`: top-1 / top-5 of one model or an ensemble at 1/10/144 crops.

    With `table`, the paper's Table 3 layout: the first 1..M models (in the order given) x
    every crop count from 1 up to `crops` (1; 1 and 10; or 1, 10 and 144).
    """
    from backbone.device import resolve_device
    from backbone.evaluate import accuracy_table, evaluate_accuracy, format_table
    from backbone.io import atomic_write_json
    from backbone.models import load_classifier

    dev = resolve_device(device)
    loaded = [load_classifier(run, dev) for run in models]
    samples = labelled_samples(data, loaded[0][1].classes)
    click.echo(f"{len(samples)} images, {len(loaded)} model{'s' * (len(loaded) > 1)}, "
               f"{crops} crop{'s' * (crops > 1)} per image, on {dev}", err=True)
    if table:
        counts = [c for c in (1, 10, 144) if c <= crops]
        rows = accuracy_table(loaded, samples, counts, batch_size, dev, True, workers)
        click.echo(format_table(rows))
        result = {"data": str(data), "models": list(models), "rows": rows}
        skipped = rows[0]["skipped"]
    else:
        result = evaluate_accuracy(loaded, samples, crops, batch_size, dev, True, workers)
        click.echo(f"top-1 {result['top1']:.2f}%  top-5 {result['top5']:.2f}%  "
                   f"({result['images']} images)")
        for message in result["skipped"][:5]:
            click.echo(f"skipped: {message}", err=True)
        skipped = len(result["skipped"])
        result = dict(result, data=str(data), models=list(models))
    if skipped:
        click.echo(f"{skipped} unreadable image(s) skipped", err=True)
    if json_path:
        atomic_write_json(json_path, result)
    return result
