"""R-CNN's bounding-box regression (Girshick et al. 2014, appendix C), fitted in closed form.

For a proposal P (centre Px, Py, size Pw, Ph) and its ground-truth box G the regression
targets are tx = (Gx - Px) / Pw, ty = (Gy - Py) / Ph, tw = log(Gw / Pw), th = log(Gh / Ph);
centres and sizes follow the project's box convention (width = x2 - x1, no +1). One linear map
per class from a region's features to the targets is fitted by ridge regression on the
proposals whose best ground-truth box (of any class; the proposal takes that box's class) has
IoU >= 0.6 with it.

Targets are normalised to zero mean and unit variance per coordinate over all classes' training
pairs before the fit (as Fast R-CNN does), so that one ridge lambda weighs the four coordinates
alike (tx, ty are about 10x smaller than tw, th); the mean and std are stored with the weights.
The bias is a column of ones the penalty leaves alone, so lambda shrinks the features' weights
towards "predict the class's mean offset", never towards a zero offset.

Shapes: R regions, D feature size, K foreground classes, N training pairs.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor
from torchvision.ops import box_iou, clip_boxes_to_image

from backbone.errors import InputError
from backbone.io import load_weights, save_weights

# exp(tw) is capped at 1000/16 (torchvision's and Detectron's limit): a wild prediction on an
# unusual region must not blow a box up to infinity.
MAX_LOG_SCALE = math.log(1000.0 / 16)
DEFAULT_LAMBDA = 1000.0  # R-CNN's ridge lambda
DEFAULT_MIN_IOU = 0.6    # R-CNN's training overlap
REGRESSOR_FILE = "box_regressor.safetensors"  # in each member's folder of a detector run


def encode_boxes(proposals: Tensor, targets: Tensor) -> Tensor:
    """R-CNN targets (tx, ty, tw, th) of proposals (Tensor[N, 4]) towards targets (Tensor[N, 4]);
    both need positive widths and heights. Returns Tensor[N, 4]."""
    pw, ph = proposals[:, 2] - proposals[:, 0], proposals[:, 3] - proposals[:, 1]
    gw, gh = targets[:, 2] - targets[:, 0], targets[:, 3] - targets[:, 1]
    tx = ((targets[:, 0] + targets[:, 2]) - (proposals[:, 0] + proposals[:, 2])) / (2 * pw)
    ty = ((targets[:, 1] + targets[:, 3]) - (proposals[:, 1] + proposals[:, 3])) / (2 * ph)
    return torch.stack([tx, ty, torch.log(gw / pw), torch.log(gh / ph)], dim=1)


def decode_boxes(proposals: Tensor, deltas: Tensor) -> Tensor:
    """The inverse of `encode_boxes`: proposals (Tensor[R, 4]) moved by deltas (Tensor[R, 4] or
    Tensor[R, K, 4], one set per class). Returns boxes shaped like `deltas`."""
    p = proposals.reshape(proposals.shape[0], *([1] * (deltas.dim() - 2)), 4).to(deltas.dtype)
    pw, ph = p[..., 2] - p[..., 0], p[..., 3] - p[..., 1]
    cx = (p[..., 0] + p[..., 2]) / 2 + deltas[..., 0] * pw
    cy = (p[..., 1] + p[..., 3]) / 2 + deltas[..., 1] * ph
    w = pw * torch.exp(deltas[..., 2].clamp(max=MAX_LOG_SCALE))
    h = ph * torch.exp(deltas[..., 3].clamp(max=MAX_LOG_SCALE))
    return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=-1)


def match_for_regression(proposals: Tensor, gt_boxes: Tensor, gt_labels: Tensor,
                         min_iou: float = DEFAULT_MIN_IOU) -> tuple[Tensor, Tensor, Tensor]:
    """The training pairs of one image: each proposal (Tensor[P, 4]) with its best ground-truth
    box (gt_boxes Tensor[G, 4], gt_labels Tensor[G] in 1..K) when that IoU >= min_iou.

    Returns (keep Tensor[N] indices into proposals, target boxes Tensor[N, 4], labels Tensor[N]).
    Proposals without positive width and height are never kept.
    """
    if len(gt_boxes) == 0 or len(proposals) == 0:
        empty = torch.zeros(0, dtype=torch.int64)
        return empty, torch.zeros(0, 4), empty.clone()
    best_iou, best = box_iou(proposals.float(), gt_boxes.float()).max(dim=1)
    sized = (proposals[:, 2] > proposals[:, 0]) & (proposals[:, 3] > proposals[:, 1])
    keep = torch.nonzero((best_iou >= min_iou) & sized).flatten()
    return keep, gt_boxes[best[keep]].float(), gt_labels[best[keep]].long()


def mirror_deltas(deltas: Tensor, mirrored: bool = True) -> Tensor:
    """Deltas (Tensor[..., 4]) predicted on a mirrored crop move the mirrored box; negating tx
    makes them move the box itself (ty, tw, th do not change under a horizontal flip)."""
    return deltas * torch.tensor([-1.0, 1, 1, 1], dtype=deltas.dtype, device=deltas.device) if mirrored else deltas


def mean_deltas(regressors: Sequence[BoxRegressor], features: Sequence[Tensor]) -> Tensor:
    """The mean deltas of every member and view: one regressor and one Tensor[V, R, D_m] of
    features per member (view 1 mirrored: its tx negated, `mirror_deltas`) -> Tensor[R, K, 4]."""
    deltas = [mirror_deltas(reg.predict_deltas(f[v]), v == 1) for reg, f in zip(regressors, features)
              for v in range(f.shape[0])]
    return torch.stack(deltas).mean(0)


def load_member_regressors(member_dirs: list[Path]) -> list[BoxRegressor] | None:
    """The box regressor of every member folder (REGRESSOR_FILE), or None when none has one;
    InputError when only some have one (a half-fitted run must not regress silently)."""
    present = [(Path(d) / REGRESSOR_FILE).is_file() for d in member_dirs]
    if not any(present):
        return None
    if not all(present):
        missing = Path(member_dirs[present.index(False)]) / REGRESSOR_FILE
        raise InputError(missing, "missing while other members have one (refit with `detect fit-boxes`)")
    return [BoxRegressor.load(Path(d) / REGRESSOR_FILE) for d in member_dirs]


@dataclass
class BoxRegressor:
    """Class-specific linear regressors from region features to R-CNN's box targets.

    weight: Tensor[K, D + 1, 4], the last row the bias, mapping features to normalised targets;
    target_mean, target_std: Tensor[4], the normalisation of the training targets;
    num_samples: Tensor[K], training pairs per class (a class with none predicts no move);
    ridge_lambda, min_iou: how it was fitted.
    """
    weight: Tensor
    target_mean: Tensor
    target_std: Tensor
    num_samples: Tensor
    ridge_lambda: float = DEFAULT_LAMBDA
    min_iou: float = DEFAULT_MIN_IOU

    @property
    def num_classes(self) -> int:
        return self.weight.shape[0]

    @property
    def feature_dim(self) -> int:
        return self.weight.shape[1] - 1

    def predict_deltas(self, features: Tensor) -> Tensor:
        """(tx, ty, tw, th) for every class of every region: features (Tensor[R, D]) ->
        Tensor[R, K, 4], all classes in one matmul."""
        if features.dim() != 2 or features.shape[1] != self.feature_dim:
            raise ValueError(f"features must be [R, {self.feature_dim}], got {list(features.shape)}")
        w = self.weight.to(features.device)
        k, d1, _ = w.shape
        flat = w.permute(1, 0, 2).reshape(d1, k * 4)
        x = features.float()
        normalised = (x @ flat[:-1] + flat[-1]).reshape(len(x), k, 4)
        return normalised * self.target_std.to(x.device) + self.target_mean.to(x.device)

    def regress(self, features: Tensor, boxes: Tensor, image_size: tuple[int, int]) -> Tensor:
        """Regressed boxes of every region for every class, clipped to the image: features
        (Tensor[R, D]) and boxes (Tensor[R, 4]) of one image of `image_size` (height, width)
        -> Tensor[R, K, 4]."""
        return clip_boxes_to_image(decode_boxes(boxes.float(), self.predict_deltas(features)), image_size)

    def save(self, path: str | Path) -> None:
        """Write the regressor as a safetensors file (atomically)."""
        save_weights(path, {"weight": self.weight.float(), "target_mean": self.target_mean.float(),
                            "target_std": self.target_std.float(), "num_samples": self.num_samples.long(),
                            "ridge_lambda": torch.tensor(float(self.ridge_lambda), dtype=torch.float64),
                            "min_iou": torch.tensor(float(self.min_iou), dtype=torch.float64)})

    @classmethod
    def load(cls, path: str | Path) -> BoxRegressor:
        """Read a file written by `save`; a missing, corrupt or malformed one raises InputError."""
        t = load_weights(path)
        names = {"weight", "target_mean", "target_std", "num_samples", "ridge_lambda", "min_iou"}
        if set(t) != names:
            raise InputError(path, f"not a box regressor file: tensors {sorted(t)}, expected {sorted(names)}")
        w = t["weight"]
        shapes_ok = (w.dim() == 3 and w.shape[2] == 4 and t["target_mean"].shape == (4,)
                     and t["target_std"].shape == (4,) and t["num_samples"].shape == (w.shape[0],))
        if not shapes_ok:
            raise InputError(path, f"box regressor tensors of inconsistent shapes (weight {list(w.shape)})")
        return cls(weight=w, target_mean=t["target_mean"], target_std=t["target_std"],
                   num_samples=t["num_samples"], ridge_lambda=float(t["ridge_lambda"]),
                   min_iou=float(t["min_iou"]))


def fit_box_regressor(features: Tensor, proposals: Tensor, targets: Tensor, labels: Tensor,
                      num_classes: int, ridge_lambda: float = DEFAULT_LAMBDA,
                      min_iou: float = DEFAULT_MIN_IOU) -> BoxRegressor:
    """Fit one ridge regressor per class in closed form.

    features (Tensor[N, D]) of the training proposals (Tensor[N, 4]), their ground-truth boxes
    (targets Tensor[N, 4]) and classes (labels Tensor[N] in 1..K), as `match_for_regression`
    selects them (`min_iou` is only recorded). Solved in float64:
    W = (X^T X + lambda I')^-1 X^T T, X the features with a ones column, I' the identity with
    a 0 for that column, T the normalised targets of the class.
    """
    if not (len(features) == len(proposals) == len(targets) == len(labels)):
        raise ValueError("features, proposals, targets and labels differ in length")
    if len(labels) and (labels.min() < 1 or labels.max() > num_classes):
        raise ValueError(f"labels must be in 1..{num_classes}")
    t = encode_boxes(proposals.double(), targets.double())
    mean, std = _target_stats(t)
    t = (t - mean) / std
    x = torch.cat([features.double(), torch.ones(len(features), 1, dtype=torch.float64)], dim=1)
    penalty = torch.full((x.shape[1],), float(ridge_lambda), dtype=torch.float64)
    penalty[-1] = 0.0
    weight = torch.zeros(num_classes, x.shape[1], 4, dtype=torch.float64)
    counts = torch.bincount(labels.long(), minlength=num_classes + 1)[1:]
    for k in range(num_classes):
        rows = labels == k + 1
        if counts[k] == 0:
            weight[k, -1] = -mean / std  # normalised prediction -mean/std: no move at all
            continue
        xk = x[rows]
        weight[k] = torch.linalg.solve(xk.T @ xk + torch.diag(penalty), xk.T @ t[rows])
    return BoxRegressor(weight=weight.float(), target_mean=mean.float(), target_std=std.float(),
                        num_samples=counts, ridge_lambda=float(ridge_lambda), min_iou=float(min_iou))


def _target_stats(t: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and std (Tensor[4] each) of the targets t (Tensor[N, 4]); std at least 1e-6 so
    that a constant coordinate (or a single pair) does not divide by zero; (0, 1) for none."""
    if len(t) == 0:
        return torch.zeros(4, dtype=t.dtype), torch.ones(4, dtype=t.dtype)
    std = t.std(dim=0, unbiased=False) if len(t) > 1 else torch.zeros(4, dtype=t.dtype)
    return t.mean(dim=0), std.clamp(min=1e-6)
