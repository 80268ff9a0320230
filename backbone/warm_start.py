"""Starting a classifier from another one: a `train-classifier` run or converted torchvision weights.

Shapes: K classes of the new head, K' of the old one, F features.

The whole network is copied (the auxiliary heads too, where the folder has them; fresh
ones where it does not, as converted torchvision weights, whose auxiliary heads torchvision
never trained), then the output layers get one row per new class. With `head="match"` a new
class the old classifier knows by name (`class_key`: case, punctuation and a leading `N_`
index ignored; ImageNet wnids match themselves) starts from the old row of the main head, the
others fresh; with `head="fresh"` every row is new. The same matching carries a classifier's
rows into a detector's head (`detect.finetune.init_member`).
"""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import Tensor, nn

from backbone.errors import InputError
from backbone.io import load_weights
from backbone.models import META_FILE, WEIGHTS_FILE, ModelMeta, build_model, read_meta

HEADS = ("match", "fresh")


def class_key(name: str) -> str:
    """A class name reduced for matching across data sets: lower case, a leading `N_` index
    dropped, letters and digits only ('0_T-shirt_top' and 'tshirt_top' both give 'tshirttop';
    an ImageNet wnid stays itself)."""
    return re.sub(r"[^0-9a-z]", "", re.sub(r"^\d+_", "", name.strip().lower()))


def match_rows(old_classes: Sequence[str], new_classes: Sequence[str]) -> list[tuple[int, int]]:
    """(new row, old row) for each of `new_classes` that `old_classes` holds with the same
    `class_key`; a key two old classes share is left out (no guessing)."""
    rows: dict[str, int | None] = {}
    for i, name in enumerate(old_classes):
        key = class_key(name)
        rows[key] = None if key in rows else i
    return [(j, rows[class_key(name)]) for j, name in enumerate(new_classes)
            if rows.get(class_key(name)) is not None]


def carry_rows(old_weight: Tensor, old_bias: Tensor, head: nn.Linear, pairs: Sequence[tuple[int, int]]) -> None:
    """Copy old rows into `head`: old_weight Tensor[K', F], old_bias Tensor[K'], pairs of
    (new row, old row) from `match_rows`."""
    with torch.no_grad():
        for j, i in pairs:
            head.weight[j] = old_weight[i]
            head.bias[j] = old_bias[i]


def main_head(model: nn.Module) -> nn.Linear:
    """The final linear layer of either architecture (ours: .fc; torchvision's: .net.fc)."""
    return model.fc if isinstance(getattr(model, "fc", None), nn.Linear) else model.net.fc


def load_trainable(run_dir: str | Path, dropout: float | None = None,
                   aux_dropout: float = 0.7) -> tuple[nn.Module, ModelMeta]:
    """A saved classifier with its auxiliary heads, in train mode on the CPU: the folder's aux
    weights where it has them, fresh ones where it has not. InputError on any other mismatch."""
    run_dir = Path(run_dir)
    if not (run_dir / WEIGHTS_FILE).is_file():
        raise InputError(run_dir, "not a classifier run (no model.safetensors); make one with "
                                  "train-classifier or convert-weights")
    meta = read_meta(run_dir)
    model = build_model(meta.arch, meta.num_classes, meta.width, aux_logits=True, dropout=dropout,
                        aux_dropout=aux_dropout)
    try:
        missing, unexpected = model.load_state_dict(load_weights(run_dir / WEIGHTS_FILE), strict=False)
    except RuntimeError as e:  # a shape mismatch
        raise InputError(run_dir / WEIGHTS_FILE, f"weights do not match {meta.arch} width {meta.width}: "
                                                 f"{' '.join(str(e).split())[:200]}") from None
    bad = unexpected + [k for k in missing if "aux1." not in k and "aux2." not in k]
    if bad:
        raise InputError(run_dir / WEIGHTS_FILE, f"weights do not match {meta.arch}: unexpected or missing {bad[:3]}")
    return model.train(), meta


def start_from(run_dir: str | Path, classes: Sequence[str], head: str = "match", dropout: float | None = None,
               aux_dropout: float = 0.7) -> tuple[nn.Module, ModelMeta, list[str]]:
    """The classifier of `run_dir` with a head for `classes` (see the module docstring).

    Returns (model with auxiliary heads, on the CPU; the run's ModelMeta; the classes whose
    rows were carried).
    """
    if head not in HEADS:
        raise InputError(None, f"head must be one of {', '.join(HEADS)}, got '{head}'")
    model, meta = load_trainable(run_dir, dropout, aux_dropout)
    old = main_head(model)
    old_weight, old_bias = old.weight.detach().clone(), old.bias.detach().clone()
    model.reset_classifier(len(classes))
    pairs = match_rows(meta.classes, classes) if head == "match" else []
    carry_rows(old_weight, old_bias, main_head(model), pairs)
    return model, meta, [classes[j] for j, _ in pairs]


def adopt_init_run(model_cfg: Any) -> Any:
    """A model config (`backbone.train.ModelConfig`) with the arch, width, mean and std of its
    `init_run`, which the weights fix; unchanged without one. The input size stays the config's."""
    if not model_cfg.init_run:
        return model_cfg
    if not Path(model_cfg.init_run, META_FILE).is_file():
        raise InputError(model_cfg.init_run, "not a classifier run (no model.json); make one with "
                                             "train-classifier or convert-weights")
    meta = read_meta(model_cfg.init_run)
    return dataclasses.replace(model_cfg, arch=meta.arch, width=meta.width, mean=list(meta.mean), std=list(meta.std))
