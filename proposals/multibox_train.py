"""Training MultiBox: priors by k-means, then plain epochs of the MultiBox loss.

`train_multibox(cfg, samples, out_dir)` takes plain (image path, boxes) pairs, so any data
set reader can feed it. The run folder receives `config.yaml`, `metrics.jsonl` (one line per
epoch), `checkpoint.pt` (atomic, every epoch) and the model (`model.safetensors` +
`multibox.json`, rewritten every epoch). Randomness is derived from (seed, epoch, step), so
`resume=True` continues a killed run exactly as if it had not stopped. Under `torchrun` each
process trains on its share of the images (DistributedDataParallel).

Shapes: B images, K priors, N ground-truth boxes of an image, S the input side.
"""
from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from torchvision.ops import box_iou
from tqdm import tqdm

from backbone.checkpoint import check_finite_loss, load_checkpoint, save_checkpoint
from backbone.config import config_to_dict, save_config
from backbone.distributed import all_reduce_sum, barrier, init_distributed
from backbone.errors import InputError
from backbone.io import append_jsonl, load_image
from backbone.models import IMAGENET_MEAN, IMAGENET_STD, load_classifier
from proposals.multibox import (MultiBox, MultiBoxMeta, MultiBoxNet, build_multibox_net,
                                he_init_, kmeans_priors, multibox_loss, normalize, resize_square,
                                save_multibox)

Sample = tuple[Path, Tensor]  # (image path, Tensor[N, 4] xyxy boxes in that image's pixels)


@dataclass
class MultiBoxModelConfig:
    arch: str = "googlenet"  # trunk: "googlenet" (the paper's) or "torchvision_googlenet"
    width: float = 1.0  # trunk filter-count multiplier (googlenet only)
    input_size: int = 224  # images are warped to input_size x input_size
    num_priors: int = 800  # K: boxes (and confidences) predicted per image
    head_pool: int = 3  # trunk features are average-pooled to head_pool x head_pool
    head_hidden: int = 512  # width of the head's image code, prior code and shared hidden layer
    dropout: float = 0.0  # dropout before the outputs (training only)
    min_std: float = 0.01  # floor on a prior's coordinate std (normalised units)


@dataclass
class MultiBoxTrainConfig:
    epochs: int = 30  # passes over the training images
    batch_size: int = 32  # images per step, all processes together under torchrun
    optimizer: str = "adamw"  # "adamw" or "sgd" (momentum)
    lr: float = 1e-3  # peak learning rate, reached after the warmup
    warmup_epochs: float = 1.0  # linear warmup, then cosine decay to zero at the last step
    momentum: float = 0.9  # SGD momentum (sgd only)
    weight_decay: float = 1e-4  # decoupled for adamw, L2 for sgd
    alpha: float = 0.3  # weight of the location term: F = alpha * F_match + F_conf
    hflip: bool = True  # mirror half the images (boxes mirrored with them)
    workers: int = 2  # data loading processes
    seed: int = 0  # k-means, shuffling, flips and dropout derive from it
    eval_top_k: int = 200  # validation recall counts this many boxes per image
    eval_iou: float = 0.5  # IoU at which a ground-truth box counts as recalled


@dataclass
class MultiBoxConfig:
    model: MultiBoxModelConfig = field(default_factory=MultiBoxModelConfig)  # the network
    train: MultiBoxTrainConfig = field(default_factory=MultiBoxTrainConfig)  # the recipe


# ----------------------------------------------------------------------------- data

def check_samples(samples: Sequence[Sample]) -> list[Sample]:
    """Refuse malformed boxes early, naming the image (InputError); returns float32 copies."""
    out = []
    for path, boxes in samples:
        boxes = torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4)
        if not torch.isfinite(boxes).all():
            raise InputError(path, "a ground-truth box has a NaN or infinite coordinate")
        bad = (boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1])
        if bad.any():
            raise InputError(path, f"ground-truth box {boxes[bad][0].tolist()} has x2 <= x1 or y2 <= y1")
        out.append((Path(path), boxes))
    return out


