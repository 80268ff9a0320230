"""GoogLeNet exactly as "Going Deeper with Convolutions" (Szegedy et al. 2014), Table 1.

Stem: conv 7x7/2 -> maxpool 3x3/2 -> LRN -> conv 1x1 -> conv 3x3 -> LRN -> maxpool 3x3/2;
inception 3a, 3b -> maxpool -> 4a..4e -> maxpool -> 5a, 5b -> global average pool ->
dropout 40% -> linear. Every convolution has a bias and a ReLU; pooling rounds up (Caffe);
the 5x5 branch is a real 5x5. Auxiliary classifiers sit on 4a and 4d (training only).

`width` multiplies every filter count: 1.0 is the paper's network (6,998,552 parameters at
1000 classes, plus 6,379,728 in the auxiliary heads); smaller widths are the paper's
"computationally cheaper" versions of the same design.

Shapes: B images, C channels, H x W input (at least 64 x 64; 224 in the paper).
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# (name, #1x1, #3x3 reduce, #3x3, #5x5 reduce, #5x5, pool proj) -- paper Table 1.
INCEPTION_SPECS = {
    "3a": (64, 96, 128, 16, 32, 32),
    "3b": (128, 128, 192, 32, 96, 64),
    "4a": (192, 96, 208, 16, 48, 64),
    "4b": (160, 112, 224, 24, 64, 64),
    "4c": (128, 128, 256, 24, 64, 64),
    "4d": (112, 144, 288, 32, 64, 64),
    "4e": (256, 160, 320, 32, 128, 128),
    "5a": (256, 160, 320, 32, 128, 128),
    "5b": (384, 192, 384, 48, 128, 128),
}

TRUNK_BLOCKS = ("stem", *(f"inception{name}" for name in INCEPTION_SPECS))  # in forward order


class GoogLeNetOutputs(NamedTuple):
    logits: Tensor  # [B, num_classes] main classifier
    aux1: Tensor  # [B, num_classes] auxiliary classifier on 4a
    aux2: Tensor  # [B, num_classes] auxiliary classifier on 4d


def scaled(channels: int, width: float) -> int:
    """A filter count scaled by the width multiplier (at least 1)."""
    return max(1, int(round(channels * width)))


class ConvReLU(nn.Sequential):
    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, padding: int = 0):
        super().__init__(nn.Conv2d(cin, cout, kernel, stride, padding), nn.ReLU(inplace=True))


class LocalResponseNorm(nn.LocalResponseNorm):
    """Cross-channel LRN, the same function as `nn.LocalResponseNorm` (Caffe's: the window sum
    of squares is divided by `size`, zero padded at the ends), computed faster.

    torch's version runs a 3-D average pool over an unsqueezed copy (no bfloat16 kernel, five
    passes over the largest activations of the network). Here the window sum is one matrix
    product of the squares, channels last, with a 0/1 band matrix (k + alpha/size * sum fused
    in `addmm`): AMX/tensor-core work in bfloat16, and 1.8x (NCHW) to 2.7x (channels-last)
    faster than torch's in float32 on a 2-core CPU (docs/performance.md; equal to 1e-12 in
    float64, tests/backbone/test_googlenet.py).
    """

    def __init__(self, size: int, alpha: float = 1e-4, beta: float = 0.75, k: float = 1.0):
        super().__init__(size, alpha, beta, k)
        self._bands: dict[tuple, Tensor] = {}

    def band(self, channels: int, dtype: torch.dtype, device: torch.device) -> Tensor:
        """[C, C] with ones where input channel i is in output channel j's window."""
        key = (channels, dtype, device)
        if key not in self._bands:
            i = torch.arange(channels, device=device)
            offset = i[:, None] - i[None, :]  # input minus output channel
            inside = (offset >= -(self.size // 2)) & (offset <= (self.size - 1) // 2)
            self._bands[key] = inside.to(dtype)
        return self._bands[key]

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4:
            return super().forward(x)
        v = x.permute(0, 2, 3, 1)  # [B, H, W, C]: a view for channels-last input
        squares = (v * v).reshape(-1, v.shape[-1])
        k = torch.full((1, v.shape[-1]), self.k, dtype=x.dtype, device=x.device)
        # k + alpha / size * window sum, in one fused matrix product
        scale = torch.addmm(k, squares, self.band(x.shape[1], x.dtype, x.device), alpha=self.alpha / self.size)
        scale = scale.pow_(-self.beta) if not torch.is_grad_enabled() else scale.pow(-self.beta)
        return x * scale.view(v.shape).permute(0, 3, 1, 2)


class Inception(nn.Module):
    """Four parallel branches concatenated: 1x1 | 1x1->3x3 | 1x1->5x5 | maxpool->1x1."""

    def __init__(self, cin: int, c1: int, c3r: int, c3: int, c5r: int, c5: int, pp: int):
        super().__init__()
        self.branch1 = ConvReLU(cin, c1, 1)
        self.branch2 = nn.Sequential(ConvReLU(cin, c3r, 1), ConvReLU(c3r, c3, 3, padding=1))
        self.branch3 = nn.Sequential(ConvReLU(cin, c5r, 1), ConvReLU(c5r, c5, 5, padding=2))
        self.branch4 = nn.Sequential(nn.MaxPool2d(3, 1, 1, ceil_mode=True), ConvReLU(cin, pp, 1))
        self.out_channels = c1 + c3 + c5 + pp

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([self.branch1(x), self.branch2(x), self.branch3(x), self.branch4(x)], 1)


class AuxHead(nn.Module):
    """avgpool 5x5/3 -> 1x1 conv 128 -> fc 1024 -> dropout 70% -> linear (paper section 5)."""

    def __init__(self, cin: int, num_classes: int, width: float, dropout: float):
        super().__init__()
        self.pool = nn.AvgPool2d(5, 3)
        self.conv = ConvReLU(cin, scaled(128, width), 1)
        self.fc = nn.Linear(scaled(128, width) * 16, scaled(1024, width))
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(scaled(1024, width), num_classes)

    def forward(self, x: Tensor) -> Tensor:
        if min(x.shape[-2:]) >= 5:
            x = self.pool(x)
        if x.shape[-2:] != (4, 4):  # inputs other than 224: keep the 4x4 grid the fc expects
            x = F.adaptive_avg_pool2d(x, 4)
        x = torch.flatten(self.conv(x), 1)
        return self.classifier(self.dropout(F.relu(self.fc(x), inplace=True)))


class GoogLeNet(nn.Module):
    """The paper's network. Input: normalised images `[B, 3, H, W]`.

    Training mode with auxiliary heads returns `GoogLeNetOutputs(logits, aux1, aux2)`;
    otherwise `Tensor[B, num_classes]`.
    """

    def __init__(self, num_classes: int = 1000, width: float = 1.0, aux_logits: bool = True,
                 dropout: float = 0.4, aux_dropout: float = 0.7):
        super().__init__()
        s = lambda c: scaled(c, width)  # noqa: E731
        self.width = width
        self.stem = nn.Sequential(
            ConvReLU(3, s(64), 7, 2, 3),
            nn.MaxPool2d(3, 2, ceil_mode=True),
            LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=1.0),
            ConvReLU(s(64), s(64), 1),
            ConvReLU(s(64), s(192), 3, padding=1),
            LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=1.0),
            nn.MaxPool2d(3, 2, ceil_mode=True),
        )
        cin = s(192)
        for name, spec in INCEPTION_SPECS.items():
            block = Inception(cin, *[s(c) for c in spec])
            setattr(self, f"inception{name}", block)
            cin = block.out_channels
        self.pool3 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.pool4 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.num_features = cin
        self.aux_logits = aux_logits
        self.aux1 = AuxHead(self.inception4a.out_channels, num_classes, width, aux_dropout) if aux_logits else None
        self.aux2 = AuxHead(self.inception4d.out_channels, num_classes, width, aux_dropout) if aux_logits else None
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(cin, num_classes)
        self.num_classes = num_classes
        caffe_init(self)

    def _trunk(self, x: Tensor) -> tuple[Tensor, Tensor | None, Tensor | None]:
        x = self.stem(x)
        x = self.pool3(self.inception3b(self.inception3a(x)))
        a = self.inception4a(x)
        x = self.inception4c(self.inception4b(a))
        d = self.inception4d(x)
        x = self.pool4(self.inception4e(d))
        x = self.inception5b(self.inception5a(x))
        return x, a, d

    def forward_features(self, x: Tensor) -> Tensor:
        """The 5b output `[B, num_features, H/32, W/32]` (rounded up)."""
        return self._trunk(x)[0]

    def pool_features(self, features: Tensor) -> Tensor:
        """The pooled region vector `[B, num_features]` the head classifies (global average pool
        of `forward_features`); the box regressors read it too."""
        return torch.flatten(F.adaptive_avg_pool2d(features, 1), 1)

    def forward_head(self, features: Tensor) -> Tensor:
        """Global average pool (the 7x7 pool at 224), dropout, linear: `[B, num_classes]`."""
        return self.fc(self.dropout(self.pool_features(features)))

    def forward(self, x: Tensor) -> Tensor | GoogLeNetOutputs:
        features, a, d = self._trunk(x)
        logits = self.forward_head(features)
        if self.training and self.aux_logits:
            return GoogLeNetOutputs(logits, self.aux1(a), self.aux2(d))
        return logits

    def freeze_through(self, block: str) -> list[str]:
        """Stop training the trunk from the stem up to and including `block` (a name of
        TRUNK_BLOCKS): their parameters no longer require gradients, so the backward pass
        stops above them. Returns the frozen blocks' names; ValueError on an unknown name."""
        if block not in TRUNK_BLOCKS:
            raise ValueError(f"unknown block '{block}'; one of {', '.join(TRUNK_BLOCKS)}")
        frozen = list(TRUNK_BLOCKS[:TRUNK_BLOCKS.index(block) + 1])
        for name in frozen:
            getattr(self, name).requires_grad_(False)
        return frozen

    def reset_classifier(self, num_classes: int) -> None:
        """New output layers (main and auxiliary) for `num_classes` classes, freshly initialised."""
        self.num_classes = num_classes
        self.fc = nn.Linear(self.num_features, num_classes)
        _init_linear(self.fc, bias=0.0)
        for aux in (self.aux1, self.aux2):
            if aux is not None:
                aux.classifier = nn.Linear(aux.classifier.in_features, num_classes)
                _init_linear(aux.classifier, bias=0.0)


