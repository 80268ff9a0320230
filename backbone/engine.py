"""The training engine of the three trainers (classifier, MultiBox, region classifiers).

Each trainer keeps what is its own (its loss, its batches, its validation) and writes its
epoch loop as a plain for-loop over these parts:

- `make_optimizer`: SGD with momentum or AdamW (beta1 = momentum) over two parameter groups.
  Weight decay applies to the weights of two or more dimensions (convolution and linear
  kernels); every 1-D parameter (biases, normalisation scales and shifts) gets none. Decay
  on a scale or shift only pulls against the level the normalisation is there to set, and
  on a bias it regularises nothing that matters for over-fitting; leaving them out is
  Caffe's reference setting for GoogLeNet and the common practice of timm and of "Bag of
  Tricks for Image Classification" (He et al. 2019, "no bias decay"). One rule, everywhere.
- `Schedule`: the learning rate of every step: step decay (x gamma every step_epochs) or a
  half cosine to 0 at the end of the run, times one linear warm-up, (step + 1) / warm-up steps.
- `ModelEMA`: Polyak averaging of the weights.
- `TrainState`, `save_state`, `load_state`: one optimisation step; atomic checkpoints that
  resume exactly.
- `distributed`, `wrap_ddp`, `train_sampler`, `seed_epoch`: the same code alone or under
  torchrun (DistributedDataParallel, this process's share of the images, its dropout seed).
- `Meter`: per-step sums kept on the device, read (one synchronisation) when the progress bar
  (`backbone.progress`) is due and at the end of the epoch, never per batch; the non-finite-loss
  guard.
- `start_run`, `trim_log`, `log_epoch`: the run folder and its `metrics.jsonl`.

Shapes: V, the statistics a trainer sums per step (`Meter`: the loss first).
"""
from __future__ import annotations

import copy
import json
import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Dataset, DistributedSampler

from backbone import distributed as dist_utils
from backbone.checkpoint import load_checkpoint, save_checkpoint
from backbone.config import save_config
from backbone.data import derive_seed
from backbone.errors import InputError
from backbone.io import append_jsonl, atomic_write_text
from backbone.progress import progress, write

OPTIMIZERS = {  # name -> (parameter groups, lr, momentum) -> optimizer
    "sgd": lambda groups, lr, momentum: torch.optim.SGD(groups, lr=lr, momentum=momentum),
    "adamw": lambda groups, lr, momentum: torch.optim.AdamW(groups, lr=lr, betas=(momentum, 0.999)),
}
SCHEDULES = ("step", "cosine")
PROGRESS_SECONDS = 1.0  # the progress bar reads the device's sums at most this often


# ----------------------------------------------------------------------------- recipe

