"""Classification training with the paper's recipe (section 6): `train_classifier`.

SGD with momentum 0.9; the learning rate multiplied by 0.96 every 8 epochs; weight decay;
auxiliary losses weighted 0.3; Polyak averaging of the weights (an exponential moving
average, used for evaluation and for the saved model); the augmentation of
`backbone.transforms`. One JSON line per epoch, an atomic checkpoint per epoch, `resume`;
the same code runs alone or under `torchrun` (DistributedDataParallel).

Reproducibility: the data order of epoch e is a permutation seeded by (seed + e), each image's
augmentation is seeded by (seed, e, index) and dropout by (seed, e, rank), so a run resumed
from its epoch-e checkpoint reproduces the uninterrupted run, and the global batch is made of
the same images whatever the number of processes.

Shapes: B images per batch (per process), K classes, S input size.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from backbone import distributed as dist_utils
from backbone.checkpoint import check_finite_loss, load_checkpoint, save_checkpoint
from backbone.config import config_to_dict, save_config
from backbone.data import ImageDataset, derive_seed, scan_image_folder
from backbone.errors import InputError
from backbone.googlenet import GoogLeNetOutputs
from backbone.io import append_jsonl
from backbone.loaders import EpochKeys, start_workers, worker_init
from backbone.models import IMAGENET_MEAN, IMAGENET_STD, ModelMeta, build_model, save_classifier
from backbone.transforms import EvalTransform, TrainTransform

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
    warmup_epochs: float = 0.0  # linear learning-rate ramp from 0 over this many epochs
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


OPTIMIZERS = ("sgd", "adamw")
LR_SCHEDULES = ("step", "cosine")


def cosine_rate(lr: float, progress: float) -> float:
    """A half cosine from `lr` (progress 0) to 0 (progress 1 and after)."""
    return lr * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def learning_rate(cfg: TrainConfig, epoch: float) -> float:
    """The rate at (fractional) `epoch`, after a linear warmup: step decay by lr_gamma every
    lr_step_epochs (the paper's), or a half cosine from lr to 0 over `epochs`."""
    if cfg.lr_schedule == "cosine":
        lr = cosine_rate(cfg.lr, epoch / max(cfg.epochs, 1))
    else:
        lr = cfg.lr * cfg.lr_gamma ** (int(epoch) // cfg.lr_step_epochs)
    if cfg.warmup_epochs > 0 and epoch < cfg.warmup_epochs:
        lr *= epoch / cfg.warmup_epochs
    return lr


class ModelEMA:
    """Polyak averaging: `avg <- d * avg + (1 - d) * w` after every optimizer step.

    d = min(decay, (1 + n) / (10 + n)) at update n (1-based), so that the average forgets the
    random initialisation quickly early in training. Non-float buffers are copied.
    """

    def __init__(self, model: nn.Module, decay: float):
        self.module = copy.deepcopy(unwrap(model)).eval().requires_grad_(False)
        self.decay = decay
        self.updates = 0

    def decay_at(self, n: int) -> float:
        return min(self.decay, (1 + n) / (10 + n))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        d = self.decay_at(self.updates)
        source = unwrap(model).state_dict()
        for name, avg in self.module.state_dict().items():
            if avg.is_floating_point():
                avg.lerp_(source[name].detach(), 1.0 - d)
            else:
                avg.copy_(source[name])

    def state_dict(self) -> dict:
        return {"module": self.module.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state["module"])
        self.updates = int(state["updates"])


def unwrap(model: nn.Module) -> nn.Module:
    """The network inside DistributedDataParallel (or the model itself)."""
    return model.module if isinstance(model, DistributedDataParallel) else model


def classification_loss(out: Tensor | GoogLeNetOutputs, labels: Tensor, aux_weight: float,
                        label_smoothing: float = 0.0) -> Tensor:
    """Cross-entropy of the main logits plus aux_weight times each auxiliary head's; with
    `label_smoothing` e the target puts 1 - e on the label and e spread over all classes."""
    def ce(logits: Tensor) -> Tensor:
        return F.cross_entropy(logits, labels, label_smoothing=label_smoothing)
    if isinstance(out, GoogLeNetOutputs):
        return ce(out.logits) + aux_weight * (ce(out.aux1) + ce(out.aux2))
    return ce(out)


def train_one_epoch(model: nn.Module, ema: ModelEMA, loader: DataLoader, optimizer: torch.optim.Optimizer,
                    cfg: TrainConfig, epoch: int, device: torch.device, scaler: torch.amp.GradScaler,
                    show_progress: bool = True) -> float:
    """One pass over `loader`; returns the mean training objective (main loss plus the weighted
    auxiliary losses) over all processes."""
    model.train()
    use_amp = cfg.amp and device.type == "cuda"
    channels_last = cfg.channels_last
    world = torch.distributed.get_world_size() if dist_utils.is_distributed() else 1
    total = torch.zeros(2, dtype=torch.float64)  # loss x images, images
    bar = tqdm(loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not show_progress,
               leave=False, dynamic_ncols=True)
    tick = time.perf_counter()
    for step, (images, labels) in enumerate(bar):
        lr = learning_rate(cfg, epoch + step / len(loader))
        for group in optimizer.param_groups:
            group["lr"] = lr
        images = images.to(device, non_blocking=True)
        labels = labels.to(device, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.float16, enabled=use_amp):
            loss = classification_loss(model(images), labels, cfg.aux_weight, cfg.label_smoothing)
        check_finite_loss(loss, epoch, step)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        ema.update(model)
        total[0] += loss.item() * len(labels)
        total[1] += len(labels)
        now = time.perf_counter()
        bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{lr:.2e}",
                        img_s=f"{len(labels) * world / max(now - tick, 1e-9):.0f}")
        tick = now
    dist_utils.all_reduce_sum(total)
    return float(total[0] / max(total[1], 1))


@torch.no_grad()
def evaluate(model: nn.Module | Sequence[nn.Module], loader: DataLoader, device: torch.device,
             channels_last: bool = False) -> dict[str, float] | list[dict[str, float]]:
    """Top-1 / top-5 accuracy (percent) of `model` on `loader`, summed over all processes. A list
    of models (raw and averaged weights) is scored in one pass (images decoded once): a list back."""
    models = list(model) if isinstance(model, (list, tuple)) else [model]
    for m in models:
        m.eval()
    hits = torch.zeros(len(models), 3, dtype=torch.float64)  # per model: top-1 hits, top-5 hits, images
    for images, labels in loader:
        images = images.to(device, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        for j, m in enumerate(models):
            logits = m(images).float().cpu()
            top = logits.topk(min(5, logits.shape[1]), dim=1).indices
            correct = top == labels[:, None]
            hits[j] += torch.tensor([correct[:, 0].sum().item(), correct.any(1).sum().item(), len(labels)],
                                    dtype=torch.float64)
    dist_utils.all_reduce_sum(hits)
    n = hits[:, 2].clamp(min=1.0)
    results = [{"top1": 100.0 * h.item() / k.item(), "top5": 100.0 * f.item() / k.item()}
               for h, f, k in zip(hits[:, 0], hits[:, 1], n)]
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
    sampler = EpochKeys(DistributedSampler(train_ds, info.world_size, info.rank, shuffle=True, seed=t.seed))
    if len(train_ds) < t.batch_size:
        raise InputError(data_dir / d.train_split, f"{len(train_ds)} training images, fewer than "
                                                   f"one batch of {t.batch_size}")
    # Own generator: creating an iterator then leaves the global RNG (dropout) alone, with or without workers.
    common = dict(num_workers=t.workers, pin_memory=info.device.type == "cuda", persistent_workers=t.workers > 0,
                  worker_init_fn=worker_init if t.workers else None, generator=torch.Generator().manual_seed(t.seed))
    train_loader = DataLoader(train_ds, t.batch_size // info.world_size, sampler=sampler,
                              drop_last=True, **common)
    val_ds = ImageDataset(val_samples, EvalTransform(m.input_size, tuple(m.mean), tuple(m.std)), cache_mb=d.cache_mb)
    val_loader = DataLoader(val_ds, t.eval_batch_size, sampler=EpochKeys(range(info.rank, len(val_ds), info.world_size)),
                            **common)
    start_workers(train_loader), start_workers(val_loader)
    val_loader.sampler.set_epoch(0)  # the same images every epoch; the train sampler waits for its epoch
    return classes, train_loader, val_loader


def check_train_config(cfg: TrainConfig) -> None:
    """Raise InputError on an optimizer or schedule name we do not know, or a smoothing outside [0, 1)."""
    if cfg.optimizer not in OPTIMIZERS:
        raise InputError(None, f"train.optimizer must be one of {', '.join(OPTIMIZERS)}, got '{cfg.optimizer}'")
    if cfg.lr_schedule not in LR_SCHEDULES:
        raise InputError(None, f"train.lr_schedule must be one of {', '.join(LR_SCHEDULES)}, "
                               f"got '{cfg.lr_schedule}'")
    if not 0.0 <= cfg.label_smoothing < 1.0:
        raise InputError(None, f"train.label_smoothing must be in [0, 1), got {cfg.label_smoothing}")


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """SGD with momentum (the paper's) or AdamW (decoupled decay); weight decay on weights only
    (Caffe's reference puts none on biases)."""
    check_train_config(cfg)
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.momentum, 0.999))
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)


