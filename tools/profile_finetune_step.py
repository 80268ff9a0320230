"""Where a fine-tuning step's time goes: the real step phase by phase against pre-made crops.

    PYTHONPATH=. python tools/profile_finetune_step.py --width 1.0 --input-size 224 --steps 3 \
        --loader persistent|per-epoch

Runs the steps of `detect.finetune.train_one_epoch` written out phase by phase (waiting for
the loader, R-CNN sampling, image to tensor, cropping, forward, backward, optimizer) over
generated scenes and proposals (tools/bench_training.py's), then the same model's forward /
backward / optimizer on pre-made random crops and on a copy of the last real crops,
alternating, `--repeats` times. Prints seconds per phase summed over the steps.

--loader persistent: the command's loader (`detect.finetune.make_loader`: one worker process,
forked before the model is built and kept for the run). --loader per-epoch: a new
non-persistent DataLoader per epoch, its worker forked from the process that already holds
the model and earlier steps' memory (what train-detector did before the fourth session).
"""
from __future__ import annotations

import argparse
import importlib.util
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F


def _bench_training():
    spec = importlib.util.spec_from_file_location("bench_training", Path(__file__).resolve().parent / "bench_training.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> None:
    from backbone.distributed import DistInfo
    from backbone.models import ModelMeta, build_model
    from detect.config import DetectorConfig
    from detect.finetune import _TrainImages, make_crops, make_loader
    from detect.regions import to_tensor
    from detect.sampling import EpochSteps, sample_minibatch

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--width", type=float, default=1.0, help="GoogLeNet width multiplier")
    p.add_argument("--input-size", type=int, default=224, help="region crop side")
    p.add_argument("--steps", type=int, default=3, help="steps per timed epoch")
    p.add_argument("--regions", type=int, default=128, help="regions per step")
    p.add_argument("--repeats", type=int, default=2, help="alternating rounds")
    p.add_argument("--loader", choices=["persistent", "per-epoch"], default="persistent")
    args = p.parse_args()
    cfg = DetectorConfig()
    ft = cfg.finetune
    ft.workers, ft.batch_regions, ft.fg_per_batch = 1, args.regions, args.regions // 4
    dist = DistInfo(0, 1, 0, torch.device("cpu"))
    tmp = Path(tempfile.mkdtemp())
    records, cache = _bench_training().detector_data(tmp, args.steps * ft.images_per_batch)
    data = _TrainImages(records, cache.root, ft)
    persistent = make_loader(data, dist, 1) if args.loader == "persistent" else None  # before the model
    model = build_model("googlenet", 4, width=args.width, aux_logits=False).to(memory_format=torch.channels_last)
    meta = ModelMeta("googlenet", 4, ["bg", "a", "b", "c"], width=args.width, input_size=args.input_size)
    optimizer = torch.optim.SGD(model.parameters(), lr=ft.lr, momentum=ft.momentum, weight_decay=ft.weight_decay)
    model.train()

    def network(x, y, t: dict) -> None:
        start = time.perf_counter()
        logits = model(x)
        t["forward"] += time.perf_counter() - start
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        (F.cross_entropy(logits.float(), y, reduction="sum") / args.regions).backward()
        t["backward"] += time.perf_counter() - start
        start = time.perf_counter()
        optimizer.step()
        t["optimizer"] += time.perf_counter() - start

    def real(epoch: int) -> tuple[dict, tuple]:
        t = dict.fromkeys(["wait", "sample", "to_tensor", "crops", "forward", "backward", "optimizer"], 0.0)
        if persistent is None:
            sampler = EpochSteps(len(data), ft.images_per_batch)
            loader = torch.utils.data.DataLoader(data, batch_sampler=sampler, num_workers=1, collate_fn=list)
        else:
            loader, sampler = persistent, persistent.batch_sampler
        sampler.set_epoch(0, epoch)
        it, last = iter(loader), None
        for step in range(len(sampler.steps)):
            start = time.perf_counter()
            decoded = next(it)
            t["wait"] += time.perf_counter() - start
            start = time.perf_counter()
            samples = sample_minibatch({i: r for i, _, r in decoded}, sampler.steps[step], ft.batch_regions,
                                       ft.fg_per_batch, ft.mirror, 0, epoch, step)
            t["sample"] += time.perf_counter() - start
            start = time.perf_counter()
            images = {i: to_tensor(img.numpy(), meta.mean, meta.std) for i, img, _ in decoded}
            t["to_tensor"] += time.perf_counter() - start
            start = time.perf_counter()
            x, y = make_crops(images, samples, args.input_size, cfg.regions.context_pad)
            x = x.contiguous(memory_format=torch.channels_last)
            t["crops"] += time.perf_counter() - start
            network(x, y, t)
            last = (x, y)
        return t, last

    def premade(x, y) -> dict:
        t = dict.fromkeys(["forward", "backward", "optimizer"], 0.0)
        for _ in range(args.steps):
            network(x, y, t)
        return t

    gen = torch.Generator().manual_seed(0)
    rand_x = torch.randn(args.regions, 3, args.input_size, args.input_size, generator=gen)
    rand_x = rand_x.contiguous(memory_format=torch.channels_last)
    rand_y = torch.randint(0, 4, (args.regions,), generator=gen)
    premade(rand_x, rand_y)  # warm-up
    def show(name: str, seconds: float, t: dict) -> None:
        print(f"{name:22s} {seconds:7.2f} s   " + "  ".join(f"{k} {v:.2f}" for k, v in t.items()), flush=True)

    print(f"{args.loader} loader, width {args.width}, {args.input_size} px, {args.steps} steps of "
          f"{args.regions} regions, {torch.get_num_threads()} threads (seconds summed over the steps)")
    for r in range(args.repeats):
        start = time.perf_counter()
        t, (x, y) = real(r)
        show("real loop", time.perf_counter() - start, t)
        for name, crops in (("pre-made random crops", (rand_x, rand_y)), ("pre-made real crops", (x.clone(), y.clone()))):
            start = time.perf_counter()
            t = premade(*crops)
            show(name, time.perf_counter() - start, t)


if __name__ == "__main__":
    main()
