"""`detect data` (summary and problems of a detection data set) and `detect eval --map`."""
from __future__ import annotations

import math
import re
import sys
from pathlib import Path

import click

from backbone.errors import InputError


@click.command("data")
@click.option("--data", required=True, type=click.Path(exists=True),
              help="A VOC/ILSVRC root (Annotations/, JPEGImages/ or Data/), a COCO .json, or a folder with one.")
@click.option("--split", default=None, help="VOC/ILSVRC: ImageSets/Main/SPLIT.txt; COCO folder: the *_SPLIT.json file.")
@click.option("--classes", "class_list", type=click.Path(exists=True), default=None,
              help="Class list file (ID [INDEX] [NAME] per line; ILSVRC synset ids map to names).")
@click.option("--no-image-check", is_flag=True, help="Do not open image headers (faster on huge sets).")
@click.option("--decode", is_flag=True,
              help="Also decode every image in full and list each that cannot be decoded (a truncated "
                   "or corrupt file passes the header check). Costs about the time of reading every image.")
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="--decode: worker processes [default: all cores].")
@click.option("--to-coco", type=click.Path(), default=None, help="Also write the data set as COCO instances JSON.")
def data(data, split, class_list, no_image_check, decode, workers, to_coco) -> None:
    """Print a summary of a detection data set and every problem found in it.

    Exits with status 1 when problems were found, 0 when none.
    """
    from detect.data import load_dataset, write_coco
    from detect.data_report import find_problems, format_summary, summarize
    from detect.sharding import cores_per_process

    errors: list[str] = []
    dataset = load_dataset(data, split=split, class_list=class_list, errors=errors)
    click.echo(format_summary(summarize(dataset)))
    problems = [f"skipped: {e}" for e in errors] + find_problems(
        dataset, check_images=not no_image_check, decode=decode, workers=workers or cores_per_process(),
        progress=True)
    if not dataset.images:
        problems.insert(0, f"{data}: the data set has no images")
    for fix in dataset.fixups:
        click.echo(f"fix-up: {fix}")
    click.echo(f"{len(problems)} problem(s) found" + (":" if problems else ""))
    for p in problems:
        click.echo(f"  {p}")
    if to_coco:
        write_coco(to_coco, dataset)
        click.echo(f"wrote {to_coco}")
    if problems:
        sys.exit(1)


def eval_map(data: str, split: str | None, detections: str | None, models: list[str],
             protocol: str, json_path: str | None, plots: str | None, device: str = "auto",
             batch_size: int = 64, errors: bool = False, iou_thresholds: tuple[float, ...] = (0.5,)) -> dict:
    """`detect eval --map`: evaluate a detections file (or a detector run) on a data set,
    print the per-class AP table and the mean, optionally write JSON and PR-curve PNGs.
    iou_thresholds: one report per threshold from the same detections; with several, the
    returned (and JSON) report is the first one's with the others under "at_iou" by threshold.
    `errors`: also print and report where the mAP goes (`detect.error_analysis`, at the first
    IoU threshold).
    No `detections` and no `models`: the built-in detector is run over the data set."""
    from backbone.io import atomic_write_json
    from detect.data import load_dataset
    from detect.metrics import evaluate_map
    from detect.results import read_detections

    dataset = load_dataset(data, split=split)
    if not dataset.images:
        raise InputError(data, "the data set has no images: nothing to evaluate")
    if detections is not None:
        dets = read_detections(detections, dataset)
    else:
        from detect.cli_detector import thread_split
        from detect.dataset_detections import detect_dataset
        from detect.detector import Detector

        workers = thread_split(None, None, device, single=False)  # as `detect run --images`
        det = Detector.load(models[0] if models else None, device=device)
        dets = detect_dataset(det, dataset, batch_size=batch_size, proposal_workers=workers)
    reports = [evaluate_map(dataset, dets, protocol, iou_threshold=t) for t in iou_thresholds]
    for t, one in zip(iou_thresholds, reports):
        click.echo((f"IoU {t:g}\n" if len(reports) > 1 else "") + format_report(one))
    report = reports[0]
    if len(reports) > 1:
        report["at_iou"] = {f"{t:g}": one for t, one in zip(iou_thresholds[1:], reports[1:])}
    if errors:
        from detect.error_analysis import error_report, format_errors
        report["errors"] = error_report(dataset, dets, iou=iou_thresholds[0])
        click.echo(format_errors(report["errors"]))
    if json_path:
        atomic_write_json(json_path, _json_ready(report))
    if plots:
        n = write_pr_plots(report, plots)
        click.echo(f"wrote {n} precision-recall plots to {plots}")
    return report


def format_report(report: dict) -> str:
    """Per-class table (class, ground truth boxes, detections, AP) and the mean."""
    names = list(report["per_class"])
    width = max([len(n) for n in names] + [5])
    lines = [f"{'class':<{width}}  {'gt':>6}  {'dets':>7}  {'AP':>6}"]
    for name in names:
        ap = report["per_class"][name]
        ap_text = "   n/a" if math.isnan(ap) else f"{ap:6.4f}"
        lines.append(f"{name:<{width}}  {report['num_gt'][name]:>6}  {report['num_det'][name]:>7}  {ap_text}")
    counted = sum(1 for ap in report["per_class"].values() if not math.isnan(ap))
    at = f" at IoU {report['iou_threshold']:g}" if "iou_threshold" in report else ""
    lines.append(f"mAP ({report['protocol']}{at}, mean over {counted} classes with ground truth): "
                 f"{report['mAP']:.4f}")
    for name, value in report.get("stats", {}).items():
        lines.append(f"  {name:<5} {value:.4f}")
    return "\n".join(lines)


def _json_ready(report: dict) -> dict:
    """The report without curves, NaN written as null (JSON has no NaN)."""
    def clean(v):
        return None if isinstance(v, float) and math.isnan(v) else v
    out = {k: v for k, v in report.items() if k != "curves"}
    out["mAP"] = clean(out["mAP"])
    out["per_class"] = {k: clean(v) for k, v in report["per_class"].items()}
    if "at_iou" in out:
        out["at_iou"] = {t: _json_ready(one) for t, one in out["at_iou"].items()}
    return out


def write_pr_plots(report: dict, folder: str | Path) -> int:
    """One PNG per class with ground truth: precision against recall. Returns the count."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from backbone.io import atomic_path

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = 0
    for k, (name, curve) in enumerate(report["curves"].items(), 1):
        ap = report["per_class"][name]
        if math.isnan(ap):
            continue
        fig, ax = plt.subplots(figsize=(4, 4), dpi=80)
        ax.plot(curve["recall"], curve["precision"], drawstyle="steps-post")
        ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="recall", ylabel="precision",
               title=f"{name}: AP {ap:.3f} ({report['protocol']})")
        safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", name)
        with atomic_path(folder / f"pr_{k:03d}_{safe}.png") as tmp:
            fig.savefig(tmp, format="png")
        plt.close(fig)
        written += 1
    return written
