"""Building, saving and loading classifiers: the one place every command gets a model from.

A saved model is a folder holding `model.safetensors` (the weights, no pickle) and
`model.json` (what is needed to rebuild and use it: `ModelMeta`). Two architectures:

- `googlenet`: the paper's network (`backbone.googlenet.GoogLeNet`), any width.
- `torchvision_googlenet`: torchvision's GoogLeNet (BatchNorm, 3x3 in place of 5x5), built by
  torchvision itself so that its public ImageNet weights load from a local file.

Both expose `forward_features`, `forward_head`, `reset_classifier`, `num_features` and the
same output convention (a named tuple with auxiliary logits in training mode).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from backbone.errors import InputError
from backbone.googlenet import GoogLeNet, GoogLeNetOutputs, he_init
from backbone.io import atomic_write_json, load_weights, read_json, save_weights

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
WEIGHTS_FILE = "model.safetensors"
META_FILE = "model.json"


@dataclass
class ModelMeta:
    arch: str  # "googlenet" (the paper's) or "torchvision_googlenet"
    num_classes: int  # outputs of the classifier (K+1 for a region classifier)
    classes: list[str]  # class names, index-aligned with the outputs
    width: float = 1.0  # filter-count multiplier (googlenet only)
    input_size: int = 224  # side of the square input the model was trained at
    mean: tuple[float, float, float] = IMAGENET_MEAN  # per-channel RGB mean on the 0..1 scale
    std: tuple[float, float, float] = IMAGENET_STD  # per-channel RGB std on the 0..1 scale
    extra: dict = field(default_factory=dict)  # task-specific facts (e.g. {"task": "detector"})


class TorchvisionGoogLeNet(nn.Module):
    """torchvision's GoogLeNet behind the same interface as ours."""

    def __init__(self, num_classes: int = 1000, aux_logits: bool = True, dropout: float = 0.2,
                 aux_dropout: float = 0.7):
        super().__init__()
        from torchvision.models import googlenet

        self.net = googlenet(weights=None, num_classes=num_classes, aux_logits=aux_logits,
                             transform_input=False, init_weights=True, dropout=dropout,
                             dropout_aux=aux_dropout)
        self.num_features = self.net.fc.in_features
        self.num_classes = num_classes
        self.aux_logits = aux_logits

    def forward_features(self, x: Tensor) -> Tensor:
        n = self.net
        for layer in (n.conv1, n.maxpool1, n.conv2, n.conv3, n.maxpool2, n.inception3a,
                      n.inception3b, n.maxpool3, n.inception4a, n.inception4b, n.inception4c,
                      n.inception4d, n.inception4e, n.maxpool4, n.inception5a, n.inception5b):
            x = layer(x)
        return x

    def pool_features(self, features: Tensor) -> Tensor:
        return torch.flatten(self.net.avgpool(features), 1)

    def forward_head(self, features: Tensor) -> Tensor:
        return self.net.fc(self.net.dropout(self.pool_features(features)))

    def forward(self, x: Tensor) -> Tensor | GoogLeNetOutputs:
        out = self.net(x)
        if isinstance(out, tuple):  # torchvision's GoogLeNetOutputs(logits, aux_logits2, aux_logits1)
            return GoogLeNetOutputs(out.logits, out.aux_logits1, out.aux_logits2)
        return out

    def reset_classifier(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.net.fc = nn.Linear(self.num_features, num_classes)
        for aux in (self.net.aux1, self.net.aux2):
            if aux is not None:
                aux.fc2 = nn.Linear(aux.fc2.in_features, num_classes)


ARCHS = {"googlenet": GoogLeNet, "torchvision_googlenet": TorchvisionGoogLeNet}


def build_model(arch: str, num_classes: int, width: float = 1.0, aux_logits: bool = True,
                dropout: float | None = None, aux_dropout: float = 0.7,
                init: str = "caffe") -> nn.Module:
    """A classifier of architecture `arch` (see ARCHS); `init` "caffe" (the paper's) or "he"."""
    if arch not in ARCHS:
        raise InputError(None, f"unknown arch '{arch}' (choose from {', '.join(ARCHS)})")
    if init not in ("caffe", "he"):
        raise InputError(None, f"unknown init '{init}' (choose caffe or he)")
    if arch == "googlenet":
        model = GoogLeNet(num_classes, width=width, aux_logits=aux_logits,
                          dropout=0.4 if dropout is None else dropout, aux_dropout=aux_dropout)
        if init == "he":
            he_init(model)
        return model
    if width != 1.0:
        raise InputError(None, "torchvision_googlenet has no width multiplier (use width: 1.0)")
    return TorchvisionGoogLeNet(num_classes, aux_logits=aux_logits,
                                dropout=0.2 if dropout is None else dropout, aux_dropout=aux_dropout)


def save_classifier(run_dir: str | Path, model: nn.Module, meta: ModelMeta) -> None:
    """Write `model.safetensors` and `model.json` into `run_dir` (atomically)."""
    run_dir = Path(run_dir)
    model = getattr(model, "module", model)  # unwrap DistributedDataParallel
    save_weights(run_dir / WEIGHTS_FILE, model.state_dict(), {"arch": meta.arch})
    atomic_write_json(run_dir / META_FILE, dataclasses.asdict(meta))


def read_meta(run_dir: str | Path) -> ModelMeta:
    path = Path(run_dir) / META_FILE
    data = read_json(path)
    try:
        data["mean"], data["std"] = tuple(data["mean"]), tuple(data["std"])
        return ModelMeta(**data)
    except (TypeError, KeyError) as e:
        raise InputError(path, f"not a model description: {e}") from None


def load_classifier(run_dir: str | Path, device: str | torch.device = "cpu",
                    aux_logits: bool = False) -> tuple[nn.Module, ModelMeta]:
    """Rebuild a saved classifier in eval mode on `device`. Raises InputError on any mismatch."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise InputError(run_dir, "model folder not found")
    meta = read_meta(run_dir)
    model = build_model(meta.arch, meta.num_classes, meta.width, aux_logits=True)
    state = load_weights(run_dir / WEIGHTS_FILE)
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as e:  # a shape mismatch: another width or class count
        first = str(e).strip().splitlines()[1 if len(str(e).splitlines()) > 1 else 0].strip()
        raise InputError(run_dir / WEIGHTS_FILE, f"weights do not match {meta.arch} "
                         f"width {meta.width} with {meta.num_classes} classes: {first}") from None
    aux_missing = [k for k in missing if _is_aux_key(k)]
    if unexpected or len(aux_missing) != len(missing):
        bad = (unexpected or [k for k in missing if not _is_aux_key(k)])[:3]
        raise InputError(run_dir / WEIGHTS_FILE, f"weights do not match {meta.arch}: "
                         f"unexpected or missing tensors {bad}")
    if aux_logits and aux_missing:
        raise InputError(run_dir / WEIGHTS_FILE, "this model was saved without auxiliary heads")
    if not aux_logits or aux_missing:
        _drop_aux(model)
    return model.to(device).eval(), meta


def _is_aux_key(key: str) -> bool:
    return key.startswith(("aux1.", "aux2.", "net.aux1.", "net.aux2."))


def _drop_aux(model: nn.Module) -> None:
    """Remove the auxiliary heads (inference never uses them)."""
    if isinstance(model, GoogLeNet):
        model.aux1 = model.aux2 = None
        model.aux_logits = False
    else:
        model.net.aux1 = model.net.aux2 = None
        model.net.aux_logits = False
        model.aux_logits = False
