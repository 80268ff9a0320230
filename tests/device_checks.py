"""Shared by the GPU checks (tests/test_cuda.py): what a step reads from and waits for on the
device, and tiny generated data (colour classes, a VOC folder with its proposal cache, a random
classifier run). Shapes: B images, R regions, K foreground classes."""
from __future__ import annotations

import sys
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from backbone.io import atomic_write_text
from backbone.models import ModelMeta, build_model, save_classifier
from detect.data import write_voc
from proposals import ProposalCache

COLOURS = [(220, 40, 40), (40, 200, 60), (50, 60, 230)]
CLASSES = ["red", "green", "blue"]
READS = ("item", "tolist", "__float__", "__int__", "__bool__")


@contextmanager
def device_reads(device: str, callers: tuple[str, ...]) -> Iterator[list[str]]:
    """Host reads of tensors on `device` made by code in files ending with `callers` (each one a
    wait for the device on a GPU)."""
    seen: list[str] = []
    with pytest.MonkeyPatch.context() as patch:
        for name in READS:
            def probe(self, *args, _original=getattr(torch.Tensor, name), _name=name, **kwargs):
                where = sys._getframe(1).f_code.co_filename.replace("\\", "/")
                if self.device.type == device and where.endswith(callers):
                    seen.append(_name)
                return _original(self, *args, **kwargs)
            patch.setattr(torch.Tensor, name, probe)
        yield seen


@contextmanager
def conv_dtypes(model: torch.nn.Module) -> Iterator[set]:
    """The dtypes of every Conv2d output computed inside the block."""
    seen: set = set()
    handles = [m.register_forward_hook(lambda _m, _i, out: seen.add(out.dtype))
               for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    try:
        yield seen
    finally:
        for h in handles:
            h.remove()


@contextmanager
def device_syncs(device: str) -> Iterator[list[str]]:
    """file:line of each operation inside the block that waits for the GPU (torch's sync debug
    mode: a blocking copy, .item(), nonzero, ...); on the CPU there is nothing to wait for."""
    seen: list[str] = []
    if device != "cuda":
        yield seen
        return
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            yield seen
        finally:
            torch.cuda.set_sync_debug_mode("default")
            seen += [f"{Path(w.filename).name}:{w.lineno}" for w in caught if "synchroniz" in str(w.message)]


def extra_step_syncs(device: str, run: Callable[[int], object], ignore: tuple[str, ...] = ()) -> list[str]:
    """The waits for the GPU that a second step (batch) adds: run(2) against run(1), after a
    warm-up run(1) (first calls set up kernels and handles). [] when none, and always on the CPU."""
    if device != "cuda":
        return []
    run(1)
    counts = []
    for steps in (1, 2):
        with device_syncs(device) as syncs:
            run(steps)
        counts.append(Counter(s for s in syncs if not s.startswith(ignore)))
    return sorted((counts[1] - counts[0]).elements())


def amp_dtype(device: str, cuda_dtype: torch.dtype) -> torch.dtype:
    """What the trainers compute their convolutions in: `cuda_dtype` on CUDA, float32 on the CPU."""
    return cuda_dtype if device == "cuda" else torch.float32


def snapshot(model: torch.nn.Module) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def changed(before: dict, model: torch.nn.Module) -> bool:
    return any(not torch.equal(v, model.state_dict()[k]) for k, v in before.items() if v.is_floating_point())


# ----------------------------------------------------------------------------- generated data

def colour_image(rng: np.random.Generator, colour: tuple, size: int) -> np.ndarray:
    noise = rng.integers(-40, 41, size=(size, size, 3))
    return np.clip(np.array(colour) + noise, 0, 255).astype(np.uint8)


def make_class_folders(root: Path, per_class: int = 4, val: int = 2, size: int = 32) -> Path:
    """root/{train,val}/c<k>/*.png: noisy images of colour k."""
    rng = np.random.default_rng(0)
    for split, n in (("train", per_class), ("val", val)):
        for k, colour in enumerate(COLOURS):
            folder = root / split / f"c{k}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                Image.fromarray(colour_image(rng, colour, size)).save(folder / f"{i}.png")
    return root


def make_voc(root: Path, images: int = 4, size: int = 96) -> Path:
    """A VOC folder (split "train"): grey noise with two coloured squares per image, one in
    each half, and a proposal cache beside it (root/cache: each box, jittered, and a grid)."""
    rng = np.random.default_rng(1)
    (root / "JPEGImages").mkdir(parents=True, exist_ok=True)
    cache, keys = ProposalCache(root / "cache"), []
    grid = torch.tensor([[x, y, x + 32, y + 32] for x in range(0, size - 31, 16) for y in range(0, size - 31, 16)],
                        dtype=torch.float32)
    for i in range(images):
        pixels = colour_image(rng, (128, 128, 128), size)
        boxes, labels = [], []
        for half in range(2):
            side = int(rng.integers(24, 40))
            x1, y1 = half * size // 2 + int(rng.integers(0, size // 2 - side)), int(rng.integers(0, size - side))
            label = int(rng.integers(1, len(CLASSES) + 1))
            pixels[y1:y1 + side, x1:x1 + side] = COLOURS[label - 1]
            boxes.append([x1, y1, x1 + side, y1 + side])
            labels.append(label)
        key, gt = f"img{i}", torch.tensor(boxes, dtype=torch.float32)
        Image.fromarray(pixels).save(root / "JPEGImages" / f"{key}.png")
        write_voc(root, key, (size, size), gt, torch.tensor(labels), CLASSES, filename=f"{key}.png")
        proposals = torch.cat([gt, gt + 3, gt - 4, grid]).clamp(0, size)
        cache.put(key, proposals, torch.zeros(len(proposals)))
        keys.append(key)
    atomic_write_text(root / "ImageSets" / "Main" / "train.txt", "\n".join(keys) + "\n")
    return root


def make_init_run(folder: Path, input_size: int = 32) -> Path:
    """A random width-1/8 classifier run that the detector's members start from."""
    torch.manual_seed(0)
    model = build_model("googlenet", 5, width=0.125)
    save_classifier(folder, model, ModelMeta("googlenet", 5, [f"c{i}" for i in range(5)], width=0.125,
                                             input_size=input_size, mean=(0.5,) * 3, std=(0.25,) * 3))
    return folder
