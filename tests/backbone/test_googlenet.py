"""The paper's GoogLeNet: sizes of Table 1, initialisation, width, small inputs, outputs."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from backbone.googlenet import INCEPTION_SPECS, GoogLeNet, GoogLeNetOutputs, LocalResponseNorm


@pytest.fixture(scope="module")
def paper_net():
    torch.manual_seed(0)
    return GoogLeNet(1000, width=1.0, aux_logits=True).eval()


def n_params(module):
    return sum(p.numel() for p in module.parameters())


def test_parameter_counts(paper_net):
    aux = n_params(paper_net.aux1) + n_params(paper_net.aux2)
    assert n_params(paper_net) - aux == 6_998_552
    assert aux == 6_379_728
    assert n_params(GoogLeNet(1000, aux_logits=False)) == 6_998_552


def test_stage_shapes_follow_table_1(paper_net):
    names = ["stem", *(f"inception{n}" for n in INCEPTION_SPECS)]
    shapes = {}
    hooks = [getattr(paper_net, n).register_forward_hook(
        lambda m, i, o, n=n: shapes.__setitem__(n, tuple(o.shape[1:]))) for n in names]
    hooks.append(paper_net.stem[4].register_forward_hook(
        lambda m, i, o: shapes.__setitem__("conv2", tuple(o.shape[1:]))))
    with torch.no_grad():
        features = paper_net.forward_features(torch.zeros(1, 3, 224, 224))
    for h in hooks:
        h.remove()
    assert shapes["conv2"] == (192, 56, 56)  # before the stem's last pool
    assert shapes["stem"] == (192, 28, 28)
    expected = {"3a": 256, "3b": 480, "4a": 512, "4b": 512, "4c": 512, "4d": 528, "4e": 832,
                "5a": 832, "5b": 1024}
    for name, channels in expected.items():
        side = 28 if name[0] == "3" else 14 if name[0] == "4" else 7
        assert shapes[f"inception{name}"] == (channels, side, side), name
    assert features.shape == (1, 1024, 7, 7)


def test_branch_widths_and_real_5x5(paper_net):
    block = paper_net.inception4e
    convs = [m for m in block.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [256, 160, 320, 32, 128, 128]
    assert [c.kernel_size[0] for c in convs] == [1, 1, 3, 1, 5, 1]


def test_caffe_initialisation(paper_net):
    outputs = {id(paper_net.fc), id(paper_net.aux1.classifier), id(paper_net.aux2.classifier)}
    layers = [m for m in paper_net.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert len(layers) == 3 + 9 * 6 + 1 + 2 * 3  # stem, inception convs, fc, aux (conv, fc, fc)
    for m in layers:
        bound = math.sqrt(3.0 / m.weight[0].numel())
        w = m.weight.detach().abs()
        assert w.max() <= bound + 1e-7
        if m.weight.numel() > 10_000:  # uniform: a large layer reaches close to the bound
            assert w.max() > 0.95 * bound
            assert abs(w.mean().item() - bound / 2) < 0.02 * bound
        expected_bias = 0.0 if id(m) in outputs else 0.2
        assert torch.all(m.bias == expected_bias)


def test_width_scales_every_filter_count():
    net = GoogLeNet(10, width=0.5, aux_logits=False)
    assert net.inception3a.out_channels == 128
    assert net.num_features == 512
    assert net.stem[0][0].out_channels == 32
    convs = [m.out_channels for m in net.inception5b.modules() if isinstance(m, nn.Conv2d)]
    assert convs == [192, 96, 192, 24, 64, 64]


def test_smallest_input_and_head():
    torch.manual_seed(0)
    net = GoogLeNet(7, width=0.125).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        features = net.forward_features(x)
        logits = net(x)
        assert torch.allclose(net.forward_head(features), logits)
    assert features.shape == (2, net.num_features, 2, 2)
    assert logits.shape == (2, 7)


def test_training_returns_named_tuple():
    net = GoogLeNet(5, width=0.125).train()
    out = net(torch.randn(2, 3, 64, 64))
    assert isinstance(out, GoogLeNetOutputs)
    assert out._fields == ("logits", "aux1", "aux2")
    assert all(t.shape == (2, 5) for t in out)
    no_aux = GoogLeNet(5, width=0.125, aux_logits=False).train()
    assert no_aux(torch.randn(2, 3, 64, 64)).shape == (2, 5)


def test_reset_classifier():
    net = GoogLeNet(5, width=0.125)
    trunk = net.inception5b.branch1[0].weight.clone()
    net.reset_classifier(3)
    assert net.num_classes == 3
    assert net.fc.out_features == 3 and torch.all(net.fc.bias == 0)
    assert net.aux1.classifier.out_features == 3 and net.aux2.classifier.out_features == 3
    assert torch.equal(net.inception5b.branch1[0].weight, trunk)  # the trunk is kept
    assert net.eval()(torch.randn(1, 3, 64, 64)).shape == (1, 3)


@pytest.mark.parametrize("channels", [7, 64])
@pytest.mark.parametrize("channels_last", [False, True])
def test_fast_lrn_equals_torch(channels, channels_last):
    """Our LRN (one band-matrix product) computes torch's / Caffe's function, values and gradients."""
    lrn = LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=1.0)
    x = (torch.randn(2, channels, 5, 6, generator=torch.Generator().manual_seed(0)) * 40).double()
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_(True)
    ours = lrn(x)
    ours.square().sum().backward()
    grad_ours, x.grad = x.grad.clone(), None
    ref = F.local_response_norm(x, 5, alpha=1e-4, beta=0.75, k=1.0)
    ref.square().sum().backward()
    assert (ours - ref).abs().max().item() < 1e-12
    assert (grad_ours - x.grad).abs().max().item() < 1e-12
    assert (ours - x).abs().max().item() > 1e-3  # large inputs: the normalisation really acts
    with torch.no_grad():  # the in-place inference path
        assert torch.allclose(lrn(x), ref, atol=1e-12, rtol=0)


def test_fast_lrn_window_at_the_edges():
    """Channel c sums squares of channels c-2..c+2 that exist (zero padding), divided by 5."""
    lrn = LocalResponseNorm(5, alpha=1.0, beta=1.0, k=1.0)
    x = torch.tensor([1.0, 2.0, 3.0, 4.0]).view(1, 4, 1, 1)
    sums = torch.tensor([1 + 4 + 9, 1 + 4 + 9 + 16, 1 + 4 + 9 + 16, 4 + 9 + 16])
    expected = x.flatten() / (1.0 + sums / 5.0)
    assert torch.allclose(lrn(x).flatten(), expected)


def test_freeze_through_stops_the_backward_pass_above_the_block():
    net = GoogLeNet(num_classes=5, width=0.125, aux_logits=False)
    assert net.freeze_through("inception3b") == ["stem", "inception3a", "inception3b"]
    net(torch.randn(2, 3, 64, 64)).sum().backward()
    for name, p in net.named_parameters():
        frozen = name.split(".")[0] in ("stem", "inception3a", "inception3b")
        assert p.requires_grad != frozen and (p.grad is None) == frozen, name
    with pytest.raises(ValueError, match="unknown block"):
        net.freeze_through("inception6a")