class BoxImages(Dataset):
    """(image, normalised boxes): uint8 Tensor[3, S, S] and Tensor[N, 4] in [0, 1]."""

    def __init__(self, samples: Sequence[Sample], input_size: int):
        self.samples = list(samples)
        self.input_size = input_size

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        path, boxes = self.samples[i]
        image = load_image(path)
        h, w = image.shape[:2]
        scale = torch.tensor([w, h, w, h], dtype=torch.float32)
        pixels = torch.from_numpy(resize_square(image, self.input_size)).permute(2, 0, 1)
        return pixels, (boxes / scale).clamp(0, 1)


def collate(batch: list) -> tuple[Tensor, list[Tensor]]:
    return torch.stack([b[0] for b in batch]), [b[1] for b in batch]


def hflip(images: Tensor, targets: list[Tensor], flip: Tensor) -> tuple[Tensor, list[Tensor]]:
    """Mirror images[i] (Tensor[B, 3, S, S]) and targets[i] (normalised [N, 4]) where flip[i]."""
    images = torch.where(flip.view(-1, 1, 1, 1), images.flip(-1), images)
    mirrored = [torch.stack([1 - t[:, 2], t[:, 1], 1 - t[:, 0], t[:, 3]], 1) if f else t
                for t, f in zip(targets, flip.tolist())]
    return images, mirrored


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) as `load_image` will see it, read from the header (EXIF rotation applied)."""
    try:
        with Image.open(path) as img:
            w, h = img.size
            rotated = img.getexif().get(0x0112, 1) in (5, 6, 7, 8)  # EXIF orientation tag
    except (OSError, SyntaxError, ValueError) as e:
        raise InputError(path, f"cannot read image: {e}") from None
    return (h, w) if rotated else (w, h)


def normalised_boxes(samples: Sequence[Sample]) -> Tensor:
    """All ground-truth boxes divided by their image's size: Tensor[M, 4] in [0, 1]."""
    out = []
    for path, boxes in samples:
        if len(boxes):
            w, h = image_size(path)
            out.append((boxes / torch.tensor([w, h, w, h], dtype=torch.float32)).clamp(0, 1))
    if not out:
        raise InputError(None, "the training samples hold no ground-truth boxes")
    return torch.cat(out)


# ----------------------------------------------------------------------------- recipe

def lr_at(step: int, total_steps: int, warmup_steps: int, base_lr: float) -> float:
    """Linear warmup to base_lr over warmup_steps, then cosine decay to 0 at total_steps."""
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return base_lr * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


OPTIMIZERS = {
    "adamw": lambda params, t: torch.optim.AdamW(params, lr=t.lr, weight_decay=t.weight_decay),
    "sgd": lambda params, t: torch.optim.SGD(params, lr=t.lr, momentum=t.momentum,
                                             weight_decay=t.weight_decay),
}


def build_optimizer(net: nn.Module, t: MultiBoxTrainConfig) -> torch.optim.Optimizer:
    if t.optimizer not in OPTIMIZERS:
        raise InputError(None, f"unknown train.optimizer '{t.optimizer}' (choose from {', '.join(OPTIMIZERS)})")
    return OPTIMIZERS[t.optimizer](net.parameters(), t)


def new_meta(cfg: MultiBoxConfig, samples: Sequence[Sample], init_run: str | Path | None,
             device: torch.device) -> tuple[MultiBoxMeta, nn.Module | None]:
    """Priors by k-means on the training boxes; the trunk from a classifier run if given."""
    m = cfg.model
    priors, std = kmeans_priors(normalised_boxes(samples), m.num_priors, cfg.train.seed, m.min_std)
    arch, width, mean, img_std, extra, trunk = m.arch, m.width, IMAGENET_MEAN, IMAGENET_STD, {}, None
    if init_run is not None:
        trunk, cmeta = load_classifier(init_run, device)
        arch, width, mean, img_std = cmeta.arch, cmeta.width, cmeta.mean, cmeta.std
        extra = {"init": str(init_run)}
    meta = MultiBoxMeta(arch, width, m.input_size, m.num_priors, m.head_pool, m.head_hidden,
                        priors.tolist(), std.tolist(), tuple(mean), tuple(img_std), extra)
    return meta, trunk


