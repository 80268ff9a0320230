"""tools/box_accuracy.py: classes matched by name, background left out, hand-counted accuracy."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

from backbone.models import ModelMeta, build_model, save_classifier
from detect.data import load_dataset
from detect.finetune import _main_head
from shapes_data import make_shapes_dataset

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("box_accuracy", ROOT / "tools" / "box_accuracy.py")
tool = importlib.util.module_from_spec(spec)
spec.loader.exec_module(tool)


def _constant_model(path: Path, classes: list[str], bias: list[float]) -> Path:
    """A classifier whose logits are `bias` whatever the image (zero head weights)."""
    model = build_model("googlenet", len(classes), width=0.125)
    head = _main_head(model)
    with torch.no_grad():
        head.weight.zero_()
        head.bias.copy_(torch.tensor(bias))
    save_classifier(path, model, ModelMeta("googlenet", len(classes), classes, width=0.125, input_size=64))
    return path


def test_box_accuracy_by_hand(tmp_path):
    torch.set_num_threads(1)
    data = load_dataset(make_shapes_dataset(tmp_path / "data", {"val": 4}, size=96, seed=1), "val")
    labels = torch.cat([r.labels for r in data.images]).tolist()
    count = {c: labels.count(k + 1) for k, c in enumerate(data.classes)}
    assert data.classes == ["disc", "square", "triangle"] and min(count.values()) > 0
    # A classifier that knows two of the classes by other spellings and always says "Disc".
    clf = _constant_model(tmp_path / "clf", ["2_Square", "0_Disc", "other"], [0.0, 5.0, 1.0])
    r = tool.box_accuracy(str(clf), data)
    assert r["boxes"] == count["disc"] + count["square"]  # triangles: a class it does not know
    assert abs(r["accuracy"] - count["disc"] / r["boxes"]) < 1e-9
    assert r["per_class"] == {"disc": 1.0, "square": 0.0}
    # A detector member that prefers background: background is left out, "triangle" wins.
    member = _constant_model(tmp_path / "member", ["__background__", "disc", "square", "triangle"],
                             [9.0, 0.0, 1.0, 2.0])
    r = tool.box_accuracy(str(member), data)
    assert r["boxes"] == len(labels) and abs(r["accuracy"] - count["triangle"] / len(labels)) < 1e-9
