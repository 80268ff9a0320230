"""Classification training with the paper's recipe (section 6): `train_classifier`.

SGD with momentum 0.9; the learning rate multiplied by 0.96 every 8 epochs; weight decay;
auxiliary losses weighted 0.3; Polyak averaging of the weights (an exponential moving
average, used for evaluation and for the saved model); the augmentation of
`backbone.transforms`. One JSON line per epoch, an atomic checkpoint per epoch, `resume`;
the same code runs alone or under `torchrun` (DistributedDataParallel). The optimizer, the
schedule, the averaging, checkpoints, processes and metrics are `backbone.engine`'s, shared
with the other trainers; this module keeps the loss, the batches and the validation.

Reproducibility: the data order of epoch e is a permutation seeded by (seed + e), each image's
augmentation is seeded by (seed, e, index) and dropout by (seed, e, rank), so a run resumed
from its epoch-e checkpoint reproduces the uninterrupted run, and the global batch is made of
the same images whatever the number of processes.

Shapes: B images per batch (per process), K classes, S input size.
"""
from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader

from backbone import distributed as dist_utils
from backbone.config import config_to_dict
from backbone.data import ImageDataset, scan_image_folder
from backbone.engine import (Meter, ModelEMA, Schedule, TrainState, check_recipe, distributed, load_state, log_epoch,
                             make_optimizer, save_state, seed_epoch, set_lr, start_run, train_sampler, trim_log,
                             wrap_ddp)
from backbone.errors import InputError
from backbone.googlenet import GoogLeNetOutputs
from backbone.loaders import EpochKeys, start_workers, worker_init
from backbone.models import IMAGENET_MEAN, IMAGENET_STD, ModelMeta, build_model, save_classifier
from backbone.transforms import EvalTransform, TrainTransform
from backbone.warm_start import adopt_init_run, start_from

CHECKPOINT_FILE = "checkpoint.pt"
LOG_FILE = "metrics.jsonl"
CONFIG_FILE = "config.yaml"


@dataclass
class ModelConfig:
    arch: str = "googlenet"  # "googlenet" (the paper's) or "torchvision_googlenet"
    width: float = 1.0  # filter-count multiplier; 1.0 is the paper's network
    input_size: int = 224  # side of the square training crop
    dropout: float = 0.4  # dropout before the main classifier (paper: 40%)
    aux_dropout: float = 0.7  # dropout in the auxiliary heads (paper: 70%)
    mean: list[float] = field(default_factory=lambda: list(IMAGENET_MEAN))  # RGB mean, 0..1 scale
    std: list[float] = field(default_factory=lambda: list(IMAGENET_STD))  # RGB std, 0..1 scale
    init: str = "caffe"  # "caffe": the paper's xavier + 0.2 biases; "he": for short runs from scratch
    init_run: str = ""  # start from this classifier run or converted weights (--init); its arch, width, mean, std win
    init_head: str = "match"  # with init_run: "match" carries the rows of classes it knows by name; "fresh": all new


@dataclass
class DataConfig:
    train_split: str = "train"  # sub-folder of --data holding the training images
    val_split: str = "val"  # sub-folder of --data holding the validation images
    min_area: float = 0.08  # smallest random crop, as a fraction of the image area (paper: 8%)
    max_area: float = 1.0  # largest random crop, fraction of the area
    min_aspect: float = 0.75  # smallest crop aspect ratio w/h (paper: 3/4)
    max_aspect: float = 4 / 3  # largest crop aspect ratio w/h (paper: 4/3)
    brightness: float = 0.4  # photometric distortion: brightness factor 1 +- this
    contrast: float = 0.4  # photometric distortion: contrast factor 1 +- this
    saturation: float = 0.4  # photometric distortion: colour saturation factor 1 +- this
    mirror: bool = True  # random horizontal mirror
    cache_mb: float = 0.0  # keep decoded images in memory up to this many MB per loader process (0: off)