# ----------------------------------------------------------------------------- loops

def train_one_epoch(net: nn.Module, loader: DataLoader, optimizer: torch.optim.Optimizer,
                    meta: MultiBoxMeta, cfg: MultiBoxTrainConfig, epoch: int, first_step: int,
                    total_steps: int, warmup_steps: int, rank: int, show: bool) -> dict:
    """One pass; returns the mean total, match and conf losses and the last learning rate."""
    core = getattr(net, "module", net)
    device = core.priors.device
    net.train()
    sums, images, step, lr, start = np.zeros(3), 0, first_step, 0.0, time.time()
    bar = tqdm(loader, desc=f"epoch {epoch}", disable=not show, leave=False)
    for batch, targets in bar:
        lr = lr_at(step, total_steps, warmup_steps, cfg.lr)
        for group in optimizer.param_groups:
            group["lr"] = lr
        if cfg.hflip:
            gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step * 101 + rank)
            batch, targets = hflip(batch, targets, torch.rand(len(batch), generator=gen) < 0.5)
        x = normalize(batch.to(device, non_blocking=True), meta.mean, meta.std)
        offsets, logits = net(x)
        loss = multibox_loss(offsets, logits, targets, core.priors, core.prior_std, cfg.alpha)
        check_finite_loss(loss.total, epoch, step)
        optimizer.zero_grad(set_to_none=True)
        loss.total.backward()
        optimizer.step()
        sums += len(batch) * np.array([loss.total.item(), loss.match.item(), loss.conf.item()])
        images, step = images + len(batch), step + 1
        bar.set_postfix(loss=f"{loss.total.item():.3f}", lr=f"{lr:.2e}",
                        img_s=f"{images / (time.time() - start):.1f}")
    totals = all_reduce_sum(torch.tensor([*sums, images], dtype=torch.float64)).tolist()
    n = max(totals[3], 1)
    return {"loss": totals[0] / n, "match": totals[1] / n, "conf": totals[2] / n, "lr": lr,
            "images": int(totals[3]), "steps": step - first_step}


def recall_at(boxes: Sequence[Tensor], gts: Sequence[Tensor], iou: float = 0.5) -> tuple[int, int]:
    """(ground-truth boxes covered by some box with IoU >= iou, ground-truth boxes in all)."""
    hit = total = 0
    for b, g in zip(boxes, gts):
        total += len(g)
        if len(g) and len(b):
            hit += int((box_iou(g, b).max(dim=1).values >= iou).sum())
    return hit, total


def evaluate_recall(net: MultiBoxNet, meta: MultiBoxMeta, samples: Sequence[Sample],
                    top_k: int, iou: float, rank: int, world_size: int, batch_size: int) -> float:
    """Recall of the top-k boxes over `samples` (each process scores its share)."""
    mine = list(samples)[rank::world_size]
    mb = MultiBox(net, meta, net.priors.device)
    preds = mb.predict_batch([p for p, _ in mine], top_k=top_k, batch_size=batch_size)
    hit, total = recall_at([b for b, _ in preds], [g for _, g in mine], iou)
    counts = all_reduce_sum(torch.tensor([hit, total], dtype=torch.float64)).tolist()
    return counts[0] / max(counts[1], 1.0)


# ----------------------------------------------------------------------------- driver

