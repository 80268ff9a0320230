"""train-classifier --init: detect crops' folder trained from another classifier or converted
torchvision weights. At lr 0 the saved model is exactly where training started, so the test
reads off what --init carried: the run's network, its rows of the classes it knows by name."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torchvision.models import googlenet

from backbone.config import read_yaml
from backbone.convert import convert_torchvision_weights
from backbone.io import load_weights
from backbone.models import ModelMeta, build_model, read_meta, save_classifier
from cli_helpers import run
from detect.region_crops import CropSettings, write_region_crops
from shapes_data import make_shapes_dataset

CONFIG = str(Path(__file__).resolve().parents[2] / "configs" / "custom_classifier.yaml")
STILL = ["model.width=0.5", "model.input_size=32", "train.epochs=1", "train.batch_size=4", "train.lr=0",
         "train.warmup_epochs=0", "train.workers=0", "train.threads=1", "train.eval_batch_size=8",
         "data.cache_mb=0"]


@pytest.fixture(scope="module")
def crops(tmp_path_factory):
    root = tmp_path_factory.mktemp("init")
    shapes = make_shapes_dataset(root / "shapes", {"train": 6, "val": 2}, size=80)
    write_region_crops(shapes, root / "crops", "train", "val", CropSettings(size=37, per_box=2), progress=False)
    return root / "crops"


def test_init_from_a_classifier_run(crops, tmp_path, capsys):
    torch.manual_seed(0)
    init = build_model("googlenet", 3, width=0.125, aux_logits=True)
    save_classifier(tmp_path / "init", init, ModelMeta("googlenet", 3, ["Square", "zebra", "__background__"],
                                                       width=0.125, input_size=64, mean=(0.5, 0.5, 0.5),
                                                       std=(0.25, 0.25, 0.25)))
    code, out, err = run(capsys, "train-classifier", "--data", str(crops), "--config", CONFIG,
                         "--out", str(tmp_path / "run"), "--init", str(tmp_path / "init"), *STILL)
    assert code == 0, err
    meta = read_meta(tmp_path / "run")  # the init's network and normalisation, not the config's width 0.5
    assert (meta.arch, meta.width, meta.mean) == ("googlenet", 0.125, (0.5, 0.5, 0.5))
    assert meta.classes == ["__background__", "disc", "square", "triangle"] and meta.input_size == 32
    assert read_yaml(tmp_path / "run" / "config.yaml")["model"]["init_run"] == str(tmp_path / "init")
    got, was = load_weights(tmp_path / "run" / "model.safetensors"), init.state_dict()
    trunk = [k for k in was if not k.startswith(("fc.", "aux1.classifier", "aux2.classifier"))]
    assert all(torch.equal(got[k], was[k]) for k in trunk)
    assert torch.equal(got["fc.weight"][2], was["fc.weight"][0])  # square <- Square
    assert torch.equal(got["fc.weight"][0], was["fc.weight"][2])  # __background__ <- __background__
    assert not any(torch.equal(got["fc.weight"][1], was["fc.weight"][i]) for i in range(3))  # disc: new


def test_init_from_converted_torchvision_weights(crops, tmp_path, capsys):
    net = googlenet(weights=None, num_classes=2, aux_logits=False, init_weights=False)
    torch.save(net.state_dict(), tmp_path / "tv.pth")
    (tmp_path / "names.txt").write_text("triangle\nn01\n")
    convert_torchvision_weights(tmp_path / "tv.pth", tmp_path / "tv", tmp_path / "names.txt")
    code, out, err = run(capsys, "train-classifier", "--data", str(crops), "--config", CONFIG,
                         "--out", str(tmp_path / "run"), "--init", str(tmp_path / "tv"), *STILL)
    assert code == 0, err
    meta = read_meta(tmp_path / "run")
    assert meta.arch == "torchvision_googlenet" and meta.mean == (0.5, 0.5, 0.5)
    got = load_weights(tmp_path / "run" / "model.safetensors")
    assert torch.equal(got["net.conv1.conv.weight"], net.conv1.conv.weight)
    assert torch.equal(got["net.fc.weight"][3], net.fc.weight[0])  # triangle's row


def test_init_that_is_not_a_run_is_one_line(crops, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    code, _, err = run(capsys, "train-classifier", "--data", str(crops), "--config", CONFIG,
                       "--out", str(tmp_path / "run"), "--init", str(tmp_path / "empty"), *STILL)
    assert code == 2 and err.count("\n") == 1 and err.startswith(f"error: {tmp_path / 'empty'}: not a classifier run")