def check_recipe(section: str, optimizer: str, schedule: str = "step") -> None:
    """InputError naming `section.optimizer` / `section.lr_schedule` on a name not known here."""
    if optimizer not in OPTIMIZERS:
        raise InputError(None, f"{section}.optimizer must be one of {', '.join(OPTIMIZERS)}, got '{optimizer}'")
    if schedule not in SCHEDULES:
        raise InputError(None, f"{section}.lr_schedule must be one of {', '.join(SCHEDULES)}, got '{schedule}'")


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two groups of the trainable parameters: ndim >= 2 with `weight_decay`, 1-D without."""
    params = [p for p in model.parameters() if p.requires_grad]
    return [{"params": [p for p in params if p.ndim > 1], "weight_decay": weight_decay},
            {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0}]


def make_optimizer(model: nn.Module, name: str, lr: float, momentum: float,
                   weight_decay: float) -> torch.optim.Optimizer:
    """SGD (L2 decay, momentum) or AdamW (decoupled decay, betas (momentum, 0.999)); the decay
    is on weights only (module docstring). Frozen parameters are left out."""
    if name not in OPTIMIZERS:
        raise InputError(None, f"optimizer must be one of {', '.join(OPTIMIZERS)}, got '{name}'")
    return OPTIMIZERS[name](param_groups(model, weight_decay), lr, momentum)


@dataclass(frozen=True)
class Schedule:
    """The learning rate of each optimizer step of a run."""
    lr: float  # the peak rate
    epochs: int  # length of the run (the cosine reaches 0 at its end)
    steps_per_epoch: int  # optimizer steps in one epoch
    kind: str = "step"  # "step" or "cosine"
    gamma: float = 0.1  # step: factor applied every step_epochs
    step_epochs: int = 0  # step: epochs between decreases (0: constant)
    warmup_epochs: float = 0.0  # linear warm-up over this many epochs (0: none)

    def rate(self, step: int) -> float:
        """The rate of global step `step` (0-based, counted from the start of the run)."""
        n = max(self.steps_per_epoch, 1)
        epoch = step // n
        if self.kind == "cosine":
            lr = self.lr * 0.5 * (1.0 + math.cos(math.pi * min(step / (n * max(self.epochs, 1)), 1.0)))
        else:
            lr = self.lr * (self.gamma ** (epoch // self.step_epochs) if self.step_epochs > 0 else 1.0)
        warm = self.warmup_epochs * n
        return lr * min(1.0, (step + 1) / warm) if warm > 0 else lr


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


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


# ----------------------------------------------------------------------------- state

@dataclass
class TrainState:
    """What a checkpoint restores: the bare network (never the DDP wrapper), its optimizer, the
    weight average and the float16 loss scaler (both optional), and the epochs done."""
    model: nn.Module
    optimizer: torch.optim.Optimizer
    ema: ModelEMA | None = None
    scaler: torch.amp.GradScaler | None = None
    epoch: int = 0

    def step(self, loss: Tensor) -> None:
        """Backward of `loss` (scaled when there is a scaler), one update, the average after it."""
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            self.optimizer.step()
        if self.ema is not None:
            self.ema.update(self.model)

    def state_dict(self) -> dict:
        state = {"epoch": self.epoch, "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict()}
        if self.ema is not None:
            state["ema"] = self.ema.state_dict()
        if self.scaler is not None:
            state["scaler"] = self.scaler.state_dict()
        return state


def save_state(path: Path, state: TrainState, **extra) -> None:
    """Write `state` and the trainer's `extra` entries to `path` atomically (a kill leaves the
    previous checkpoint whole)."""
    save_checkpoint(path, {**state.state_dict(), **extra})


def load_state(path: Path, state: TrainState) -> dict:
    """Restore `state` from `path` (InputError when it does not fit); returns the whole
    checkpoint so that the trainer can read its own entries."""
    saved = load_checkpoint(path, map_location="cpu")
    try:
        state.model.load_state_dict(saved["model"])
        state.optimizer.load_state_dict(saved["optimizer"])
        if state.ema is not None:
            state.ema.load_state_dict(saved["ema"])
        if state.scaler is not None:
            state.scaler.load_state_dict(saved["scaler"])
        state.epoch = int(saved["epoch"])
    except (KeyError, RuntimeError, ValueError) as e:
        raise InputError(path, f"checkpoint does not match this config: {e}") from None
    return saved


# ----------------------------------------------------------------------------- processes

@contextmanager
def distributed(device: str, threads: int = 0) -> Iterator[dist_utils.DistInfo]:
    """This process's DistInfo for a training run (process group up under torchrun, down after)."""
    if threads > 0:
        torch.set_num_threads(threads)
    info = dist_utils.init_distributed(device)
    try:
        yield info
    finally:
        dist_utils.cleanup()


def unwrap(model: nn.Module) -> nn.Module:
    """The network inside DistributedDataParallel (or the model itself)."""
    return model.module if isinstance(model, DistributedDataParallel) else model


def wrap_ddp(model: nn.Module, info: dist_utils.DistInfo) -> nn.Module:
    """DistributedDataParallel around `model` under torchrun (gradients averaged over the
    processes); the model itself when alone."""
    if info.world_size == 1:
        return model
    return DistributedDataParallel(model, device_ids=[info.device.index] if info.device.type == "cuda" else None)


def train_sampler(dataset: Dataset, info: dist_utils.DistInfo, seed: int) -> DistributedSampler:
    """This process's share of a shuffle of `dataset` (seeded by seed and `set_epoch`)."""
    return DistributedSampler(dataset, info.world_size, info.rank, shuffle=True, seed=seed)


def seed_epoch(seed: int, epoch: int, rank: int) -> None:
    """Seed the global RNG (dropout) from (seed, epoch, rank): a resumed epoch replays exactly."""
    torch.manual_seed(derive_seed(seed, epoch, rank, 1))  # 4 keys: never an image's stream


