"""Training MultiBox: priors by k-means, then plain epochs of the MultiBox loss.

`train_multibox(cfg, samples, out_dir)` takes plain (image path, boxes) pairs, so any data
set reader can feed it. The run folder receives `config.yaml`, `metrics.jsonl` (one line per
epoch), `checkpoint.pt` (atomic, every epoch) and the model (`model.safetensors` +
`multibox.json`, rewritten every epoch). Randomness is derived from (seed, epoch, step), so
`resume=True` continues a killed run exactly as if it had not stopped. Under `torchrun` each
process trains on its share of the images (DistributedDataParallel). The optimizer, schedule,
checkpoints, processes and metrics are `backbone.engine`'s; the loss, the batches (flips with
their boxes) and the recall validation are MultiBox's own.

Shapes: B images, K priors, N ground-truth boxes of an image, S the input side.
"""
from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch
from PIL import Image
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from torchvision.ops import box_iou

from backbone.checkpoint import load_checkpoint
from backbone.config import config_to_dict
from backbone.distributed import DistInfo, all_reduce_sum, barrier
from backbone.engine import (Meter, Schedule, TrainState, check_finite, check_recipe, distributed, load_state,
                             log_epoch, make_optimizer, save_state, seed_epoch, set_lr, start_run, train_sampler,
                             trim_log, unwrap, wrap_ddp)
from backbone.errors import InputError
from backbone.io import load_image
from backbone.models import IMAGENET_MEAN, IMAGENET_STD, load_classifier
from proposals.multibox import (MultiBox, MultiBoxMeta, MultiBoxNet, build_multibox_net, distinct_boxes,
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
    warmup_epochs: float = 1.0  # linear warm-up over these epochs of a cosine decay to zero at the last step
    momentum: float = 0.9  # SGD momentum (sgd only)
    weight_decay: float = 1e-4  # decoupled for adamw, L2 for sgd; weights only, not biases (backbone.engine)
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
    """(image, normalised boxes): uint8 Tensor[3, S, S] and Tensor[N, 4] in [0, 1], or None for
    an image that cannot be decoded (a truncated file passes the header checks): it is left out
    of its batch, with one warning line per process, as `detect proposals` leaves it out."""

    def __init__(self, samples: Sequence[Sample], input_size: int):
        self.samples = list(samples)
        self.input_size = input_size
        self.unreadable: set[Path] = set()

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor] | None:
        path, boxes = self.samples[i]
        try:
            image = load_image(path)
        except InputError as e:
            if path not in self.unreadable:
                self.unreadable.add(path)
                print(f"warning: {e}; left out of training", file=sys.stderr, flush=True)
            return None
        h, w = image.shape[:2]
        scale = torch.tensor([w, h, w, h], dtype=torch.float32)
        pixels = torch.from_numpy(resize_square(image, self.input_size)).permute(2, 0, 1)
        return pixels, (boxes / scale).clamp(0, 1)


def collate(batch: list) -> tuple[Tensor, list[Tensor]]:
    """Images Tensor[B, 3, S, S] and their boxes, the unreadable ones (None) left out."""
    batch = [b for b in batch if b is not None]
    if not batch:
        return torch.zeros(0, 3, 1, 1, dtype=torch.uint8), []
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

def new_meta(cfg: MultiBoxConfig, samples: Sequence[Sample], init_run: str | Path | None,
             device: torch.device) -> tuple[MultiBoxMeta, nn.Module | None]:
    """Priors by k-means on the training boxes; the trunk from a classifier run if given."""
    m, boxes = cfg.model, normalised_boxes(samples)
    k = min(m.num_priors, distinct_boxes(boxes))
    if k < m.num_priors:  # a small data set: as many priors as it has boxes, said once
        print(f"note: {k} distinct training boxes make {k} priors, not model.num_priors={m.num_priors}",
              file=sys.stderr, flush=True)
    priors, std = kmeans_priors(boxes, k, cfg.train.seed, m.min_std)
    arch, width, mean, img_std, extra, trunk = m.arch, m.width, IMAGENET_MEAN, IMAGENET_STD, {}, None
    if init_run is not None:
        trunk, cmeta = load_classifier(init_run, device)
        arch, width, mean, img_std = cmeta.arch, cmeta.width, cmeta.mean, cmeta.std
        extra = {"init": str(init_run)}
    meta = MultiBoxMeta(arch, width, m.input_size, k, m.head_pool, m.head_hidden,
                        priors.tolist(), std.tolist(), tuple(mean), tuple(img_std), extra)
    return meta, trunk


# ----------------------------------------------------------------------------- loops

