import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from backbone.data import ImageDataset, sample_seed, scan_image_folder
from backbone.errors import InputError
from backbone.fashion_mnist import prepare
from backbone.loaders import EpochKeys
from backbone.transforms import TrainTransform


def _png(path: Path, value: int = 128, mode: str = "RGB") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, (6, 5), value if mode == "L" else (value, 0, 0)).save(path)


def test_class_folders_sorted_with_non_images_ignored(tmp_path):
    _png(tmp_path / "b" / "1.png")
    _png(tmp_path / "b" / "0.png")
    _png(tmp_path / "a" / "x.PNG")
    (tmp_path / "a" / "notes.txt").write_text("not an image")
    classes, samples = scan_image_folder(tmp_path)
    assert classes == ["a", "b"]
    assert [(p.relative_to(tmp_path).as_posix(), k) for p, k in samples] == [("a/x.PNG", 0), ("b/0.png", 1), ("b/1.png", 1)]


def test_class_folders_use_given_classes_and_refuse_unknown_ones(tmp_path):
    _png(tmp_path / "b" / "1.png")
    classes, samples = scan_image_folder(tmp_path, ["a", "b", "c"])
    assert classes == ["a", "b", "c"] and samples[0][1] == 1
    with pytest.raises(InputError, match="not among"):
        scan_image_folder(tmp_path, ["a", "c"])


def test_missing_and_empty_folders_name_the_folder(tmp_path):
    with pytest.raises(InputError, match="not found") as e:
        scan_image_folder(tmp_path / "nope")
    assert str(tmp_path / "nope") in str(e.value)
    with pytest.raises(InputError, match="no class sub-folders"):
        scan_image_folder(tmp_path)
    (tmp_path / "a").mkdir()
    with pytest.raises(InputError, match="no images"):
        scan_image_folder(tmp_path)


def test_ilsvrc_val_layout_with_names_or_indices(tmp_path):
    val = tmp_path / "val"
    for name in ("ILSVRC2012_val_00000001.JPEG", "ILSVRC2012_val_00000002.JPEG", "ILSVRC2012_val_00000003.JPEG"):
        val.mkdir(exist_ok=True)
        Image.new("RGB", (4, 4)).save(val / name, format="JPEG")
    (val / "labels.txt").write_text("# file label\nILSVRC2012_val_00000002.JPEG n02\n"
                                    "ILSVRC2012_val_00000001.JPEG 0\n\nILSVRC2012_val_00000003.JPEG 2\n")
    classes, samples = scan_image_folder(val, ["n00", "n01", "n02"])
    assert classes == ["n00", "n01", "n02"]
    assert [(p.name, k) for p, k in samples] == [("ILSVRC2012_val_00000001.JPEG", 0),
                                                 ("ILSVRC2012_val_00000002.JPEG", 2),
                                                 ("ILSVRC2012_val_00000003.JPEG", 2)]
    # Caffe's naming: DIR/val.txt beside DIR/val/.
    (val / "labels.txt").rename(tmp_path / "val.txt")
    assert scan_image_folder(val, ["n00", "n01", "n02"])[1] == samples


def test_ilsvrc_val_layout_errors_name_the_line(tmp_path):
    _png(tmp_path / "a.png")
    (tmp_path / "labels.txt").write_text("a.png 0\nb.png 1\n")
    with pytest.raises(InputError, match=r"labels.txt:2: .*'b.png' not found"):
        scan_image_folder(tmp_path, ["x", "y"])
    (tmp_path / "labels.txt").write_text("a.png 5\n")
    with pytest.raises(InputError, match=r"labels.txt:1: label 5 out of range"):
        scan_image_folder(tmp_path, ["x", "y"])
    (tmp_path / "labels.txt").write_text("a.png\n")
    with pytest.raises(InputError, match="FILENAME LABEL"):
        scan_image_folder(tmp_path, ["x", "y"])


def test_dataset_augmentation_is_a_function_of_seed_epoch_index(tmp_path):
    _png(tmp_path / "a" / "0.png", 30, mode="L")  # grey PNG comes out as 3 channels
    _png(tmp_path / "a" / "1.png", 200)
    _, samples = scan_image_folder(tmp_path)
    tf = TrainTransform(8, (0.5,) * 3, (0.25,) * 3)
    ds = ImageDataset(samples, tf, seed=3)
    x0, label = ds[0]
    assert x0.shape == (3, 8, 8) and label == 0
    assert torch.equal(ds[0][0], x0)
    ds.set_epoch(1)
    assert not torch.equal(ds[0][0], x0)
    ds.set_epoch(0)
    assert torch.equal(ImageDataset(samples, tf, seed=3)[0][0], x0)
    assert len({sample_seed(0, e, i) for e in range(3) for i in range(50)}) == 150
    # (epoch, index) keys, as persistent loader workers receive them, override set_epoch
    ds.set_epoch(5)
    assert torch.equal(ds[(0, 0)][0], x0) and torch.equal(ds[(1, 0)][0], ImageDataset(samples, tf, seed=3)[(1, 0)][0])
    assert not torch.equal(ds[(1, 0)][0], x0)


