"""Classification accuracy with test-time crops and model ensembles (paper section 7, Table 3).

For every image each model sees the image's crops (1, 10 or 144, at the model's own input
size, see `backbone.crops`), and the softmax probabilities are averaged over the crops and
then over the models; top-1 / top-5 are read off the averaged probabilities. Models may have
different input sizes and normalisations but must share their classes.

Shapes: M models, B images, n crops per image, K classes, S a model's input size.
Accuracies are percentages.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from backbone.crops import image_crops, normalize
from backbone.errors import InputError
from backbone.io import load_image
from backbone.models import ModelMeta

Sample = tuple[str, int]  # (image path, class index into the models' classes)


class CropDataset(Dataset):
    """Each image as its crops at every input size the ensemble needs.

    Item: ({S: uint8 Tensor[n, 3, S, S]}, label, error). An unreadable image yields no crops and
    its error message, so that one bad file is reported and skipped, not fatal to a long run.
    """

    def __init__(self, samples: Sequence[Sample], n_crops: int, input_sizes: Sequence[int]):
        self.samples = list(samples)
        self.n_crops = n_crops
        self.input_sizes = sorted(set(input_sizes))

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[dict[int, Tensor], int, str]:
        path, label = self.samples[i]
        try:
            image = load_image(path)
        except InputError as e:
            return {}, label, str(e)
        return {s: image_crops(image, self.n_crops, s) for s in self.input_sizes}, label, ""


def collate_crops(items: list) -> tuple[dict[int, Tensor], Tensor, list[str]]:
    """Stack the readable images: ({S: uint8 Tensor[B, n, 3, S, S]}, labels Tensor[B], errors)."""
    good = [it for it in items if not it[2]]
    errors = [it[2] for it in items if it[2]]
    if not good:
        return {}, torch.zeros(0, dtype=torch.long), errors
    crops = {s: torch.stack([it[0][s] for it in good]) for s in good[0][0]}
    return crops, torch.tensor([it[1] for it in good], dtype=torch.long), errors


@torch.no_grad()
def model_probs(model: nn.Module, meta: ModelMeta, crops: Tensor, batch_size: int,
                device: torch.device) -> Tensor:
    """Softmax of one model averaged over each image's crops.

    crops: uint8 `Tensor[B, n, 3, S, S]` (S = meta.input_size). Returns `Tensor[B, K]` float32.
    """
    b, n = crops.shape[:2]
    flat = crops.flatten(0, 1)
    probs = []
    for chunk in flat.split(batch_size):
        x = normalize(chunk.to(device, non_blocking=True), meta.mean, meta.std)
        probs.append(torch.softmax(model(x).float(), dim=1))
    return torch.cat(probs).view(b, n, -1).mean(1).cpu()  # one wait for the device, not one per chunk


def check_ensemble(models: Sequence[tuple[nn.Module, ModelMeta]]) -> list[str]:
    """The classes every model shares; InputError if the models disagree."""
    if not models:
        raise InputError(None, "no model to evaluate")
    classes = models[0][1].classes
    for _, meta in models[1:]:
        if meta.classes != classes:
            raise InputError(None, f"the models do not share their classes ({len(classes)} "
                                   f"vs {len(meta.classes)} classes, or another order)")
    return list(classes)


def topk_hits(probs: Tensor, labels: Tensor, k: int) -> int:
    """How many rows of `probs [B, K]` have their label among the k highest (k capped at K)."""
    top = probs.topk(min(k, probs.shape[1]), dim=1).indices
    return int((top == labels[:, None]).any(dim=1).sum())


def prefix_accuracies(models: Sequence[tuple[nn.Module, ModelMeta]], samples: Sequence[Sample],
                      crops: int = 1, batch_size: int = 64, device: str | torch.device = "cpu",
                      progress: bool = False, workers: int = 0) -> list[dict]:
    """Accuracy of the ensembles of the first 1, 2, ..., M models, in one pass over the data.

    Returns M dicts {"models": m, "crops", "images", "top1", "top5", "skipped": [messages]}.
    """
    classes = check_ensemble(models)
    device = torch.device(device)
    bad = [(p, y) for p, y in samples if not 0 <= y < len(classes)]
    if bad:
        raise InputError(bad[0][0], f"label {bad[0][1]} outside the models' {len(classes)} classes")
    for model, _ in models:
        model.eval().to(device)
    dataset = CropDataset(samples, crops, [meta.input_size for _, meta in models])
    per_batch = max(1, batch_size // crops)  # images per step, so one step is ~batch_size crops
    loader = DataLoader(dataset, batch_size=per_batch, num_workers=workers,
                        collate_fn=collate_crops, pin_memory=device.type == "cuda")
    hits = torch.zeros(len(models), 2, dtype=torch.long)  # [M, (top-1, top-5)]
    seen, skipped = 0, []
    for batch_crops, labels, errors in _progress(loader, progress, crops):
        skipped += errors
        if len(labels) == 0:
            continue
        probs = torch.stack([model_probs(model, meta, batch_crops[meta.input_size], batch_size, device)
                             for model, meta in models])  # [M, B, K]
        ensembles = probs.cumsum(0)  # row m-1: the sum over the first m models (same ranking as the mean)
        for m in range(len(models)):
            hits[m, 0] += topk_hits(ensembles[m], labels, 1)
            hits[m, 1] += topk_hits(ensembles[m], labels, 5)
        seen += len(labels)
    if seen == 0:
        raise InputError(None, f"no readable image among {len(samples)} samples")
    return [{"models": m + 1, "crops": crops, "images": seen,
             "top1": 100.0 * hits[m, 0].item() / seen, "top5": 100.0 * hits[m, 1].item() / seen,
             "skipped": skipped} for m in range(len(models))]


def _progress(loader: DataLoader, show: bool, crops: int):
    if not show:
        return loader
    from backbone.progress import progress

    return progress(loader, desc=f"eval {crops} crop{'s' if crops > 1 else ''}", unit="batch")


def evaluate_accuracy(models: Sequence[tuple[nn.Module, ModelMeta]], samples: Sequence[Sample],
                      crops: int = 1, batch_size: int = 64, device: str | torch.device = "cpu",
                      progress: bool = False, workers: int = 0) -> dict:
    """Top-1 / top-5 (percent) of the ensemble of all `models` with `crops` crops per image.

    models: [(model, meta)] as returned by `load_classifier`; samples: [(image path, label)],
    labels indexing the models' shared classes. Softmax is averaged over crops, then models.
    Returns {"top1", "top5", "images", "models", "crops", "skipped"}.
    """
    return prefix_accuracies(models, samples, crops, batch_size, device, progress, workers)[-1]


def accuracy_table(models: Sequence[tuple[nn.Module, ModelMeta]], samples: Sequence[Sample],
                   crop_counts: Sequence[int] = (1, 10, 144), batch_size: int = 64,
                   device: str | torch.device = "cpu", progress: bool = False,
                   workers: int = 0) -> list[dict]:
    """The rows of the paper's Table 3: the first 1..M models x each crop count.

    Each row: {"models", "crops", "cost" (models x crops), "top1", "top5", "top5_error",
    "delta" (top-5 error minus the first row's), "images", "skipped" (count)}, ordered by
    models, then crops.
    """
    by_crops = {c: prefix_accuracies(models, samples, c, batch_size, device, progress, workers)
                for c in crop_counts}
    rows = [dict(by_crops[c][m], cost=(m + 1) * c, top5_error=100.0 - by_crops[c][m]["top5"])
            for m in range(len(models)) for c in crop_counts]
    for row in rows:
        row["delta"] = row["top5_error"] - rows[0]["top5_error"]
        row["skipped"] = len(row["skipped"])
    return rows


def format_table(rows: list[dict]) -> str:
    """Table 3 of the paper as text (plus top-1, which the paper does not list)."""
    lines = [f"{'':<20} {'models':>6} {'crops':>6} {'cost':>6} {'top-1':>7} {'top-5':>7} "
             f"{'top-5 error':>11} {'vs base':>8}"]
    for r in rows:
        delta = "base" if r is rows[0] else f"{r['delta']:+.2f}%"
        name = row_name(r["models"], r["crops"])
        lines.append(f"{name:<20} {r['models']:>6} {r['crops']:>6} {r['cost']:>6} "
                     f"{r['top1']:>6.2f}% {r['top5']:>6.2f}% {r['top5_error']:>10.2f}% {delta:>8}")
    return "\n".join(lines)


def row_name(models: int, crops: int) -> str:
    """The paper's wording: "1 model 1 crop", "7 models 144 crops"."""
    return f"{models} model{'s' if models > 1 else ''} {crops} crop{'s' if crops > 1 else ''}"

