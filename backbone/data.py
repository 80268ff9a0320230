"""Classification data: ImageNet-style folders, the ILSVRC 2012 validation layout, a Dataset.

Two layouts are accepted for a split folder (`DIR/train`, `DIR/val`, or any folder):

1. **Class folders** (ImageNet's train layout): one sub-folder per class, named after the class
   (e.g. `n01440764/` or `Sandal/`), holding that class's images. Classes are the sub-folder
   names in sorted order; class index i is the i-th name.
2. **Flat folder + labels file** (ILSVRC 2012 validation layout): all images in one folder and
   a text file `labels.txt` inside it (or `<folder>.txt` beside it, e.g. `DIR/val.txt`; Caffe's
   `val.txt` has this format). One line per image, `FILENAME LABEL`, separated by whitespace,
   where LABEL is a class name (a folder name of the train split, e.g. `n01440764`) or a
   0-based integer index into the sorted class names. Blank lines and lines starting with `#`
   are skipped. The class names come from the caller (the train split or the model's meta).
   ILSVRC's own `ILSVRC2012_validation_ground_truth.txt` (1-based ids in meta.mat order, no
   file names) is not this format: convert it to `FILENAME WNID` lines first.

Images are decoded with `backbone.io.load_image` (any format PIL reads; EXIF, alpha, gray and
16-bit handled). Augmentation randomness is a function of (seed, epoch, index), so a run
resumed from a checkpoint sees exactly the crops an uninterrupted run would have seen.
"""
from __future__ import annotations

import gzip
import struct
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from torch import Tensor
from torch.utils.data import Dataset

from backbone.errors import InputError
from backbone.io import load_image

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
LABEL_FILE = "labels.txt"

Sample = tuple[Path, int]


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _labels_file(root: Path) -> Path | None:
    for candidate in (root / LABEL_FILE, root.with_name(root.name + ".txt")):
        if candidate.is_file():
            return candidate
    return None


def scan_image_folder(root: str | Path, classes: Sequence[str] | None = None
                      ) -> tuple[list[str], list[Sample]]:
    """Find the labelled images of one split folder (either layout, see the module docstring).

    `classes`: the class names the labels refer to (index-aligned with a model's outputs). For
    class folders it may be omitted (the sorted folder names are used); when given, every
    folder must name one of them. For the flat layout without `classes`, name labels become the
    sorted class list and integer labels the classes '0'..'K-1'.
    Returns (classes, samples) with samples a list of (image path, class index), sorted by path.
    Raises InputError naming the folder if it is missing, empty or inconsistent.
    """
    root = Path(root)
    if not root.is_dir():
        raise InputError(root, "image folder not found")
    subdirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    labels = _labels_file(root)
    if subdirs and labels is None:
        return _scan_class_folders(root, subdirs, classes)
    if labels is not None:
        return _scan_flat(root, labels, classes)
    raise InputError(root, "no class sub-folders and no labels file (expected one folder per "
                           f"class, or images with a '{LABEL_FILE}' of 'FILENAME LABEL' lines)")


def _scan_class_folders(root: Path, subdirs: list[Path], classes: Sequence[str] | None
                        ) -> tuple[list[str], list[Sample]]:
    names = [d.name for d in subdirs]
    classes = list(classes) if classes is not None else names
    index = {c: i for i, c in enumerate(classes)}
    unknown = [n for n in names if n not in index]
    if unknown:
        raise InputError(root, f"class folders not among the {len(classes)} known classes: {unknown[:5]}")
    samples = [(p, index[d.name]) for d in subdirs for p in _images_in(d)]
    if not samples:
        raise InputError(root, f"no images in its {len(subdirs)} class folders "
                               f"(looked for {', '.join(sorted(IMAGE_SUFFIXES))})")
    return classes, samples


def _parse_label(token: str, index: dict[str, int], num_classes: int, where: str) -> int:
    if token in index:
        return index[token]
    if token.lstrip("-").isdigit():
        k = int(token)
        if not 0 <= k < num_classes:
            raise InputError(where, f"label {k} out of range 0..{num_classes - 1}")
        return k
    raise InputError(where, f"unknown class '{token}'")


