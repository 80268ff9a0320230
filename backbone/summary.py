"""A Table 1 style listing of a classifier: per layer the output size, parameters, multiply-adds.

Multiply-adds count the convolutions and the linear layers only (as the paper's 1.5 G does):
a convolution costs `output elements x in_channels/groups x kh x kw`, a linear layer
`in_features x out_features`; biases, pooling, LRN, ReLU and BatchNorm are free. They are
measured, not derived: forward hooks on every `Conv2d` / `Linear` record what one image of
`input_size x input_size` really costs, so any width, input size or architecture is counted
the same way.

At width 1.0, 224 x 224 and 1000 classes the paper's network has 6,998,552 parameters and
about 1.586 G multiply-adds (the auxiliary heads add 6,379,728 parameters).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from backbone.errors import InputError
from backbone.googlenet import GoogLeNet, Inception
from backbone.models import build_model


@dataclass
class LayerRow:
    name: str  # "conv1", "inception3a", "aux1", ...
    kind: str  # "conv 7x7/2", "max pool 3x3/2", "inception", ...
    output: tuple[int, ...]  # output shape of one image: (C, H, W) or (C,)
    params: int  # parameters (weights and biases) of this layer
    macs: int  # multiply-adds of this layer for one image
    widths: tuple[int, ...] = ()  # inception: #1x1, #3x3 reduce, #3x3, #5x5 reduce, #5x5, pool proj
    aux: bool = False  # an auxiliary head (training only)


@dataclass
class Summary:
    arch: str
    width: float
    input_size: int
    num_classes: int
    rows: list[LayerRow]

    @property
    def params(self) -> int:
        """Parameters of the network used at inference (auxiliary heads excluded)."""
        return sum(r.params for r in self.rows if not r.aux)

    @property
    def macs(self) -> int:
        """Multiply-adds of one inference forward pass (auxiliary heads excluded)."""
        return sum(r.macs for r in self.rows if not r.aux)

    @property
    def aux_params(self) -> int:
        return sum(r.params for r in self.rows if r.aux)

    @property
    def aux_macs(self) -> int:
        return sum(r.macs for r in self.rows if r.aux)


def _layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The top-level layers of either architecture in forward order (the rows of Table 1)."""
    if isinstance(model, GoogLeNet):
        stem_names = ["conv1", "pool1", "norm1", "conv2_reduce", "conv2", "norm2", "pool2"]
        layers = list(zip(stem_names, model.stem))
        blocks = [(f"inception{n}", getattr(model, f"inception{n}")) for n in
                  ("3a", "3b", "4a", "4b", "4c", "4d", "4e", "5a", "5b")]
        layers += blocks[:2] + [("pool3", model.pool3)] + blocks[2:7] + [("pool4", model.pool4)]
        return layers + blocks[7:] + [("dropout", model.dropout), ("fc", model.fc)]
    net = model.net  # TorchvisionGoogLeNet
    names = ["conv1", "maxpool1", "conv2", "conv3", "maxpool2", "inception3a", "inception3b",
             "maxpool3", "inception4a", "inception4b", "inception4c", "inception4d",
             "inception4e", "maxpool4", "inception5a", "inception5b", "avgpool", "dropout", "fc"]
    return [(n, getattr(net, n)) for n in names]


def _aux_heads(model: nn.Module) -> list[tuple[str, nn.Module, str]]:
    """(name, head, name of the layer whose output feeds it)."""
    owner = model if isinstance(model, GoogLeNet) else model.net
    heads = [("aux1", owner.aux1, "inception4a"), ("aux2", owner.aux2, "inception4d")]
    return [h for h in heads if h[1] is not None]


def describe(module: nn.Module) -> str:
    """A Table 1 "type" for a layer: "conv 7x7/2", "max pool 3x3/2", "LRN", ..."""
    if isinstance(module, Inception) or type(module).__name__ == "Inception":
        return "inception"
    if isinstance(module, nn.MaxPool2d):
        return f"max pool {_pair(module.kernel_size)}/{_first(module.stride)}"
    if isinstance(module, (nn.AvgPool2d, nn.AdaptiveAvgPool2d)):
        return "avg pool (global)" if isinstance(module, nn.AdaptiveAvgPool2d) else \
            f"avg pool {_pair(module.kernel_size)}/{_first(module.stride)}"
    if isinstance(module, nn.LocalResponseNorm):
        return "LRN"
    if isinstance(module, nn.Dropout):
        return f"dropout ({module.p:.0%})"
    if isinstance(module, nn.Linear):
        return "linear"
    convs = [m for m in module.modules() if isinstance(m, nn.Conv2d)]
    if len(convs) == 1:
        c = convs[0]
        return f"conv {_pair(c.kernel_size)}/{_first(c.stride)}"
    return type(module).__name__


def _pair(k: int | tuple[int, ...]) -> str:
    k = (k, k) if isinstance(k, int) else k
    return f"{k[0]}x{k[1]}"


def _first(s: int | tuple[int, ...]) -> int:
    return s if isinstance(s, int) else s[0]


def _inception_widths(module: nn.Module) -> tuple[int, ...]:
    """Output channels of the block's convolutions in Table 1's column order."""
    if describe(module) != "inception":
        return ()
    return tuple(m.out_channels for m in module.modules() if isinstance(m, nn.Conv2d))


