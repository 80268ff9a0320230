"""Quick Fashion-MNIST probes of a training recipe, with the data in memory (no pipeline).

    python tools/probe_fashion_mnist.py --size 48 --lr 0.004 --wd 0 --shift 3 --ls 0.1 --epochs 10

What it is for: comparing optimisers, rates, widths and input sizes of the narrow GoogLeNet in
minutes, before paying for a run of `detect train-classifier` (docs/classification.md, "third
round"). What it is not: the paper's pipeline. The 60,000 training images sit in one tensor,
resized once to --size; the only augmentation is a random shift of up to --shift pixels (zero
padding) and a mirror, applied to the whole batch as tensor operations; the 10,000 test
images are resized whole (no centre crop) and scored with the raw weights (and the averaged
ones with --ema) after every epoch. Channels-last float32, AdamW or SGD, a linear warm-up then
a cosine to 0. One JSON line per epoch on stdout.

Reads the IDX files of the Debian package `dataset-fashion-mnist` (or --src).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from backbone.data import read_idx
from backbone.models import build_model
from backbone.train import classification_loss, cosine_rate

MEAN, STD = 0.286, 0.353  # Fashion-MNIST grey level


def load_split(src: Path, prefix: str, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(images Tensor[N, 1, size, size] normalised, labels Tensor[N]) of one IDX split."""
    images = next(src.glob(f"{prefix}-images*"))
    labels = next(src.glob(f"{prefix}-labels*"))
    x = torch.from_numpy(read_idx(images).copy()).float().div(255).unsqueeze(1)
    y = torch.from_numpy(read_idx(labels).copy()).long()
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return (x - MEAN) / STD, y


def shift_and_mirror(x: torch.Tensor, shift: int, gen: torch.Generator) -> torch.Tensor:
    """Each image moved by up to `shift` px in x and y (zeros fill in) and mirrored with p 1/2."""
    b, _, s, _ = x.shape
    if shift:
        padded = F.pad(x, (shift,) * 4)
        dy = torch.randint(0, 2 * shift + 1, (b,), generator=gen)
        dx = torch.randint(0, 2 * shift + 1, (b,), generator=gen)
        idx = torch.arange(s)
        rows = (dy[:, None] + idx)[:, None, :, None].expand(b, 1, s, s + 2 * shift)
        x = padded.gather(2, rows)
        cols = (dx[:, None] + idx)[:, None, None, :].expand(b, 1, s, s)
        x = x.gather(3, cols)
    flip = torch.rand(b, generator=gen) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(3), x)


@torch.inference_mode()
def top1(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    hits = 0
    for i in range(0, len(x), 1000):
        batch = x[i:i + 1000].expand(-1, 3, -1, -1).contiguous(memory_format=torch.channels_last)
        hits += (model(batch).argmax(1) == y[i:i + 1000]).sum().item()
    model.train()
    return hits / len(x)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--src", type=Path, default=Path("/usr/share/datasets/fashion-mnist"),
                   help="folder of the IDX files")
    p.add_argument("--width", type=float, default=0.25, help="GoogLeNet width multiplier")
    p.add_argument("--size", type=int, default=32, help="input side the images are resized to")
    p.add_argument("--bs", type=int, default=256, help="batch size")
    p.add_argument("--opt", choices=["adamw", "sgd"], default="adamw", help="optimiser")
    p.add_argument("--lr", type=float, default=0.002, help="peak learning rate")
    p.add_argument("--wd", type=float, default=0.05, help="weight decay (weights only)")
    p.add_argument("--epochs", type=float, default=12, help="passes over the training images")
    p.add_argument("--warmup", type=float, default=0.3, help="linear warm-up, in epochs")
    p.add_argument("--shift", type=int, default=3, help="largest random shift in pixels")
    p.add_argument("--ls", type=float, default=0.0, help="label smoothing")
    p.add_argument("--aux", type=float, default=0.3, help="weight of each auxiliary loss")
    p.add_argument("--ema", type=float, default=0.0, help="also score a weight average of this decay")
    p.add_argument("--init", choices=["he", "caffe"], default="he", help="initialisation")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    print(json.dumps(vars(a), default=str), flush=True)
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    x_train, y_train = load_split(a.src, "train", a.size)
    x_test, y_test = load_split(a.src, "t10k", a.size)
    model = build_model("googlenet", 10, width=a.width, aux_logits=True, dropout=0.0, aux_dropout=0.0,
                        init=a.init).to(memory_format=torch.channels_last)
    groups = [{"params": [q for q in model.parameters() if q.ndim > 1], "weight_decay": a.wd},
              {"params": [q for q in model.parameters() if q.ndim <= 1], "weight_decay": 0.0}]
    opt = (torch.optim.AdamW(groups, a.lr) if a.opt == "adamw"
           else torch.optim.SGD(groups, a.lr, momentum=0.9, nesterov=True))
    ema = None
    if a.ema:
        ema = torch.optim.swa_utils.AveragedModel(
            model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(a.ema))
    per_epoch = len(x_train) // a.bs
    total, warm = int(a.epochs * per_epoch), max(1, int(a.warmup * per_epoch))
    gen = torch.Generator().manual_seed(a.seed)
    step, start = 0, time.perf_counter()
    while step < total:
        order = torch.randperm(len(x_train), generator=gen)
        for i in range(min(per_epoch, total - step)):
            idx = order[i * a.bs:(i + 1) * a.bs]
            batch = shift_and_mirror(x_train[idx], a.shift, gen).expand(-1, 3, -1, -1)
            batch = batch.contiguous(memory_format=torch.channels_last)
            lr = a.lr * step / warm if step < warm else cosine_rate(a.lr, (step - warm) / max(1, total - warm))
            for g in opt.param_groups:
                g["lr"] = lr
            loss = classification_loss(model(batch), y_train[idx], a.aux, a.ls)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if ema is not None:
                ema.update_parameters(model)
            step += 1
        record = {"epoch": round(step / per_epoch, 2), "loss": round(loss.item(), 3),
                  "top1": top1(model, x_test, y_test), "seconds": round(time.perf_counter() - start)}
        if ema is not None:
            record["top1_averaged"] = top1(ema.module, x_test, y_test)
        print(json.dumps(record), flush=True)


if __name__ == "__main__":
    main()
