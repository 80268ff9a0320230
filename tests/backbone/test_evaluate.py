"""Multi-crop, multi-model accuracy: the averaging arithmetic and a tiny generated folder."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from torch import nn

from backbone.crops import normalize
from backbone.errors import InputError
from backbone.evaluate import (accuracy_table, evaluate_accuracy, format_table, model_probs,
                               prefix_accuracies)
from backbone.models import ModelMeta, build_model, save_classifier
from detect.cli_backbone import labelled_samples
from detect.cli_eval import eval_command

COLOURS = {"blue": (20, 30, 220), "green": (30, 200, 40), "red": (230, 20, 30)}  # sorted names


class ConstantModel(nn.Module):
    """Returns the same logits for every input."""

    def __init__(self, logits):
        super().__init__()
        self.register_buffer("logits", torch.tensor(logits, dtype=torch.float32))

    def forward(self, x):
        return self.logits.expand(len(x), -1)


class ColourModel(nn.Module):
    """Logits = 10 x the mean of each channel in (blue, green, red) order: it knows the colours."""

    def forward(self, x):
        return 10 * x.mean((2, 3))[:, [2, 1, 0]]


def meta(size=32, classes=tuple(COLOURS)):
    return ModelMeta("googlenet", len(classes), list(classes), input_size=size,
                     mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """2 images per colour (one landscape, one portrait), one green image filed under red, and
    an unreadable file."""
    root = tmp_path_factory.mktemp("val")
    rng = np.random.default_rng(0)
    for name, rgb in COLOURS.items():
        (root / name).mkdir()
        for i, (h, w) in enumerate([(30, 45), (50, 34)]):
            noise = rng.integers(-15, 16, (h, w, 3))
            Image.fromarray(np.clip(np.array(rgb) + noise, 0, 255).astype(np.uint8)).save(root / name / f"{i}.png")
    Image.new("RGB", (40, 40), COLOURS["green"]).save(root / "red" / "wrong.png")
    (root / "blue" / "broken.png").write_bytes(b"not a png")
    labels = {name: i for i, name in enumerate(COLOURS)}
    samples = [(str(p), labels[p.parent.name]) for p in sorted(root.glob("*/*.png"))]
    return root, samples


def test_crop_average_is_the_mean_of_softmaxes():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 4))
    crops = torch.randint(0, 256, (3, 5, 3, 8, 8), dtype=torch.uint8)  # 3 images x 5 crops
    m = ModelMeta("googlenet", 4, list("abcd"), input_size=8, mean=(0.4, 0.5, 0.6), std=(0.2, 0.3, 0.4))
    got = model_probs(model, m, crops, batch_size=4, device=torch.device("cpu"))  # chunks cross images
    with torch.no_grad():
        want = torch.stack([torch.stack([torch.softmax(model(normalize(c[None], m.mean, m.std))[0], 0)
                                         for c in image]).mean(0) for image in crops])
    assert got.shape == (3, 4)
    assert torch.allclose(got, want, atol=1e-6)


def test_ensemble_averages_softmax_not_logits(folder):
    _, samples = folder
    readable = [s for s in samples if "broken" not in s[0]]
    # B alone says class 2, A alone class 1. Mean softmax: A (.12, .88, 0), B (.27, 0, .73)
    # -> (.19, .44, .37): class 1. Mean logits (0, -9, -9.5) would say class 0.
    a, b = ConstantModel([0.0, 2.0, -20.0]), ConstantModel([0.0, -20.0, 1.0])
    ones = [(p, 1) for p, _ in readable]
    results = prefix_accuracies([(b, meta()), (a, meta())], ones, crops=10, batch_size=16)
    assert [r["top1"] for r in results] == [0.0, 100.0]
    assert [r["models"] for r in results] == [1, 2]
    assert results[0]["top5"] == 100.0  # top-5 of 3 classes: everything


@pytest.mark.parametrize("crops", [1, 10, 144])
def test_accuracy_on_generated_folder(folder, crops):
    _, samples = folder
    result = evaluate_accuracy([(ColourModel(), meta())], samples, crops=crops, batch_size=64)
    assert result["images"] == 7 and len(result["skipped"]) == 1
    assert "broken.png" in result["skipped"][0]
    assert result["top1"] == pytest.approx(100 * 6 / 7)  # the green image filed under red
    assert result["top5"] == 100.0


def test_models_of_different_input_sizes(folder):
    _, samples = folder
    pair = [(ColourModel(), meta(24)), (ColourModel(), meta(40))]
    result = evaluate_accuracy(pair, samples, crops=10, batch_size=8, workers=1)
    assert result["top1"] == pytest.approx(100 * 6 / 7) and result["models"] == 2


def test_models_must_share_classes(folder):
    _, samples = folder
    with pytest.raises(InputError, match="share"):
        evaluate_accuracy([(ColourModel(), meta()), (ColourModel(), meta(classes="xyz"))], samples)
    with pytest.raises(InputError, match="outside"):
        evaluate_accuracy([(ColourModel(), meta())], [(samples[0][0], 3)])


def test_table_rows(folder):
    _, samples = folder
    a, b = ConstantModel([0.0, 2.0, -20.0]), ConstantModel([0.0, -20.0, 1.0])
    ones = [(p, 1) for p, _ in samples]
    rows = accuracy_table([(b, meta()), (a, meta())], ones, (1, 10), batch_size=16)
    assert [(r["models"], r["crops"], r["cost"]) for r in rows] == [(1, 1, 1), (1, 10, 10), (2, 1, 2), (2, 10, 20)]
    assert [r["top1"] for r in rows] == [0.0, 0.0, 100.0, 100.0]
    assert rows[0]["delta"] == 0.0 and rows[0]["skipped"] == 1
    text = format_table(rows)
    assert "1 model 1 crop" in text and "2 models 10 crops" in text and "base" in text


def test_eval_command_with_saved_models(folder, tmp_path):
    root, _ = folder
    runs = []
    for seed, size in [(0, 64), (1, 72)]:
        torch.manual_seed(seed)
        model = build_model("googlenet", 3, width=0.125, aux_logits=False)
        run = tmp_path / f"run{seed}"
        save_classifier(run, model, ModelMeta("googlenet", 3, list(COLOURS), width=0.125, input_size=size))
        runs += ["--model", str(run)]
    out = tmp_path / "acc.json"
    args = ["--accuracy", "--data", str(root), *runs, "--crops", "10", "--table", "--json", str(out),
            "--device", "cpu", "--workers", "0"]
    result = CliRunner().invoke(eval_command, args)
    assert result.exit_code == 0, result.output
    assert "2 models 10 crops" in result.output
    rows = json.loads(out.read_text())["rows"]
    assert len(rows) == 4 and all(r["images"] == 7 for r in rows)
    assert all(0.0 <= r["top1"] <= r["top5"] <= 100.0 for r in rows)


def test_folder_names_map_to_model_classes(folder):
    root, _ = folder
    by_name = labelled_samples(root, ["red", "green", "blue"])  # the model's order, not sorted
    assert {Path(p).parent.name: y for p, y in by_name} == {"red": 0, "green": 1, "blue": 2}
    unnamed = labelled_samples(root, ["class_0", "class_1", "class_2"])  # follows sorted folders
    assert {Path(p).parent.name: y for p, y in unnamed} == {"blue": 0, "green": 1, "red": 2}
    with pytest.raises(InputError, match="not among"):
        labelled_samples(root, ["cat", "dog", "fox"])
    with pytest.raises(InputError, match="the model has 2"):
        labelled_samples(root, ["class_0", "class_1"])
