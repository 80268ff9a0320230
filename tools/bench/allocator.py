"""Benchmark the memory allocator: glibc's malloc against tcmalloc, in the same run.

    python tools/bench/allocator.py [--workloads score,train,score-demo,train-demo] [--repeats 2] [--threads 2]

Why `detect` restarts itself with tcmalloc (`detect.allocator`): each workload runs in a fresh
child process, once with the system allocator and once with tcmalloc preloaded, alternating
`--repeats` times (best of each kept, so that other load hurts both alike). Each child checks
that it runs the allocator it was given. Printed per workload: ms per iteration, the kernel
time and minor page faults per iteration (glibc's malloc returns large freed blocks to the
kernel, which faults and zeroes them again on the next batch) and the speed-up.

Workloads (random weights and inputs: speed does not depend on them):
- score:      full-width GoogLeNet (201 outputs) at 224, batch 16, bfloat16 autocast where the
              CPU has it, channels-last, inference: `detect run`'s network pass on this CPU;
- train:      full width at 224, batch 32, float32, forward + backward + SGD step;
- score-demo: the demo members' size (width 0.25, 48 px), batch 256, float32, inference;
- train-demo: width 0.25 at 48 px, batch 128, one fine-tuning step.
Needs a tcmalloc library (Debian/Ubuntu: apt-get install libtcmalloc-minimal4).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

from detect.allocator import ENV_CHOICE, ENV_TRIED, find_tcmalloc, loaded_allocator, preload_env

# name: (width, input size, batch, train?, bfloat16?, timed iterations)
WORKLOADS = {
    "score": (1.0, 224, 16, False, True, 8),
    "train": (1.0, 224, 32, True, False, 2),
    "score-demo": (0.25, 48, 256, False, False, 20),
    "train-demo": (0.25, 48, 128, True, False, 20),
}


def child(name: str, threads: int, expected: str) -> None:
    """Run one workload here; print a JSON line of its timings."""
    import torch

    from backbone.models import build_model

    actual = loaded_allocator()
    if actual != expected:
        raise SystemExit(f"expected the {expected} allocator in the child, found {actual}")
    torch.set_num_threads(threads)
    width, size, batch, train, bf16, iters = WORKLOADS[name]
    bf16 = bf16 and torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    model = build_model("googlenet", 201 if width == 1.0 else 11, width=width, aux_logits=False)
    model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, size, size, generator=gen).contiguous(memory_format=torch.channels_last)

    def step() -> None:
        if train:
            model.train()
            optimizer.zero_grad(set_to_none=True)
            model(x).float().logsumexp(1).mean().backward()
            optimizer.step()
        else:
            model.eval()
            with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                model(x)

    step()  # warm-up: one-time allocations and kernel selection
    before = resource.getrusage(resource.RUSAGE_SELF)
    start = time.perf_counter()
    for _ in range(iters):
        step()
    seconds = (time.perf_counter() - start) / iters
    after = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({"s": seconds, "sys": (after.ru_stime - before.ru_stime) / iters,
                      "faults": (after.ru_minflt - before.ru_minflt) / iters, "bf16": bf16}))


def run_child(name: str, threads: int, allocator: str, library: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", ENV_TRIED)}
    env[ENV_CHOICE] = "system"  # the child never restarts itself: it runs what it is given
    if allocator == "tcmalloc":
        env = preload_env(env, library)
    done = subprocess.run([sys.executable, __file__, "--child", name, "--threads", str(threads),
                           "--expect", allocator], env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{name} with {allocator} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workloads", default=",".join(WORKLOADS), help="comma-separated: " + ", ".join(WORKLOADS))
    p.add_argument("--repeats", type=int, default=2, help="alternating rounds per workload (best kept)")
    p.add_argument("--threads", type=int, default=2, help="torch threads in each child")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--expect", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(args.child, args.threads, args.expect)
        return
    names = [w.strip() for w in args.workloads.split(",") if w.strip()]
    unknown = [w for w in names if w not in WORKLOADS]
    if unknown:
        raise SystemExit(f"unknown workload(s) {', '.join(unknown)}; choose from {', '.join(WORKLOADS)}")
    library = find_tcmalloc()
    if library is None:
        raise SystemExit("no tcmalloc library found (Debian/Ubuntu: apt-get install libtcmalloc-minimal4)")
    print(f"tcmalloc: {library}; {args.threads} threads; best of {args.repeats} alternating runs", flush=True)
    print(f"{'workload':12s} {'system ms':>10s} {'sys s':>6s} {'faults':>8s}   {'tcmalloc ms':>11s} "
          f"{'sys s':>6s} {'faults':>7s}   speed-up")
    for name in names:
        best = {"system": None, "tcmalloc": None}
        for _ in range(args.repeats):
            for allocator in best:
                r = run_child(name, args.threads, allocator, library)
                if best[allocator] is None or r["s"] < best[allocator]["s"]:
                    best[allocator] = r
        s, t = best["system"], best["tcmalloc"]
        print(f"{name:12s} {s['s'] * 1e3:10.1f} {s['sys']:6.2f} {s['faults']:8.0f}   {t['s'] * 1e3:11.1f} "
              f"{t['sys']:6.2f} {t['faults']:7.0f}   {s['s'] / t['s']:.2f}x", flush=True)


if __name__ == "__main__":
    main()