def _seed_epoch(seed: int, epoch: int, rank: int) -> None:
    """Seed the global RNGs (dropout) from (seed, epoch, rank) so a resumed epoch replays exactly."""
    torch.manual_seed(derive_seed(seed, epoch, rank, 1))  # 4 keys: never an image's stream


def _trim_log(path: Path, epochs_done: int) -> None:
    """On resume, drop log lines of epochs after the checkpoint (they will be run again)."""
    if not path.is_file():
        return
    keep = [ln for ln in path.read_text(encoding="utf-8").splitlines()
            if ln.strip() and json.loads(ln).get("epoch", 0) <= epochs_done]
    path.write_text("".join(ln + "\n" for ln in keep), encoding="utf-8")


def train_classifier(cfg: ClassifierConfig, data_dir: str | Path, out_dir: str | Path,
                     resume: bool = False, device: str = "auto") -> Path:
    """Train a classifier on `data_dir/{train,val}`; write the averaged model into `out_dir`.

    `out_dir` receives config.yaml, metrics.jsonl (one line per epoch), checkpoint.pt (after
    every epoch) and the saved classifier (model.safetensors + model.json, the Polyak-averaged
    weights, rewritten after every epoch). Returns `out_dir`.
    """
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    if cfg.train.threads > 0:
        torch.set_num_threads(cfg.train.threads)
    info = dist_utils.init_distributed(device)
    try:
        return _train(cfg, data_dir, out_dir, resume, info)
    finally:
        dist_utils.cleanup()


