"""torchvision GoogLeNet weights from a local file -> a model folder that reproduces it."""
import pytest
import torch
from torchvision.models import googlenet, resnet18

from backbone.convert import convert_torchvision_weights
from backbone.crops import normalize
from backbone.errors import InputError
from backbone.models import IMAGENET_MEAN, IMAGENET_STD, load_classifier


def torchvision_net(transform_input, num_classes=1000, aux=True):
    """A torchvision googlenet with random weights and non-trivial BatchNorm statistics."""
    torch.manual_seed(0)
    net = googlenet(weights=None, num_classes=num_classes, aux_logits=aux, init_weights=True,
                    transform_input=transform_input)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
    return net.eval()


@pytest.mark.parametrize("transform_input", [True, False])
def test_converted_model_reproduces_torchvision(tmp_path, transform_input):
    net = torchvision_net(transform_input)
    torch.save(net.state_dict(), tmp_path / "googlenet.pth")
    meta = convert_torchvision_weights(tmp_path / "googlenet.pth", tmp_path / "run",
                                       transform_input=transform_input)
    model, loaded_meta = load_classifier(tmp_path / "run")
    assert loaded_meta == meta and meta.arch == "torchvision_googlenet" and meta.input_size == 224
    assert meta.classes[0] == "class_0" and meta.classes[-1] == "class_999"
    pixels = torch.randint(0, 256, (2, 3, 96, 96), dtype=torch.uint8)
    with torch.no_grad():
        want = net(normalize(pixels, IMAGENET_MEAN, IMAGENET_STD))  # torchvision's own input
        got = model(normalize(pixels, meta.mean, meta.std))
    assert torch.allclose(got, want, atol=1e-5, rtol=0)


def test_classes_file(tmp_path):
    net = torchvision_net(True, num_classes=3, aux=False)
    torch.save({"state_dict": net.state_dict()}, tmp_path / "w.pth")
    (tmp_path / "classes.txt").write_text("cat\ndog\n\nfox\n")
    convert_torchvision_weights(tmp_path / "w.pth", tmp_path / "run", tmp_path / "classes.txt")
    model, meta = load_classifier(tmp_path / "run")
    assert meta.classes == ["cat", "dog", "fox"] and meta.mean == (0.5, 0.5, 0.5)
    assert model(torch.zeros(1, 3, 64, 64)).shape == (1, 3)
    (tmp_path / "two.txt").write_text("cat\ndog\n")
    with pytest.raises(InputError, match="2 class names for a classifier of 3 outputs"):
        convert_torchvision_weights(tmp_path / "w.pth", tmp_path / "r2", tmp_path / "two.txt")


def test_wrong_files_are_input_errors(tmp_path):
    torch.save(resnet18(num_classes=3).state_dict(), tmp_path / "resnet.pth")
    with pytest.raises(InputError, match="do not fit"):
        convert_torchvision_weights(tmp_path / "resnet.pth", tmp_path / "run")
    torch.save({"weights": [1, 2]}, tmp_path / "other.pth")
    with pytest.raises(InputError, match="not a torchvision googlenet"):
        convert_torchvision_weights(tmp_path / "other.pth", tmp_path / "run")
    (tmp_path / "junk.pth").write_bytes(b"junk")
    with pytest.raises(InputError, match="cannot read"):
        convert_torchvision_weights(tmp_path / "junk.pth", tmp_path / "run")
    assert not (tmp_path / "run").exists()