def train_one_epoch(net: nn.Module, state: TrainState, loader: DataLoader, schedule: Schedule,
                    meta: MultiBoxMeta, cfg: MultiBoxTrainConfig, epoch: int, rank: int, show: bool) -> dict:
    """One pass with `net` (state.model or its DDP wrapper) over batches of images uint8
    Tensor[B, 3, S, S] and their boxes; returns the mean total, match and conf losses over all
    processes, the last learning rate, the images and the steps."""
    priors, prior_std = unwrap(net).priors, unwrap(net).prior_std
    net.train()
    lr = 0.0
    with Meter(priors.device, 3, len(loader), f"epoch {epoch + 1}/{cfg.epochs}", show) as meter:
        for i, (batch, targets) in enumerate(loader):
            if not len(batch):  # every image of this step unreadable (BoxImages)
                continue
            step = epoch * len(loader) + i
            lr = schedule.rate(step)
            set_lr(state.optimizer, lr)
            if cfg.hflip:
                gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step * 101 + rank)
                batch, targets = hflip(batch, targets, torch.rand(len(batch), generator=gen) < 0.5)
            x = normalize(batch.to(priors.device, non_blocking=True), meta.mean, meta.std)
            offsets, logits = net(x)
            # The matching brings every image's costs to the host (Hungarian, scipy), which refuses
            # NaN: the step waits for the device there anyway, so the outputs are checked first.
            check_finite(offsets.detach().sum() + logits.detach().sum(), meter.desc, i)
            loss = multibox_loss(offsets, logits, targets, priors, prior_std, cfg.alpha)
            state.step(loss.total)
            meter.add(len(batch), torch.stack([loss.total, loss.match, loss.conf]) * len(batch), lr)
    (total, match, conf), images, seconds = meter.result()
    return {"loss": total / max(images, 1), "match": match / max(images, 1), "conf": conf / max(images, 1),
            "lr": lr, "images": images, "steps": len(loader), "seconds": round(seconds, 2),
            "images_per_s": round(images / max(seconds, 1e-9), 1)}


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

def make_loader(dataset: BoxImages, t: MultiBoxTrainConfig, info: DistInfo) -> tuple[DataLoader, DistributedSampler]:
    """This process's share of each epoch: batch_size / world_size images per step."""
    sampler = train_sampler(dataset, info, t.seed)
    batch = max(1, t.batch_size // info.world_size)
    loader = DataLoader(dataset, batch, sampler=sampler, num_workers=t.workers, collate_fn=collate,
                        drop_last=len(dataset) // info.world_size >= batch, pin_memory=info.device.type == "cuda",
                        persistent_workers=t.workers > 0)  # forked once per run (backbone.loaders)
    return loader, sampler


def build_network(cfg: MultiBoxConfig, samples: Sequence[Sample], init_run: str | Path | None,
                  resume_from: Path | None, device: torch.device) -> tuple[MultiBoxMeta, MultiBoxNet]:
    """The run's meta and network: the priors of the checkpoint `resume_from`, or new ones (k-means)
    with a trunk from `init_run` or He-initialised."""
    torch.manual_seed(cfg.train.seed)
    if resume_from is not None:
        saved = load_checkpoint(resume_from)["meta"]
        meta, trunk = MultiBoxMeta(**{**saved, "mean": tuple(saved["mean"]), "std": tuple(saved["std"])}), None
    else:
        meta, trunk = new_meta(cfg, samples, init_run, device)
    net = build_multibox_net(meta, trunk, cfg.model.dropout).to(device)
    if trunk is None and resume_from is None:
        he_init_(net.trunk)
    return meta, net


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
    samples = check_samples(samples)
    val_samples = check_samples(val_samples) if val_samples else None
    with distributed(device) as info:
        return _train(cfg, samples, val_samples, Path(out_dir), resume, init_run, info)


def _train(cfg: MultiBoxConfig, samples: list[Sample], val_samples: list[Sample] | None, out_dir: Path,
           resume: bool, init_run: str | Path | None, info: DistInfo) -> Path:
    t, ckpt_path, log_path = cfg.train, out_dir / "checkpoint.pt", out_dir / "metrics.jsonl"
    check_recipe("train", t.optimizer)
    start_run(out_dir, ckpt_path.exists(), resume, cfg, out_dir / "config.yaml", info.is_main)
    resume_from = ckpt_path if resume and ckpt_path.exists() else None
    meta, net = build_network(cfg, samples, init_run, resume_from, info.device)
    state = TrainState(net, make_optimizer(net, t.optimizer, t.lr, t.momentum, t.weight_decay))
    if resume_from is not None:
        load_state(resume_from, state)
    if info.is_main:
        trim_log(log_path, state.epoch)  # lines of epochs that will run again
    loader, sampler = make_loader(BoxImages(samples, meta.input_size), t, info)
    schedule = Schedule(t.lr, t.epochs, len(loader), "cosine", warmup_epochs=t.warmup_epochs)
    model = wrap_ddp(net, info)
    for epoch in range(state.epoch, t.epochs):
        sampler.set_epoch(epoch)
        seed_epoch(t.seed, epoch, info.rank)
        record = {"epoch": epoch + 1, **train_one_epoch(model, state, loader, schedule, meta, t, epoch,
                                                        info.rank, info.is_main)}
        if val_samples:
            record[f"val_recall@{t.eval_iou:g}"] = evaluate_recall(
                net, meta, val_samples, t.eval_top_k, t.eval_iou, info.rank, info.world_size, t.batch_size)
        state.epoch = epoch + 1
        if info.is_main:  # the checkpoint last: a run killed before it redoes this epoch
            log_epoch(log_path, record)
            save_multibox(out_dir, net, meta)
            save_state(ckpt_path, state, meta=dataclasses.asdict(meta), config=config_to_dict(cfg))
        barrier()
    return out_dir
