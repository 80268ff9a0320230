"""Starting a classifier from a run or converted torchvision weights: rows carried by name."""
from __future__ import annotations

import pytest
import torch
from torchvision.models import googlenet

from backbone.convert import convert_torchvision_weights
from backbone.errors import InputError
from backbone.models import ModelMeta, build_model, save_classifier
from backbone.warm_start import class_key, main_head, match_rows, start_from


def test_match_rows_by_class_key():
    old = ["0_T-shirt_top", "Trouser", "cat", "Cat", "n01440764"]
    new = ["__background__", "tshirt_top", "cat", "dog", "trouser", "N01440764"]
    # cat is ambiguous (two old classes reduce to it): left alone; a wnid matches itself
    assert match_rows(old, new) == [(1, 0), (4, 1), (5, 4)]
    assert class_key("3_Ankle boot") == "ankleboot" and match_rows(["a"], ["b"]) == []


@pytest.fixture
def run(tmp_path):
    torch.manual_seed(0)
    model = build_model("googlenet", 3, width=0.125, aux_logits=True)
    meta = ModelMeta("googlenet", 3, ["cat", "dog", "fox"], width=0.125, input_size=64,
                     mean=(0.4, 0.4, 0.4), std=(0.2, 0.2, 0.2))
    save_classifier(tmp_path / "run", model, meta)
    return tmp_path / "run", model


def test_start_from_a_run_carries_matching_rows(run):
    path, old = run
    model, meta, carried = start_from(path, ["Fox", "owl", "cat", "__background__"], head="match")
    assert carried == ["Fox", "cat"] and meta.width == 0.125 and meta.mean == (0.4, 0.4, 0.4)
    new, before = main_head(model), old.fc
    assert new.weight.shape[0] == 4
    assert torch.equal(new.weight[0], before.weight[2]) and torch.equal(new.bias[0], before.bias[2])
    assert torch.equal(new.weight[2], before.weight[0])
    assert not any(torch.equal(new.weight[1], before.weight[i]) for i in range(3))
    # the trunk and the auxiliary heads' trunks are the run's; their output layers are new
    new_state, old_state = model.state_dict(), old.state_dict()
    outputs = ("fc.", "aux1.classifier.", "aux2.classifier.")
    kept = [k for k in old_state if not k.startswith(outputs)]
    assert any(k.startswith("aux1.") for k in kept) and len(kept) == len(old_state) - 6
    assert all(torch.equal(new_state[k], old_state[k]) for k in kept)
    assert model.aux1.classifier.out_features == 4 and model.training
    out = model(torch.zeros(2, 3, 64, 64))
    assert out.logits.shape == (2, 4) and out.aux1.shape == (2, 4)
    _, _, none = start_from(path, ["cat", "dog"], head="fresh")
    assert none == []


def test_start_from_converted_torchvision_weights(tmp_path):
    net = googlenet(weights=None, num_classes=4, aux_logits=False, init_weights=False)
    torch.save(net.state_dict(), tmp_path / "tv.pth")
    (tmp_path / "names.txt").write_text("n01\nn02\nkangaroo\nn04\n")
    convert_torchvision_weights(tmp_path / "tv.pth", tmp_path / "tv", tmp_path / "names.txt")
    model, meta, carried = start_from(tmp_path / "tv", ["__background__", "kangaroo"])
    assert meta.arch == "torchvision_googlenet" and meta.mean == (0.5, 0.5, 0.5) and carried == ["kangaroo"]
    assert torch.equal(main_head(model).weight[1], net.fc.weight[2])
    assert torch.equal(model.net.conv1.conv.weight, net.conv1.conv.weight)
    assert model.net.aux1 is not None  # fresh auxiliary heads: the file has none
    assert model(torch.zeros(2, 3, 96, 96)).logits.shape == (2, 2)


def test_not_a_run_is_an_input_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="not a classifier run"):
        start_from(tmp_path / "empty", ["a"])
