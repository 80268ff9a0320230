import os

import numpy as np
import pytest
import torch
from PIL import Image

from backbone.errors import InputError
from backbone.io import atomic_write_text, load_image, load_weights, save_weights


def test_atomic_write_leaves_old_file_on_failure(tmp_path):
    p = tmp_path / "a.txt"
    atomic_write_text(p, "old")
    from backbone.io import atomic_path
    with pytest.raises(RuntimeError):
        with atomic_path(p) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert p.read_text() == "old"
    assert [f.name for f in tmp_path.iterdir()] == ["a.txt"]


def test_load_image_variants(tmp_path):
    rgba = np.zeros((4, 5, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[0, 0, 3] = 255  # one opaque red pixel, the rest transparent
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    out = load_image(tmp_path / "a.png")
    assert out.shape == (4, 5, 3) and out.dtype == np.uint8
    assert tuple(out[0, 0]) == (200, 0, 0) and tuple(out[1, 1]) == (255, 255, 255)
    Image.fromarray(np.full((3, 3), 7, np.uint8), "L").save(tmp_path / "g.png")
    assert load_image(tmp_path / "g.png").shape == (3, 3, 3)
    Image.fromarray(np.full((2, 2), 65535, np.uint16)).save(tmp_path / "d.png")
    assert load_image(tmp_path / "d.png").max() == 255


def test_load_image_exif_rotation(tmp_path):
    img = Image.fromarray(np.zeros((10, 20, 3), np.uint8))
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise for display
    img.save(tmp_path / "r.jpg", exif=exif)
    assert load_image(tmp_path / "r.jpg").shape == (20, 10, 3)


def test_load_image_errors(tmp_path):
    (tmp_path / "t.jpg").write_text("not an image")
    with pytest.raises(InputError, match="t.jpg"):
        load_image(tmp_path / "t.jpg")
    Image.fromarray(np.zeros((50, 50, 3), np.uint8)).save(tmp_path / "big.png")
    with pytest.raises(InputError, match="limit"):
        load_image(tmp_path / "big.png", max_pixels=100)
    with pytest.raises(InputError, match="not found"):
        load_image(tmp_path / "missing.png")
    data = (tmp_path / "big.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="cut.png"):
        load_image(tmp_path / "cut.png")


def test_weights_round_trip_and_nan(tmp_path):
    save_weights(tmp_path / "w.safetensors", {"a": torch.arange(3.0)})
    assert torch.equal(load_weights(tmp_path / "w.safetensors")["a"], torch.arange(3.0))
    save_weights(tmp_path / "n.safetensors", {"a": torch.tensor([1.0, float("nan")])})
    with pytest.raises(InputError, match="NaN"):
        load_weights(tmp_path / "n.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(os.urandom(64))
    with pytest.raises(InputError, match="junk"):
        load_weights(tmp_path / "junk.safetensors")