def test_epoch_keys_wait_for_an_epoch_and_carry_it():
    from torch.utils.data import DistributedSampler
    inner = DistributedSampler(range(10), num_replicas=2, rank=1, shuffle=True, seed=7)
    keys = EpochKeys(inner)
    assert list(keys) == [] and len(keys) == 5  # nothing to prefetch before the first epoch
    keys.set_epoch(0)
    first = list(keys)
    assert [e for e, _ in first] == [0] * 5
    inner.set_epoch(0)
    assert [i for _, i in first] == list(inner)  # the wrapped sampler's order, shard 1 of 2
    keys.set_epoch(3)
    later = list(keys)
    assert [e for e, _ in later] == [3] * 5 and [i for _, i in later] != [i for _, i in first]


def _write_idx(path: Path, array: np.ndarray) -> None:
    header = struct.pack(">HBB", 0, 8, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def test_prepare_fashion_mnist_writes_class_folders(tmp_path):
    src = tmp_path / "idx"
    src.mkdir()
    images = np.arange(3 * 28 * 28).reshape(3, 28, 28) % 256
    for prefix, labels in (("train", [9, 0, 9]), ("t10k", [3, 3, 1])):
        _write_idx(src / f"{prefix}-images-idx3-ubyte.gz", images)
        _write_idx(src / f"{prefix}-labels-idx1-ubyte.gz", np.array(labels))
    assert prepare(src, tmp_path / "out") == {"train": 3, "val": 3}
    classes, samples = scan_image_folder(tmp_path / "out" / "train")
    assert classes[0] == "0_T-shirt_top" and classes[9] == "9_Ankle_boot" and len(classes) == 10
    assert sorted(k for _, k in samples) == [0, 9, 9]
    png = np.asarray(Image.open(tmp_path / "out" / "train" / "9_Ankle_boot" / "00002.png"))
    assert png.shape == (28, 28, 3) and np.array_equal(png[:, :, 1], images[2])
    assert [k for _, k in scan_image_folder(tmp_path / "out" / "val")[1]] == [1, 3, 3]
    # --pad frames the garment with black pixels: 32 x 32, the original in the middle
    prepare(src, tmp_path / "pad", pad=2)
    padded = np.asarray(Image.open(tmp_path / "pad" / "val" / "1_Trouser" / "00002.png"))
    assert padded.shape == (32, 32, 3) and np.array_equal(padded[2:30, 2:30, 0], images[2])
    assert padded[:2].max() == padded[30:].max() == padded[:, :2].max() == padded[:, 30:].max() == 0


def test_decoded_image_cache_serves_later_epochs_within_its_budget(tmp_path):
    for i in range(3):
        _png(tmp_path / "a" / f"{i}.png", value=40 * i)
    _, samples = scan_image_folder(tmp_path)
    tf = TrainTransform(4, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    cached = ImageDataset(samples, tf, seed=3, cache_mb=1)
    plain = ImageDataset(samples, tf, seed=3)
    first = [cached[(0, i)][0] for i in range(3)]
    assert all(torch.equal(x, plain[(0, i)][0]) for i, x in enumerate(first))
    too_small = ImageDataset(samples, tf, seed=3, cache_mb=2 * 6 * 5 * 3 / 2**20)  # room for two images
    [too_small[(0, i)] for i in range(3)]
    for path, _ in samples:
        Path(path).unlink()
    # Decoded once: the next epoch needs no file, and draws its own augmentation.
    assert all(torch.equal(cached[(1, i)][0], tf(np.array(Image.new("RGB", (6, 5), (40 * i, 0, 0))),
                                                  np.random.default_rng(sample_seed(3, 1, i))))
               for i in range(3))
    too_small[(1, 0)], too_small[(1, 1)]
    with pytest.raises(InputError, match="not found"):
        too_small[(1, 2)]
    with pytest.raises(InputError, match="not found"):
        plain[(1, 0)]