# ----------------------------------------------------------------------------- metrics

class Meter:
    """One epoch's per-step sums (Tensor[V] on the device) and a host count of items.

    `add` queues one addition and never waits for the device. The sums are read (one
    synchronisation) when the progress bar is due, at most every PROGRESS_SECONDS and only
    when it is shown, and once by `result`. sums[0] is the loss summed over the items: when a
    read finds any sum non-finite, FloatingPointError stops training before anything of the
    epoch is saved, so the last checkpoint is the last good one. Use it as a context manager
    (`with Meter(...) as meter:` around the loop): an error ends the progress bar's line first.
    """

    def __init__(self, device: torch.device, size: int, total_steps: int, desc: str, show: bool):
        self.sums = torch.zeros(size, dtype=torch.float64, device=device)
        self.count, self.steps, self.desc = 0, 0, desc
        self.bar = progress(total=total_steps, desc=desc, disable=not show, leave=False, dynamic_ncols=True)
        self.start = self.shown = time.perf_counter()

    def __enter__(self) -> "Meter":
        return self

    def __exit__(self, *exc) -> None:
        self.bar.close()

    def add(self, count: int, sums: Tensor, lr: float) -> None:
        """Add one step: `count` items (images, regions) and their sums (Tensor[V])."""
        self.sums += sums.detach().to(self.sums.dtype)
        self.count, self.steps = self.count + count, self.steps + 1
        self.bar.update(1)
        now = time.perf_counter()
        if not self.bar.disable and now - self.shown >= PROGRESS_SECONDS:
            values = self._read(self.sums)
            self.bar.set_postfix(loss=f"{values[0] / max(self.count, 1):.3f}", lr=f"{lr:.2e}",
                                 per_s=f"{self.count / (now - self.start):.1f}")
            self.shown = now

    def _read(self, sums: Tensor) -> list[float]:
        values = sums.tolist()  # the synchronisation
        if not all(math.isfinite(v) for v in values):
            raise FloatingPointError(f"non-finite loss in {self.desc} (within its first {self.steps} steps); "
                                     "the last good checkpoint is kept (lower the learning rate and --resume)")
        return values

    def result(self) -> tuple[list[float], int, float]:
        """(sums, count) over all processes and the epoch's seconds; ends the progress bar."""
        self.bar.close()
        total = torch.cat([self.sums, self.sums.new_tensor([float(self.count)])])
        values = self._read(dist_utils.all_reduce_sum(total))
        return values[:-1], int(values[-1]), time.perf_counter() - self.start


def check_finite(value: Tensor, desc: str, step: int) -> None:
    """Stop now on a NaN or infinite loss (or the outputs it is made of): only for a loss that
    waits for the device every step anyway."""
    if not math.isfinite(float(value.detach())):
        raise FloatingPointError(f"non-finite loss in {desc} at step {step}; the last good checkpoint "
                                 "is kept (lower the learning rate and --resume)")


# ----------------------------------------------------------------------------- run folder

def start_run(folder: Path, held: bool, resume: bool, cfg: object, config_path: Path, is_main: bool) -> None:
    """Refuse a folder that `held` a run unless resuming; on the main process create the folder
    and save `cfg` at config_path."""
    if held and not resume:
        raise InputError(folder, "already holds a training run (use --resume to continue it, "
                                 "or choose another --out)")
    if is_main:
        config_path.parent.mkdir(parents=True, exist_ok=True)
        save_config(cfg, config_path)


def trim_log(path: Path, epochs_done: int, **match) -> None:
    """Drop the log lines (of the records equal to `match` on its keys) of epochs after the
    checkpoint (all of them for a fresh start): they will be run again. Rewritten atomically."""
    if not path.is_file():
        return
    lines = [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]

    def keep(record: dict) -> bool:
        return record.get("epoch", 0) <= epochs_done or any(record.get(k) != v for k, v in match.items())

    atomic_write_text(path, "".join(ln + "\n" for ln in lines if keep(json.loads(ln))))


def format_record(record: dict) -> str:
    return "  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in record.items())


def log_epoch(path: Path, record: dict) -> None:
    """Append `record` to the run's metrics.jsonl (flushed: it survives a kill) and print it."""
    append_jsonl(path, record)
    write(format_record(record))

