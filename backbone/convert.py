"""torchvision's ImageNet GoogLeNet weights, from a local file, as one of our model folders.

torchvision's `googlenet` is not the paper's network (BatchNorm, 3x3 in place of 5x5; see
docs/backbone.md), but its ImageNet weights are the only public ones for PyTorch, so they are
loaded into `arch: torchvision_googlenet` and saved with `save_classifier`; every command can
then use them like a model we trained.

Input normalisation: torchvision's pretrained GoogLeNet was ported from TensorFlow and runs
with `transform_input=True`, which turns ImageNet-normalised input into `(x - 0.5) / 0.5`.
Our wrapper never transforms its input, so with `transform_input=True` (the default, right
for torchvision's own weights file) the run folder records mean = std = (0.5, 0.5, 0.5), which
is exactly that transform; with `transform_input=False` it records ImageNet's mean and std.
"""
from __future__ import annotations

from pathlib import Path

import torch

from backbone.errors import InputError
from backbone.models import IMAGENET_MEAN, IMAGENET_STD, ModelMeta, TorchvisionGoogLeNet, save_classifier

TF_MEAN = (0.5, 0.5, 0.5)  # what transform_input=True feeds the network: (x - 0.5) / 0.5
TF_STD = (0.5, 0.5, 0.5)


def read_torchvision_state(path: str | Path) -> dict[str, torch.Tensor]:
    """A googlenet state dict from a `.pth` file (plain, or under "state_dict" / "model")."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "weights file not found")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a corrupt or unsafe file
        raise InputError(path, f"cannot read weights: {e}") from None
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or "fc.weight" not in obj:
        raise InputError(path, "not a torchvision googlenet state dict (no 'fc.weight')")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def read_class_names(path: str | Path | None, num_classes: int) -> list[str]:
    """One class name per line (blank lines ignored); "class_0".."class_{K-1}" without a file."""
    if path is None:
        return [f"class_{i}" for i in range(num_classes)]
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "classes file not found")
    names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if len(names) != num_classes:
        raise InputError(path, f"{len(names)} class names for a classifier of {num_classes} outputs")
    return names


def torchvision_googlenet_from_state(state: dict[str, torch.Tensor],
                                     source: str | Path = "weights") -> TorchvisionGoogLeNet:
    """Our torchvision_googlenet holding `state` exactly (auxiliary heads kept if present)."""
    num_classes = state["fc.weight"].shape[0]
    has_aux = any(k.startswith("aux1.") for k in state)
    model = TorchvisionGoogLeNet(num_classes, aux_logits=has_aux)
    try:
        model.net.load_state_dict(state, strict=True)
    except RuntimeError as e:
        detail = " ".join(str(e).split())[:300]
        raise InputError(source, f"weights do not fit torchvision's googlenet: {detail}") from None
    return model.eval()


def convert_torchvision_weights(weights: str | Path, out_dir: str | Path,
                                classes: str | Path | None = None,
                                transform_input: bool = True) -> ModelMeta:
    """Write a model folder (`save_classifier`) from a torchvision googlenet `.pth` file.

    The folder records arch torchvision_googlenet, input size 224, the class names (from the
    `classes` file, one per line, else "class_0".."class_{K-1}") and the normalisation that
    matches `transform_input` (see the module docstring). Returns the saved ModelMeta.
    """
    state = read_torchvision_state(weights)
    model = torchvision_googlenet_from_state(state, weights)
    names = read_class_names(classes, model.num_classes)
    meta = ModelMeta("torchvision_googlenet", model.num_classes, names, width=1.0, input_size=224,
                     mean=TF_MEAN if transform_input else IMAGENET_MEAN,
                     std=TF_STD if transform_input else IMAGENET_STD,
                     extra={"source": f"torchvision weights {Path(weights).name}",
                            "transform_input": transform_input})
    save_classifier(out_dir, model, meta)
    return meta