def _count_macs(module: nn.Module, out: Tensor) -> int:
    """Multiply-adds of one Conv2d / Linear call for the first image of the batch."""
    if isinstance(module, nn.Conv2d):
        kh, kw = module.kernel_size
        return out[0].numel() * (module.in_channels // module.groups) * kh * kw
    return out[0].numel() // module.out_features * module.in_features * module.out_features


def _measure(layers: list[tuple[str, nn.Module]], run) -> dict[str, tuple[tuple[int, ...], int]]:
    """Run `run()` with hooks; return {layer name: (output shape of one image, multiply-adds)}."""
    shapes: dict[str, tuple[int, ...]] = {}
    macs: dict[str, int] = {name: 0 for name, _ in layers}
    handles = []
    for name, layer in layers:
        handles.append(layer.register_forward_hook(
            lambda m, i, o, name=name: shapes.__setitem__(name, tuple(o.shape[1:]))))
        for m in layer.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                handles.append(m.register_forward_hook(
                    lambda m, i, o, name=name: macs.__setitem__(name, macs[name] + _count_macs(m, o))))
    try:
        run()
    finally:
        for h in handles:
            h.remove()
    return {name: (shapes[name], macs[name]) for name, _ in layers}


def _n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@torch.no_grad()
def summarize(model: nn.Module, input_size: int = 224, aux: bool = False) -> Summary:
    """Measure `model` (either architecture) on one `3 x input_size x input_size` image.

    With `aux`, the auxiliary heads (if the model has them) are run on the 4a / 4d outputs and
    listed as extra rows; their parameters and multiply-adds are kept out of the main totals.
    """
    was_training = model.training
    try:
        return _summarize_eval(model.eval(), input_size, aux)
    finally:
        model.train(was_training)


def _summarize_eval(model: nn.Module, input_size: int, aux: bool) -> Summary:
    """`summarize` of a model already in eval mode (no dropout, BatchNorm statistics untouched)."""
    layers = _layers(model)
    captured: dict[str, Tensor] = {}
    feeds = {src for _, _, src in _aux_heads(model)} if aux else set()
    handles = [m.register_forward_hook(lambda m, i, o, n=n: captured.__setitem__(n, o))
               for n, m in layers if n in feeds]
    x = torch.zeros(1, 3, input_size, input_size)
    try:
        measured = _measure(layers, lambda: model(x))
    finally:
        for h in handles:
            h.remove()
    rows = [LayerRow(n, describe(m), measured[n][0], _n_params(m), measured[n][1],
                     _inception_widths(m)) for n, m in layers]
    if isinstance(model, GoogLeNet):  # its global pool is functional: show it as Table 1 does
        at = [r.name for r in rows].index("dropout")
        rows.insert(at, LayerRow("avgpool", "avg pool (global)", rows[at].output, 0, 0))
    if aux:
        for name, head, src in _aux_heads(model):
            shape, macs = _measure([(name, head)], lambda: head(captured[src]))[name]
            rows.append(LayerRow(name, f"aux head on {src[-2:]}", shape, _n_params(head), macs,
                                 aux=True))
    num_classes = next(r.output[0] for r in rows if r.name == "fc")
    if isinstance(model, GoogLeNet):
        return Summary("googlenet", model.width, input_size, num_classes, rows)
    return Summary("torchvision_googlenet", 1.0, input_size, num_classes, rows)


def build_summary(arch: str = "googlenet", width: float = 1.0, input_size: int = 224,
                  num_classes: int = 1000, aux: bool = False) -> Summary:
    """Build a fresh model of `arch` and summarize it (what `detect summary` prints)."""
    model = build_model(arch, num_classes, width=width, aux_logits=aux)
    try:
        return summarize(model, input_size, aux=aux)
    except RuntimeError as e:  # a feature map pooled down to nothing
        raise InputError(None, f"input size {input_size} is too small for {arch}: "
                               f"{str(e).splitlines()[0]}") from None


def _size(shape: tuple[int, ...]) -> str:
    if len(shape) == 3:
        return f"{shape[1]}x{shape[2]}x{shape[0]}"
    return f"1x1x{shape[0]}"


def _macs(n: int) -> str:
    return f"{n / 1e9:.3f} G" if n >= 1e9 else f"{n / 1e6:.1f} M"


def format_summary(s: Summary) -> str:
    """The listing as text: one row per layer, then the totals."""
    head = (f"{'layer':<13} {'type':<18} {'output size':>13} {'#1x1/#3x3r/#3x3/#5x5r/#5x5/pp':>30}"
            f" {'params':>11} {'mult-adds':>10}")
    lines = [f"{s.arch} width {s.width:g}, input {s.input_size}x{s.input_size}, "
             f"{s.num_classes} classes", head, "-" * len(head)]
    for r in s.rows:
        widths = "/".join(str(w) for w in r.widths)
        lines.append(f"{r.name:<13} {r.kind:<18} {_size(r.output):>13} {widths:>30} "
                     f"{r.params:>11,} {r.macs / 1e6:>9.1f}M")
    lines.append("-" * len(head))
    lines.append(f"total (inference): {s.params:,} parameters, {_macs(s.macs)} multiply-adds")
    if any(r.aux for r in s.rows):
        lines.append(f"auxiliary heads:   {s.aux_params:,} parameters, "
                     f"{_macs(s.aux_macs)} multiply-adds (training only)")
    return "\n".join(lines)
