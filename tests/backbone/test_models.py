import pytest
import torch

from backbone.errors import InputError
from backbone.models import ModelMeta, build_model, load_classifier, save_classifier


@pytest.mark.parametrize("arch,width", [("googlenet", 0.125), ("torchvision_googlenet", 1.0)])
def test_save_load_round_trip(tmp_path, arch, width):
    torch.manual_seed(0)
    model = build_model(arch, 4, width=width).eval()
    save_classifier(tmp_path, model, ModelMeta(arch, 4, list("abcd"), width=width, input_size=64))
    loaded, meta = load_classifier(tmp_path)
    x = torch.randn(2, 3, 64, 64)
    assert meta.classes == list("abcd") and meta.input_size == 64
    assert torch.allclose(model(x), loaded(x), atol=1e-5)
    assert not loaded.training
    assert loaded.forward_features(x).shape[:2] == (2, model.num_features)


def test_wrong_class_count_is_refused(tmp_path):
    save_classifier(tmp_path, build_model("googlenet", 3, width=0.125),
                    ModelMeta("googlenet", 5, list("abcde"), width=0.125))
    with pytest.raises(InputError, match="do not match"):
        load_classifier(tmp_path)


def test_other_architecture_is_refused(tmp_path):
    save_classifier(tmp_path, build_model("torchvision_googlenet", 3),
                    ModelMeta("googlenet", 3, list("abc"), width=1.0))
    with pytest.raises(InputError, match="do not match"):
        load_classifier(tmp_path)


def test_he_init_option():
    torch.manual_seed(0)
    he = build_model("googlenet", 3, width=0.25, init="he")
    conv = he.inception3a.branch1[0]
    assert torch.all(conv.bias == 0)
    fan_in = conv.weight[0].numel()
    assert abs(conv.weight.std().item() - (2.0 / fan_in) ** 0.5) < 0.2 * (2.0 / fan_in) ** 0.5
    assert he.fc.weight.std().item() < 0.02 and torch.all(he.fc.bias == 0)
    caffe = build_model("googlenet", 3, width=0.25)
    assert torch.all(caffe.inception3a.branch1[0].bias == 0.2)
    with pytest.raises(InputError, match="init"):
        build_model("googlenet", 3, init="lecun")