@dataclass
class TrainConfig:
    epochs: int = 250  # passes over the training set
    batch_size: int = 32  # GLOBAL batch (split evenly over torchrun processes); Caffe: 32
    optimizer: str = "sgd"  # "sgd" (paper: SGD with momentum) or "adamw" (for short runs)
    lr: float = 0.01  # base learning rate (Caffe reference: 0.01)
    momentum: float = 0.9  # SGD momentum (paper: 0.9); AdamW's beta1
    lr_schedule: str = "step"  # "step" (paper: x lr_gamma every lr_step_epochs) or "cosine" (to 0 at the end)
    weight_decay: float = 2e-4  # L2 on weights, not biases (Caffe reference: 2e-4)
    lr_gamma: float = 0.96  # learning-rate factor applied every lr_step_epochs (paper: 0.96)
    lr_step_epochs: int = 8  # epochs between learning-rate decreases (paper: 8)
    warmup_epochs: float = 0.0  # linear learning-rate ramp over this many epochs (step i: (i + 1) / ramp steps)
    aux_weight: float = 0.3  # weight of each auxiliary classifier's loss (paper: 0.3)
    label_smoothing: float = 0.0  # target mass spread over all classes (paper: none; Inception v3: 0.1)
    ema_decay: float = 0.9999  # Polyak averaging: per-step decay of the weight average
    workers: int = 4  # DataLoader worker processes per training process
    eval_batch_size: int = 100  # images per forward pass during validation (per process)
    seed: int = 0  # seeds initialisation, data order, augmentation and dropout
    amp: bool = True  # float16 mixed precision (CUDA only; ignored on the CPU)
    channels_last: bool = True  # channels-last (NHWC) layout on CPU and CUDA: 2-3x faster CPU steps at batch 256
    threads: int = 0  # CPU threads for torch per process (0: torch's default); 1 wins on a busy machine


@dataclass
class ClassifierConfig:
    model: ModelConfig = field(default_factory=ModelConfig)  # the network
    data: DataConfig = field(default_factory=DataConfig)  # splits and augmentation
    train: TrainConfig = field(default_factory=TrainConfig)  # optimisation


def classification_loss(out: Tensor | GoogLeNetOutputs, labels: Tensor, aux_weight: float,
                        label_smoothing: float = 0.0) -> Tensor:
    """Cross-entropy of the main logits plus aux_weight times each auxiliary head's; with
    `label_smoothing` e the target puts 1 - e on the label and e spread over all classes."""
    def ce(logits: Tensor) -> Tensor:
        return F.cross_entropy(logits, labels, label_smoothing=label_smoothing)
    if isinstance(out, GoogLeNetOutputs):
        return ce(out.logits) + aux_weight * (ce(out.aux1) + ce(out.aux2))
    return ce(out)


def check_train_config(cfg: TrainConfig) -> None:
    """Raise InputError on an optimizer or schedule name we do not know, or a smoothing outside [0, 1)."""
    check_recipe("train", cfg.optimizer, cfg.lr_schedule)
    if not 0.0 <= cfg.label_smoothing < 1.0:
        raise InputError(None, f"train.label_smoothing must be in [0, 1), got {cfg.label_smoothing}")


def make_schedule(cfg: TrainConfig, steps_per_epoch: int) -> Schedule:
    """The paper's step decay (x lr_gamma every lr_step_epochs) or a cosine, after the warm-up."""
    return Schedule(cfg.lr, cfg.epochs, steps_per_epoch, cfg.lr_schedule, cfg.lr_gamma, cfg.lr_step_epochs,
                    cfg.warmup_epochs)


def build_state(model: nn.Module, cfg: TrainConfig, device: torch.device) -> TrainState:
    """The optimizer (no decay on biases: `backbone.engine`), the Polyak average and the float16
    loss scaler (CUDA with amp; a pass-through elsewhere) of `model`."""
    check_train_config(cfg)
    optimizer = make_optimizer(model, cfg.optimizer, cfg.lr, cfg.momentum, cfg.weight_decay)
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.amp and device.type == "cuda")
    return TrainState(model, optimizer, ModelEMA(model, cfg.ema_decay), scaler)