def _train(cfg: ClassifierConfig, data_dir: Path, out_dir: Path, resume: bool,
           info: dist_utils.DistInfo) -> Path:
    t = cfg.train
    check_train_config(t)
    classes, train_loader, val_loader = build_loaders(cfg, data_dir, info)
    torch.manual_seed(t.seed)  # the same initial weights in every process
    model = build_model(cfg.model.arch, len(classes), cfg.model.width, aux_logits=True,
                        dropout=cfg.model.dropout, aux_dropout=cfg.model.aux_dropout,
                        init=cfg.model.init).to(info.device)
    if t.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(model, t)
    scaler = torch.amp.GradScaler(info.device.type, enabled=t.amp and info.device.type == "cuda")
    ema = ModelEMA(model, t.ema_decay)
    start = 0
    ckpt_path = out_dir / CHECKPOINT_FILE
    if resume:
        start = _restore(ckpt_path, classes, model, ema, optimizer, scaler)
    elif ckpt_path.exists():
        raise InputError(out_dir, "already holds a training run (use --resume to continue it, "
                                  "or choose another --out)")
    if info.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out_dir / CONFIG_FILE)
        _trim_log(out_dir / LOG_FILE, start)
    net = DistributedDataParallel(model, device_ids=[info.device] if info.device.type == "cuda" else None) \
        if info.world_size > 1 else model
    meta = ModelMeta(cfg.model.arch, len(classes), classes, cfg.model.width, cfg.model.input_size,
                     tuple(cfg.model.mean), tuple(cfg.model.std), {"task": "classification"})
    channels_last = t.channels_last
    for epoch in range(start, t.epochs):
        tick = time.perf_counter()
        train_loader.sampler.set_epoch(epoch)  # shuffle and augmentation seeds (EpochKeys)
        _seed_epoch(t.seed, epoch, info.rank)
        loss = train_one_epoch(net, ema, train_loader, optimizer, t, epoch, info.device, scaler, info.is_main)
        raw, avg = evaluate([model, ema.module], val_loader, info.device, channels_last)
        record = {"epoch": epoch + 1, "lr": optimizer.param_groups[0]["lr"], "train_loss": loss,
                  "val_top1": raw["top1"], "val_top5": raw["top5"],
                  "val_top1_avg": avg["top1"], "val_top5_avg": avg["top5"],
                  "seconds": round(time.perf_counter() - tick, 1)}
        if info.is_main:
            append_jsonl(out_dir / LOG_FILE, record)
            state = {"epoch": epoch + 1, "model": model.state_dict(), "ema": ema.state_dict(),
                     "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
                     "classes": classes, "config": config_to_dict(cfg)}
            save_checkpoint(ckpt_path, state)
            save_classifier(out_dir, ema.module, dataclasses.replace(meta, extra={**meta.extra, "epochs": epoch + 1}))
            tqdm.write(f"epoch {epoch + 1}/{t.epochs}  loss {loss:.4f}  val top-1 {raw['top1']:.2f} "
                       f"(averaged {avg['top1']:.2f})  top-5 {raw['top5']:.2f} ({avg['top5']:.2f})  "
                       f"{record['seconds']:.0f}s")
        dist_utils.barrier()
    return out_dir


def _restore(path: Path, classes: list[str], model: nn.Module, ema: ModelEMA,
             optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler) -> int:
    """Load a checkpoint into the training objects; returns the number of epochs already done."""
    state = load_checkpoint(path, map_location="cpu")
    if state.get("classes") != classes:
        raise InputError(path, "checkpoint classes differ from the data's classes")
    try:
        model.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
    except (KeyError, RuntimeError, ValueError) as e:
        raise InputError(path, f"checkpoint does not match this config: {e}") from None
    return int(state["epoch"])
