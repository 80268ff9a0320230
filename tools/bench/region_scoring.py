"""Benchmark `Detector.score_regions` against the bare network, in the same run.

    python tools/bench/region_scoring.py [--device cpu|cuda] [--regions 1000] [--batch-size 64]

One full-width GoogLeNet member (random init: speed does not depend on the weights) with
K+1 = 201 outputs at 224, 1,000 random boxes of a 500x375 image. For float32 and for the fast
setting (the dtype precision "auto" picks here: bfloat16 + channels-last where supported) it
prints:

- crops/s of `score_regions` (load, normalise, warp, network, softmax) and of the bare network
  forward on pre-made tensors of the same batch size, layout and precision; their ratio
  (target >= 0.9: cropping, warping and softmax cost under 10%);
- the agreement of the fast setting with float32 (max |softmax difference| <= 0.02, same top
  class for >= 99% of the regions);
- the share of cropping + warping in score_regions' own stage timings (crops vs network), a
  split that stays meaningful when other processes make the wall-clock ratio noisy;
- crops/s as a fraction of the machine's peak: multiply-adds per crop x 2 x crops/s over the
  matrix-multiply FLOP/s of the same precision, measured here.

Timings alternate ours / bare `--repeats` times and keep the best of each, so that load from
other processes on a shared machine hurts both sides alike.
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
from torch import Tensor, nn

from backbone.device import resolve_device
from backbone.models import ModelMeta, build_model
from detect.config import DetectorConfig
from detect.detector import Detector, resolve_precision


def count_macs(model: nn.Module, size: int) -> int:
    """Multiply-adds of one forward pass of a 1 x 3 x size x size input (convolutions + linear)."""
    total = 0

    def hook(module: nn.Module, inputs: tuple, output: Tensor) -> None:
        nonlocal total
        if isinstance(module, nn.Conv2d):
            k = module.in_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]
            total += output.numel() * k
        elif isinstance(module, nn.Linear):
            total += output.numel() * module.in_features

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.inference_mode():
        model(torch.zeros(1, 3, size, size, device=next(model.parameters()).device))
    for h in handles:
        h.remove()
    return total


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak(device: torch.device, dtype: torch.dtype, n: int = 2048, repeats: int = 5) -> float:
    """Best FLOP/s of an n x n x n matrix multiply in `dtype` on `device`."""
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        torch.mm(a, b)
        sync(device)
        best = min(best, time.perf_counter() - start)
    return 2 * n ** 3 / best


def bare_forward(model: nn.Module, batches: list[Tensor], dtype: torch.dtype | None,
                 device: torch.device) -> float:
    """Seconds for the network alone over pre-made input batches (softmax excluded)."""
    sync(device)
    start = time.perf_counter()
    with torch.inference_mode(), torch.autocast(device.type, dtype=dtype or torch.bfloat16,
                                                enabled=dtype is not None):
        for x in batches:
            model(x)
    sync(device)
    return time.perf_counter() - start


def random_boxes(n: int, width: int, height: int, seed: int = 0) -> Tensor:
    """n boxes with corners uniform in the image and sides of at least 16 px."""
    rng = np.random.default_rng(seed)
    x = np.sort(rng.uniform(0, width, (n, 2)), axis=1)
    y = np.sort(rng.uniform(0, height, (n, 2)), axis=1)
    x[:, 1] = np.maximum(x[:, 1], np.minimum(x[:, 0] + 16, width))
    y[:, 1] = np.maximum(y[:, 1], np.minimum(y[:, 0] + 16, height))
    return torch.tensor(np.stack([x[:, 0], y[:, 0], x[:, 1], y[:, 1]], 1), dtype=torch.float32)


def measure(args: argparse.Namespace, precision: str, image: np.ndarray, boxes: Tensor,
            device: torch.device) -> dict:
    """Time score_regions and the bare forward for one precision setting; keep the probabilities."""
    torch.manual_seed(0)
    model = build_model("googlenet", args.classes + 1, width=args.width, aux_logits=False).to(device)
    with torch.no_grad():  # a random net's softmax is near uniform; peak it as a trained one's is
        model.fc.weight.mul_(args.logit_scale)
    meta = ModelMeta("googlenet", args.classes + 1, ["bg", *map(str, range(args.classes))],
                     width=args.width, input_size=args.crop)
    cfg = DetectorConfig()
    cfg.inference.precision, cfg.inference.batch_size = precision, args.batch_size
    cfg.inference.channels_last = precision != "float32" or args.channels_last_float32
    detector = Detector([(model, meta)], meta.classes[1:], cfg)
    layout = torch.channels_last if cfg.inference.channels_last else torch.contiguous_format
    sizes = [len(boxes[i:i + args.batch_size]) for i in range(0, len(boxes), args.batch_size)]
    batches = [torch.randn(s, 3, args.crop, args.crop, device=device).contiguous(memory_format=layout)
               for s in sizes]
    detector.score_regions(image, boxes[:args.batch_size])  # warm-up: kernels, allocator
    bare_forward(model, batches[:1], detector.dtype, device)
    ours_s, bare_s, probs = float("inf"), float("inf"), None
    detector.timings = dict.fromkeys(detector.timings, 0.0)
    for _ in range(args.repeats):
        start = time.perf_counter()
        probs = detector.score_regions(image, boxes)
        ours_s = min(ours_s, time.perf_counter() - start)
        bare_s = min(bare_s, bare_forward(model, batches, detector.dtype, device))
    dtype = detector.dtype or torch.float32
    peak = matmul_peak(device, dtype)
    macs = count_macs(model, args.crop)
    n = len(boxes)
    if device.type == "cuda":  # the split needs each stage to wait for the GPU; the times above do not
        detector.timed, detector.timings = True, dict.fromkeys(detector.timings, 0.0)
        detector.score_regions(image, boxes)
    t = detector.timings  # summed over the repeats: a stable split even when the machine is busy
    return {"crop_share": t["crops"] / (t["crops"] + t["network"]),
            "precision": precision, "dtype": str(dtype).replace("torch.", ""),
            "channels_last": cfg.inference.channels_last, "ours_crops_per_s": n / ours_s,
            "bare_crops_per_s": n / bare_s, "ratio": bare_s / ours_s, "macs_per_crop": macs,
            "matmul_peak_tflops": peak / 1e12, "fraction_of_peak": macs * 2 * n / ours_s / peak,
            "probs": probs}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="auto", help="cpu, cuda or auto")
    p.add_argument("--regions", type=int, default=1000, help="random boxes scored")
    p.add_argument("--batch-size", type=int, default=16, help="regions per forward pass (Detector default on a CPU: 16)")
    p.add_argument("--width", type=float, default=1.0, help="GoogLeNet width multiplier")
    p.add_argument("--crop", type=int, default=224, help="crop side")
    p.add_argument("--classes", type=int, default=200, help="foreground classes K (ILSVRC: 200)")
    p.add_argument("--repeats", type=int, default=2, help="alternating timings; best kept")
    p.add_argument("--channels-last-float32", action="store_true",
                   help="also use channels-last for the float32 row (default: plain NCHW)")
    p.add_argument("--logit-scale", type=float, default=1.0,
                   help="multiply the classifier weights (peaked softmax, a harder agreement test)")
    p.add_argument("--json", default=None, help="also write the numbers here")
    args = p.parse_args()
    from detect.allocator import loaded_allocator, use_tcmalloc
    use_tcmalloc()  # the allocator `detect` runs with (DETECT_ALLOCATOR; detect/allocator.py)
    print(f"memory allocator: {loaded_allocator()}", flush=True)
    device = resolve_device(args.device)
    image = (np.random.default_rng(0).random((375, 500, 3)) * 255).astype(np.uint8)
    boxes = random_boxes(args.regions, 500, 375)
    fast = resolve_precision("auto", device)
    print(f"device {device}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"fast setting: {fast or 'float32 (no native bf16/fp16 here)'}; {args.regions} regions, "
          f"batch {args.batch_size}, width {args.width}, crop {args.crop}")
    rows = [measure(args, "float32", image, boxes, device)]
    if fast is not None:
        # The fast dtype itself, not "auto": auto would fall back to float32 on disagreement.
        rows.append(measure(args, str(fast).replace("torch.", ""), image, boxes, device))
    for r in rows:
        print(f"{r['dtype']:>8} channels_last={r['channels_last']!s:5}  score_regions {r['ours_crops_per_s']:8.2f} "
              f"crops/s  bare forward {r['bare_crops_per_s']:8.2f} crops/s  ratio {r['ratio']:.3f}  "
              f"({r['macs_per_crop'] / 1e9:.3f} GMAC/crop, matmul peak {r['matmul_peak_tflops']:.3f} TFLOP/s, "
              f"{100 * r['fraction_of_peak']:.1f}% of peak; cropping {100 * r['crop_share']:.1f}% of score_regions' "
              f"crop+network time)")
    report = {"args": vars(args), "device": str(device), "rows": [{k: v for k, v in r.items() if k != "probs"}
                                                                    for r in rows]}
    if len(rows) == 2:
        exact, quick = rows[0]["probs"], rows[1]["probs"]
        diff = (exact - quick).abs().max().item()
        top = (exact.argmax(1) == quick.argmax(1)).float().mean().item()
        speed = rows[1]["ours_crops_per_s"] / rows[0]["ours_crops_per_s"]
        peak_p = exact.max(1).values.mean().item()
        print(f"fast vs float32: {speed:.2f}x crops/s; mean top probability {peak_p:.3f}; max |softmax diff| {diff:.4f} (<= 0.02: "
              f"{'yes' if diff <= 0.02 else 'NO'}); same top class {100 * top:.1f}% (>= 99%: "
              f"{'yes' if top >= 0.99 else 'NO'})")
        report["agreement"] = {"mean_top_probability": peak_p, "max_abs_diff": diff, "top1_agreement": top, "speedup": speed}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