def train_one_epoch(net: nn.Module, state: TrainState, loader: DataLoader, schedule: Schedule,
                    cfg: TrainConfig, epoch: int, device: torch.device, show_progress: bool = True) -> float:
    """One pass over `loader` (batches of images Tensor[B, 3, S, S], labels Tensor[B]) with `net`
    (state.model or its DDP wrapper); returns the mean training objective (main loss plus the
    weighted auxiliary losses) over all processes. The loss stays on the device until the end."""
    net.train()
    use_amp = cfg.amp and device.type == "cuda"
    with Meter(device, 1, len(loader), f"epoch {epoch + 1}/{cfg.epochs}", show_progress) as meter:
        for step, (images, labels) in enumerate(loader):
            lr = schedule.rate(epoch * len(loader) + step)
            set_lr(state.optimizer, lr)
            images = images.to(device, non_blocking=True)
            labels = labels.to(device, non_blocking=True)
            if cfg.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=torch.float16, enabled=use_amp):
                loss = classification_loss(net(images), labels, cfg.aux_weight, cfg.label_smoothing)
            state.step(loss)
            meter.add(len(labels), loss.detach().float()[None] * len(labels), lr)
    sums, count, _ = meter.result()
    return sums[0] / max(count, 1)


@torch.no_grad()
def evaluate(model: nn.Module | Sequence[nn.Module], loader: DataLoader, device: torch.device,
             channels_last: bool = False) -> dict[str, float] | list[dict[str, float]]:
    """Top-1 / top-5 accuracy (percent) of `model` on `loader`, summed over all processes. A list
    of models (raw and averaged weights) is scored in one pass (images decoded once): a list back.
    The counts stay on the device until the end."""
    models = list(model) if isinstance(model, (list, tuple)) else [model]
    for m in models:
        m.eval()
    hits = torch.zeros(len(models), 3, dtype=torch.float64, device=device)  # top-1 hits, top-5 hits, images
    for images, labels in loader:
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        for j, m in enumerate(models):
            logits = m(images).float()
            correct = logits.topk(min(5, logits.shape[1]), dim=1).indices == labels[:, None]
            hits[j, 0] += correct[:, 0].sum()
            hits[j, 1] += correct.any(1).sum()
            hits[j, 2] += len(labels)
    hits = dist_utils.all_reduce_sum(hits).cpu()
    results = [{"top1": 100.0 * h / max(n, 1.0), "top5": 100.0 * f / max(n, 1.0)} for h, f, n in hits.tolist()]
    return results if isinstance(model, (list, tuple)) else results[0]


def build_loaders(cfg: ClassifierConfig, data_dir: Path, info: dist_utils.DistInfo
                  ) -> tuple[list[str], DataLoader, DataLoader]:
    """(classes, train loader, val loader) for this process (sharded under torchrun).

    Their workers are persistent and already started (`backbone.loaders`): call this before
    building the model, and `train_loader.sampler.set_epoch(epoch)` before each epoch.
    """
    classes, train_samples = scan_image_folder(data_dir / cfg.data.train_split)
    _, val_samples = scan_image_folder(data_dir / cfg.data.val_split, classes)
    t, m, d = cfg.train, cfg.model, cfg.data
    if t.batch_size % info.world_size:
        raise InputError(None, f"train.batch_size {t.batch_size} must be divisible by the "
                               f"{info.world_size} processes")
    train_tf = TrainTransform(m.input_size, tuple(m.mean), tuple(m.std), (d.min_area, d.max_area),
                              (d.min_aspect, d.max_aspect), d.brightness, d.contrast, d.saturation, d.mirror)
    train_ds = ImageDataset(train_samples, train_tf, seed=t.seed, cache_mb=d.cache_mb)
    if len(train_ds) < t.batch_size:
        raise InputError(data_dir / d.train_split, f"{len(train_ds)} training images, fewer than "
                                                   f"one batch of {t.batch_size}")
    # Own generator: creating an iterator then leaves the global RNG (dropout) alone, with or without workers.
    common = dict(num_workers=t.workers, pin_memory=info.device.type == "cuda", persistent_workers=t.workers > 0,
                  worker_init_fn=worker_init if t.workers else None, generator=torch.Generator().manual_seed(t.seed))
    train_loader = DataLoader(train_ds, t.batch_size // info.world_size, drop_last=True,
                              sampler=EpochKeys(train_sampler(train_ds, info, t.seed)), **common)
    val_ds = ImageDataset(val_samples, EvalTransform(m.input_size, tuple(m.mean), tuple(m.std)), cache_mb=d.cache_mb)
    val_loader = DataLoader(val_ds, t.eval_batch_size, sampler=EpochKeys(range(info.rank, len(val_ds), info.world_size)),
                            **common)
    start_workers(train_loader), start_workers(val_loader)
    val_loader.sampler.set_epoch(0)  # the same images every epoch; the train sampler waits for its epoch
    return classes, train_loader, val_loader


