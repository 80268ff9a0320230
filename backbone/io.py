"""Files written atomically, images read safely, weights stored without pickle.

Atomic writes go to a temporary file in the destination folder and are renamed into place,
so a killed process never leaves a half-written file that later loads as garbage.
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from PIL import Image, ImageOps

from backbone.errors import InputError

# Refuse images whose header claims more pixels than this before decoding them. The
# environment variable DETECT_MAX_PIXELS sets it for every command (read at each call).
DEFAULT_MAX_PIXELS = 100_000_000
# Our check replaces PIL's decompression-bomb guard, so the limit above is the one in force
# (PIL would refuse anything over 179 M pixels whatever limit the user set).
Image.MAX_IMAGE_PIXELS = None


def max_pixels_limit() -> int:
    """DETECT_MAX_PIXELS if set (an integer), else DEFAULT_MAX_PIXELS."""
    value = os.environ.get("DETECT_MAX_PIXELS", "").strip()
    if not value:
        return DEFAULT_MAX_PIXELS
    try:
        return int(float(value))
    except ValueError:
        raise InputError("DETECT_MAX_PIXELS", f"must be a number of pixels, got {value!r}") from None


def current_umask() -> int:
    """This process's umask (Linux: read from /proc, leaving it untouched; elsewhere set and
    restored at once)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` if the block succeeds.

    The file gets the mode `open()` would give it (0666 less the umask): mkstemp makes it 0600,
    which would keep results from the other users of a shared folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.fchmod(fd, 0o666 & ~current_umask())
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any, indent: int | None = 2) -> None:
    atomic_write_text(path, json.dumps(obj, indent=indent) + "\n")


def read_json(path: str | Path) -> Any:
    """Read a JSON file, raising InputError (naming the file) if missing or malformed."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "file not found")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(path, f"malformed JSON: {e}") from None


def append_jsonl(path: str | Path, record: dict) -> None:
    """Append one JSON line and flush it to disk (a log that survives a kill)."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


def _to_uint8_rgb(img: Image.Image) -> np.ndarray:
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if arr.max(initial=0) > 255 else 255.0
        arr = np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return np.repeat(arr[:, :, None], 3, axis=2)
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        # Transparent pixels become white rather than whatever colour they happen to hold.
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    return np.asarray(img.convert("RGB"), dtype=np.uint8).copy()


def load_image(image: "str | Path | np.ndarray | Image.Image",
               max_pixels: int | None = None) -> np.ndarray:
    """Read an image as an RGB uint8 array `[H, W, 3]`.

    Accepts a path, a PIL image or an array (H×W×3 uint8 RGB, or H×W grayscale). EXIF
    orientation is applied (the image comes out as viewers show it); alpha is composited on
    white; grayscale and 16-bit images are converted. An image whose header claims more than
    `max_pixels` pixels (default: `max_pixels_limit()`) is refused before decoding. Raises
    InputError naming the file.
    """
    if isinstance(image, np.ndarray):
        return _check_array(image)
    if isinstance(image, Image.Image):
        return _to_uint8_rgb(ImageOps.exif_transpose(image))
    path = Path(image)
    if not path.is_file():
        raise InputError(path, "is a folder, not an image file" if path.is_dir() else "image file not found")
    try:
        with Image.open(path) as img:
            _check_size(path, *img.size, max_pixels)
            img.load()
            return _to_uint8_rgb(ImageOps.exif_transpose(img))
    except InputError:
        raise
    except Image.DecompressionBombError as e:
        raise InputError(path, f"image too large: {e}") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise InputError(path, f"cannot read image: {e}") from None


def check_image(path: str | Path, max_pixels: int | None = None) -> tuple[int, int]:
    """(width, height) of an image file as stored, from its header alone: the checks
    `load_image` makes before decoding (a file, a format PIL reads, some pixels, within the
    pixel limit), for a command to run before it starts anything costly. InputError otherwise.
    A file whose data is damaged past its header passes; only decoding finds that."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "is a folder, not an image file" if path.is_dir() else "image file not found")
    try:
        with Image.open(path) as img:
            return _check_size(path, *img.size, max_pixels)
    except InputError:
        raise
    except (OSError, SyntaxError, ValueError) as e:
        raise InputError(path, f"cannot read image: {e}") from None


def _check_size(path: Path, w: int, h: int, max_pixels: int | None) -> tuple[int, int]:
    max_pixels = max_pixels_limit() if max_pixels is None else max_pixels
    if w * h > max_pixels:
        raise InputError(path, f"image is {w}x{h} = {w * h} pixels, above the limit "
                               f"of {max_pixels} (set DETECT_MAX_PIXELS to allow it)")
    if w < 1 or h < 1:
        raise InputError(path, f"image has no pixels ({w}x{h})")
    return w, h


def oriented_size(img: Image.Image) -> tuple[int, int]:
    """(width, height) of an opened image as viewers show it, from the header alone: EXIF
    orientations 5-8 turn it by 90 degrees (as `load_image` does), swapping the sides."""
    w, h = img.size
    return (h, w) if img.getexif().get(0x0112) in (5, 6, 7, 8) else (w, h)


def _check_array(arr: np.ndarray) -> np.ndarray:
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] not in (3, 4):
        raise InputError(None, f"image array must be H x W x 3 (RGB), got shape {arr.shape}")
    if arr.dtype != np.uint8:
        raise InputError(None, f"image array must be uint8, got {arr.dtype}")
    return np.ascontiguousarray(arr[:, :, :3])


def save_weights(path: str | Path, tensors: dict, metadata: dict | None = None) -> None:
    """Write a safetensors file atomically (no pickle: loading it never runs code)."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={k: str(v) for k, v in (metadata or {}).items()})


def load_weights(path: str | Path) -> dict:
    """Read a safetensors file; refuse a missing, corrupt or non-finite one (InputError)."""
    import torch
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise InputError(path, "weights file not found")
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise InputError(path, f"cannot read weights: {e}") from None
    for name, t in tensors.items():
        if t.is_floating_point() and not _all_finite(t):
            raise InputError(path, f"weights contain NaN or Inf (tensor '{name}')")
    return tensors


def _all_finite(t: "torch.Tensor") -> bool:
    """No NaN or Inf in a CPU float tensor. numpy where it can: one torch op per tensor costs
    about 1 ms (the thread pool's start), which over a few hundred tensors was most of the
    time a model took to load."""
    import torch

    if t.dtype in (torch.float16, torch.float32, torch.float64):
        return bool(np.isfinite(t.numpy()).all())
    return bool(torch.isfinite(t).all())