def _scan_flat(root: Path, labels: Path, classes: Sequence[str] | None
               ) -> tuple[list[str], list[Sample]]:
    rows: list[tuple[Path, str, str]] = []
    for lineno, line in enumerate(labels.read_text(encoding="utf-8").splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        where = f"{labels}:{lineno}"
        if len(parts) != 2:
            raise InputError(where, f"expected 'FILENAME LABEL', got {line!r}")
        if not (root / parts[0]).is_file():
            raise InputError(where, f"image '{parts[0]}' not found in {root}")
        rows.append((root / parts[0], parts[1], where))
    if not rows:
        raise InputError(labels, "labels file lists no images")
    if classes is None:  # without known classes: names sort into classes, integers stand alone
        tokens = {t for _, t, _ in rows}
        if all(t.isdigit() for t in tokens):
            classes = [str(k) for k in range(max(int(t) for t in tokens) + 1)]
        else:
            classes = sorted(tokens)
    index = {c: i for i, c in enumerate(classes)}
    samples = [(p, _parse_label(t, index, len(classes), w)) for p, t, w in rows]
    return list(classes), sorted(samples)


def derive_seed(*keys: int) -> int:
    """A 32-bit seed that depends on every (non-negative) key: independent streams per key tuple."""
    return int(np.random.SeedSequence(list(keys)).generate_state(1)[0])


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The augmentation seed of image `index` in `epoch`: the same in every process and run."""
    return derive_seed(seed, epoch, index)


class ImageDataset(Dataset):
    """(image, label) pairs decoded with `load_image` and passed through `transform`.

    `transform(image: uint8 [H, W, 3], rng: np.random.Generator) -> Tensor[3, S, S]`. The rng of
    item i is seeded by (seed, epoch, i). The epoch comes with the key, `dataset[(epoch, i)]`
    (what `backbone.loaders.EpochKeys` yields: persistent workers never see `set_epoch`), or
    from `set_epoch` for a plain index `dataset[i]`.
    """

    def __init__(self, samples: Sequence[Sample], transform: Callable[[np.ndarray, np.random.Generator], Tensor],
                 seed: int = 0, max_pixels: int | None = None, cache_mb: float = 0.0):
        self.samples = list(samples)
        self.transform = transform
        self.seed = seed
        self.epoch = 0
        self.max_pixels = max_pixels
        # Decoded images kept by the process that decoded them (each loader worker has its
        # own), up to cache_mb; 0 = off. For small images read every epoch: decoding a 56 px
        # JPEG costs ~220 us, a third of its per-epoch data work.
        self.cache_bytes = int(cache_mb * 2**20)
        self._cache: dict[int, np.ndarray] = {}
        self._cached_bytes = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[Tensor, int]:
        epoch, i = key if isinstance(key, tuple) else (self.epoch, key)
        path, label = self.samples[i]
        image = self._cache.get(i)
        if image is None:
            image = load_image(path) if self.max_pixels is None else load_image(path, self.max_pixels)
            if self._cached_bytes + image.nbytes <= self.cache_bytes:
                self._cache[i] = image
                self._cached_bytes += image.nbytes
        rng = np.random.default_rng(sample_seed(self.seed, epoch, i))
        return self.transform(image, rng), label


def read_idx(path: str | Path) -> np.ndarray:
    """An IDX file (optionally gzipped) of unsigned bytes as a numpy array: Fashion-MNIST's
    images `[N, 28, 28]` or labels `[N]`. Raises InputError naming the file if it is not one."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "IDX file not found")
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    zero, dtype, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype != 0x08:
        raise InputError(path, "not an unsigned-byte IDX file")
    shape = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])
    array = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if array.size != int(np.prod(shape)):
        raise InputError(path, f"expected {int(np.prod(shape))} values, found {array.size}")
    return array.reshape(shape)
