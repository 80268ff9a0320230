"""backbone: the paper's GoogLeNet, its classification training and evaluation, classification data."""
from importlib import import_module

# Loaded on first use (PEP 562): `backbone.errors` and `backbone.io` are imported by every
# `detect` command, `--help` included, and must not pull in torch.
_EXPORTS = {
    "GoogLeNet": "backbone.googlenet", "GoogLeNetOutputs": "backbone.googlenet",
    "ModelMeta": "backbone.models", "build_model": "backbone.models", "load_classifier": "backbone.models",
    "read_meta": "backbone.models", "save_classifier": "backbone.models",
    "ImageDataset": "backbone.data", "scan_image_folder": "backbone.data",
    "EvalTransform": "backbone.transforms", "TrainTransform": "backbone.transforms",
    "ClassifierConfig": "backbone.train", "ModelEMA": "backbone.engine", "evaluate": "backbone.train",
    "train_classifier": "backbone.train", "train_one_epoch": "backbone.train",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'backbone' has no attribute '{name}'")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