def _xavier_caffe_(weight: Tensor) -> None:
    """Caffe's "xavier" filler: uniform in +-sqrt(3 / fan_in)."""
    fan_in = weight[0].numel()
    bound = math.sqrt(3.0 / fan_in)
    with torch.no_grad():
        weight.uniform_(-bound, bound)


def _init_linear(layer: nn.Module, bias: float) -> None:
    _xavier_caffe_(layer.weight)
    nn.init.constant_(layer.bias, bias)


def he_init(model: GoogLeNet) -> None:
    """He-normal weights, zero biases, small output layers: for short schedules from scratch.

    The paper's xavier filler with 0.2 biases keeps a 22-layer ReLU network without
    normalisation close to constant features for its first few hundred steps; a run of a few
    epochs cannot afford that, ImageNet's 250 epochs can. Off by default (`init: he`).
    """
    outputs = {id(model.fc)} | {id(a.classifier) for a in (model.aux1, model.aux2) if a is not None}
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            if id(m) in outputs:
                nn.init.normal_(m.weight, std=0.01)
            else:
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            nn.init.zeros_(m.bias)


def caffe_init(model: GoogLeNet) -> None:
    """BVLC initialisation: xavier weights, biases 0.2, classifier (output) biases 0."""
    outputs = {id(model.fc)} | {id(a.classifier) for a in (model.aux1, model.aux2) if a is not None}
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            _init_linear(m, bias=0.0 if id(m) in outputs else 0.2)