def make_loader(dataset: BoxImages, t: MultiBoxTrainConfig, world_size: int, rank: int,
                pin: bool) -> tuple[DataLoader, DistributedSampler]:
    """This process's share of each epoch: batch_size / world_size images per step."""
    sampler = DistributedSampler(dataset, world_size, rank, shuffle=True, seed=t.seed)
    batch = max(1, t.batch_size // world_size)
    loader = DataLoader(dataset, batch, sampler=sampler, num_workers=t.workers, collate_fn=collate,
                        drop_last=len(dataset) // world_size >= batch, pin_memory=pin,
                        persistent_workers=t.workers > 0)  # forked once per run (backbone.loaders)
    return loader, sampler


def train_multibox(cfg: MultiBoxConfig, samples: Sequence[Sample], out_dir: str | Path,
                   resume: bool = False, device: str = "auto",
                   val_samples: Sequence[Sample] | None = None,
                   init_run: str | Path | None = None) -> Path:
    """Train MultiBox on `samples` and save the run in `out_dir`; returns `out_dir`.

    Args:
        samples: (image path, Tensor[N, 4] xyxy ground truth in that image's pixels).
        resume: continue from `out_dir/checkpoint.pt` (a fresh start if there is none).
        val_samples: if given, recall@eval_iou of the top eval_top_k boxes is logged per epoch.
        init_run: a classifier run (`train-classifier`) whose weights start the trunk; its
            arch, width and normalisation replace the config's.
    """
    out_dir, t = Path(out_dir), cfg.train
    ckpt_path = out_dir / "checkpoint.pt"
    if ckpt_path.exists() and not resume:
        raise InputError(out_dir, "already holds a MultiBox run; pass --resume or choose another --out")
    samples = check_samples(samples)
    val_samples = check_samples(val_samples) if val_samples else None
    dist = init_distributed(device)
    torch.manual_seed(t.seed)
    ckpt = load_checkpoint(ckpt_path) if resume and ckpt_path.exists() else None
    if ckpt is not None:
        meta, trunk = MultiBoxMeta(**{**ckpt["meta"], "mean": tuple(ckpt["meta"]["mean"]),
                                      "std": tuple(ckpt["meta"]["std"])}), None
    else:
        meta, trunk = new_meta(cfg, samples, init_run, dist.device)
    net = build_multibox_net(meta, trunk, cfg.model.dropout).to(dist.device)
    if trunk is None and ckpt is None:
        he_init_(net.trunk)
    optimizer = build_optimizer(net, t)
    start_epoch = 0
    if ckpt is not None:
        net.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        start_epoch = ckpt["epoch"] + 1
    if dist.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out_dir / "config.yaml")
    model = net if dist.world_size == 1 else nn.parallel.DistributedDataParallel(
        net, device_ids=[dist.device.index] if dist.device.type == "cuda" else None)

    loader, sampler = make_loader(BoxImages(samples, meta.input_size), t, dist.world_size, dist.rank,
                                  dist.device.type == "cuda")
    steps_per_epoch = len(loader)
    total_steps, warmup = steps_per_epoch * t.epochs, int(round(steps_per_epoch * t.warmup_epochs))
    for epoch in range(start_epoch, t.epochs):
        start = time.time()
        sampler.set_epoch(epoch)
        torch.manual_seed(t.seed * 7919 + epoch)  # dropout: the same after a resume
        stats = train_one_epoch(model, loader, optimizer, meta, t, epoch, epoch * steps_per_epoch,
                                total_steps, warmup, dist.rank, dist.is_main)
        record = {"epoch": epoch, **stats, "seconds": round(time.time() - start, 2),
                  "images_per_s": round(stats["images"] / max(time.time() - start, 1e-9), 1)}
        if val_samples:
            record[f"val_recall@{t.eval_iou:g}"] = evaluate_recall(
                net, meta, val_samples, t.eval_top_k, t.eval_iou, dist.rank, dist.world_size, t.batch_size)
        if dist.is_main:
            save_multibox(out_dir, net, meta)
            save_checkpoint(ckpt_path, {"model": net.state_dict(), "optimizer": optimizer.state_dict(),
                                        "epoch": epoch, "meta": dataclasses.asdict(meta),
                                        "config": config_to_dict(cfg)})
            append_jsonl(out_dir / "metrics.jsonl", record)
            tqdm.write(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                for k, v in record.items()))
        barrier()
    if ckpt is not None and start_epoch >= t.epochs and dist.is_main:
        save_multibox(out_dir, net, meta)  # a finished run resumed: make sure the model is there
    return out_dir