def train_classifier(cfg: ClassifierConfig, data_dir: str | Path, out_dir: str | Path,
                     resume: bool = False, device: str = "auto") -> Path:
    """Train a classifier on `data_dir/{train,val}`; write the averaged model into `out_dir`.

    `out_dir` receives config.yaml, metrics.jsonl (one line per epoch), checkpoint.pt (after
    every epoch) and the saved classifier (model.safetensors + model.json, the Polyak-averaged
    weights, rewritten after every epoch). `resume` continues from checkpoint.pt (a fresh
    start when there is none). Returns `out_dir`.
    """
    cfg = replace(cfg, model=adopt_init_run(cfg.model))  # the weights of --init fix the network
    with distributed(device, cfg.train.threads) as info:
        return _train(cfg, Path(data_dir), Path(out_dir), resume, info)


def _train(cfg: ClassifierConfig, data_dir: Path, out_dir: Path, resume: bool, info: dist_utils.DistInfo) -> Path:
    t, ckpt_path, log_path = cfg.train, out_dir / CHECKPOINT_FILE, out_dir / LOG_FILE
    check_train_config(t)
    classes, train_loader, val_loader = build_loaders(cfg, data_dir, info)
    start_run(out_dir, ckpt_path.exists(), resume, cfg, out_dir / CONFIG_FILE, info.is_main)
    state = build_state(_network(cfg, classes, info.device), t, info.device)
    if resume and ckpt_path.exists() and load_state(ckpt_path, state).get("classes") != classes:
        raise InputError(ckpt_path, "checkpoint classes differ from the data's classes")
    if info.is_main:
        trim_log(log_path, state.epoch)  # lines of epochs that will run again
    net, schedule = wrap_ddp(state.model, info), make_schedule(t, len(train_loader))
    meta = ModelMeta(cfg.model.arch, len(classes), classes, cfg.model.width, cfg.model.input_size,
                     tuple(cfg.model.mean), tuple(cfg.model.std), {"task": "classification"})
    for epoch in range(state.epoch, t.epochs):
        tick = time.perf_counter()
        train_loader.sampler.set_epoch(epoch)  # shuffle and augmentation seeds (EpochKeys)
        seed_epoch(t.seed, epoch, info.rank)
        loss = train_one_epoch(net, state, train_loader, schedule, t, epoch, info.device, info.is_main)
        raw, avg = evaluate([state.model, state.ema.module], val_loader, info.device, t.channels_last)
        state.epoch = epoch + 1
        record = {"epoch": epoch + 1, "lr": state.optimizer.param_groups[0]["lr"], "train_loss": loss,
                  "val_top1": raw["top1"], "val_top5": raw["top5"],
                  "val_top1_avg": avg["top1"], "val_top5_avg": avg["top5"],
                  "seconds": round(time.perf_counter() - tick, 1)}
        if info.is_main:  # the checkpoint last: a run killed before it redoes this epoch
            log_epoch(log_path, record)
            save_classifier(out_dir, state.ema.module, replace(meta, extra={**meta.extra, "epochs": epoch + 1}))
            save_state(ckpt_path, state, classes=classes, config=config_to_dict(cfg))
        dist_utils.barrier()
    return out_dir


def _network(cfg: ClassifierConfig, classes: list[str], device: torch.device) -> nn.Module:
    """The network with its auxiliary heads, initialised from train.seed (the same in every
    process), or from model.init_run with a head for `classes` (backbone.warm_start)."""
    torch.manual_seed(cfg.train.seed)
    m = cfg.model
    if m.init_run:
        model = start_from(m.init_run, classes, m.init_head, m.dropout, m.aux_dropout)[0].to(device)
    else:
        model = build_model(m.arch, len(classes), m.width, aux_logits=True, dropout=m.dropout,
                            aux_dropout=m.aux_dropout, init=m.init).to(device)
    return model.to(memory_format=torch.channels_last) if cfg.train.channels_last else model
