"""Shared by the detector tests: tiny random-init region classifiers (width 0.125, 64 px crops)."""
import torch

from backbone.models import ModelMeta, build_model
from detect.config import DetectorConfig

CLASSES = ["circle", "square", "triangle"]
CROP = 64


def tiny_member(seed: int, spread: float = 1.0):
    """A random-init width-0.125 GoogLeNet with K+1 outputs at a 64 px crop; `spread` scales
    the classifier weights so that classes are told apart (a random net is near uniform)."""
    torch.manual_seed(seed)
    model = build_model("googlenet", len(CLASSES) + 1, width=0.125, aux_logits=False, dropout=0.0)
    with torch.no_grad():
        model.fc.weight.mul_(spread)
    return model.eval(), ModelMeta("googlenet", len(CLASSES) + 1, ["__background__", *CLASSES],
                                   width=0.125, input_size=CROP)


def make_config(**inference) -> DetectorConfig:
    """Default DetectorConfig in float32, with inference fields set from keywords."""
    cfg = DetectorConfig()
    cfg.inference.precision = "float32"
    for k, v in inference.items():
        setattr(cfg.inference, k, v)
    return cfg
