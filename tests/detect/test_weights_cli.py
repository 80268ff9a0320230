"""detect convert-weights: a torchvision state dict (made here, never downloaded) becomes a
classifier run that reproduces it and that train-detector's members start from."""
from __future__ import annotations

import pytest
import torch
from torchvision.models import googlenet

from backbone.convert import convert_torchvision_weights
from backbone.crops import normalize
from backbone.models import IMAGENET_MEAN, IMAGENET_STD, load_classifier
from cli_helpers import run


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """root with tv.pth (a torchvision googlenet: 3 classes, auxiliary heads), names.txt and
    api/ (its conversion by the function the command calls), and the torchvision network."""
    root = tmp_path_factory.mktemp("convert")
    torch.manual_seed(0)
    net = googlenet(weights=None, num_classes=3, aux_logits=True, init_weights=False, transform_input=True).eval()
    torch.save(net.state_dict(), root / "tv.pth")
    (root / "names.txt").write_text("wallaby\nkangaroo\nemu\n")
    convert_torchvision_weights(root / "tv.pth", root / "api", root / "names.txt")
    return root, net


def test_convert_weights_reproduces_torchvision(capsys, converted):
    root, net = converted
    code, out, err = run(capsys, "convert-weights", "--torchvision", str(root / "tv.pth"), "--classes",
                         str(root / "names.txt"), "--out", str(root / "run"))
    assert code == 0, err
    assert out.startswith(f"wrote {root / 'run'}: torchvision_googlenet, 3 classes")
    model, meta = load_classifier(root / "run")
    assert meta.classes == ["wallaby", "kangaroo", "emu"] and meta.mean == (0.5, 0.5, 0.5)
    pixels = torch.randint(0, 256, (2, 3, 80, 80), dtype=torch.uint8)
    with torch.no_grad():
        want = net(normalize(pixels, IMAGENET_MEAN, IMAGENET_STD))  # torchvision's own input transform
        got = model(normalize(pixels, meta.mean, meta.std))
    assert torch.allclose(got, want, atol=1e-5, rtol=0)


def test_a_detector_member_starts_from_converted_weights(converted):
    from detect.finetune import init_member  # what train-detector --init calls for each member

    root, net = converted
    model, meta = init_member(root / "api", ["kangaroo"], 0, None, "match")
    assert meta.classes == ["__background__", "kangaroo"] and meta.arch == "torchvision_googlenet"
    assert torch.equal(model.net.fc.weight[1], net.fc.weight[1])  # kangaroo's row carried by name


def test_bad_files_are_one_line(tmp_path, capsys):
    code, _, err = run(capsys, "convert-weights", "--torchvision", str(tmp_path / "none.pth"), "--out", str(tmp_path / "r"))
    assert code == 2 and err.count("\n") == 1 and err.startswith(f"error: {tmp_path / 'none.pth'}: ")
    (tmp_path / "junk.pth").write_bytes(b"junk")
    code, _, err = run(capsys, "convert-weights", "--torchvision", str(tmp_path / "junk.pth"), "--out", str(tmp_path / "r"))
    assert code == 2 and err.count("\n") == 1 and err.startswith(f"error: {tmp_path / 'junk.pth'}: cannot read weights")
    assert not (tmp_path / "r").exists()
