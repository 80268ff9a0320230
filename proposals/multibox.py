"""MultiBox: a class-agnostic network that proposes boxes (Erhan et al. 2014; Szegedy et al. 2014).

An Inception trunk (`backbone` GoogLeNet features, either architecture, any width) feeds a
small head that predicts, for each of K priors, a box and a confidence logit. The priors are
k-means centroids of the training set's ground-truth boxes; their coordinates are normalised
to the image (xyxy in [0, 1]) and stored with the model.

Box encoding (the public reference's per-prior normalisation): each prior i carries the mean
mu_i (its k-means centroid, i.e. the mean of the training boxes in its cluster) and the
per-coordinate standard deviation sigma_i of those boxes. The network outputs whitened
coordinates t_i; the box is  b_i = mu_i + sigma_i * t_i  and a ground truth g is encoded for
prior i as  (g - mu_i) / sigma_i.  The loss's location term is measured in that whitened
space, so every prior's regression target has roughly unit scale.

Shapes: B images, K priors (predictions per image), N ground-truth boxes of one image.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import clip_boxes_to_image, nms

from backbone.errors import InputError
from backbone.io import atomic_write_json, load_image, load_weights, read_json, save_weights
from backbone.models import IMAGENET_MEAN, IMAGENET_STD, build_model

WEIGHTS_FILE = "model.safetensors"
META_FILE = "multibox.json"


# ----------------------------------------------------------------------------- priors

def distinct_boxes(boxes: Tensor) -> int:
    """How many different boxes (Tensor[M, 4], normalised; equal to 6 decimals) there are: the
    most priors k-means can make of them."""
    return len(np.unique(boxes.detach().cpu().double().numpy().reshape(-1, 4).round(6), axis=0))


def kmeans_priors(boxes: Tensor, k: int, seed: int = 0, min_std: float = 0.01,
                  max_boxes: int = 20000, iters: int = 20) -> tuple[Tensor, Tensor]:
    """Cluster normalised ground-truth boxes into `k` priors.

    Args:
        boxes (Tensor[M, 4]): xyxy boxes normalised to their image ([0, 1]).
        k: number of priors K; needs at least K distinct boxes.
        seed: k-means++ seeding is random; the same seed gives the same priors.
        min_std: floor on each prior's standard deviation (a cluster of identical boxes
            would otherwise make its whitened targets infinite).
        max_boxes: k-means runs on a random subset of this many boxes (k-means++ seeding
            costs M * K^2); the standard deviations use every box.
    Returns:
        priors (Tensor[K, 4]): the centroids (mu), float32.
        std (Tensor[K, 4]): per-coordinate std of each cluster's boxes (sigma), >= min_std.
    """
    from scipy.cluster.vq import kmeans2, vq  # training only: detection need not import it (0.7 s of CPU)

    data = boxes.detach().cpu().double().numpy().reshape(-1, 4)
    distinct = distinct_boxes(boxes)
    if distinct < k:
        raise InputError(None, f"{distinct} distinct ground-truth boxes cannot make {k} priors; "
                               f"lower model.num_priors or add training data")
    rng = np.random.default_rng(seed)
    sample = data if len(data) <= max_boxes else data[rng.choice(len(data), max_boxes, replace=False)]
    centroids, _ = kmeans2(sample, k, iter=iters, minit="++", missing="warn", rng=rng)
    assignment, _ = vq(data, centroids)
    std = np.full((k, 4), np.nan)
    for i in range(k):
        members = data[assignment == i]
        if len(members) >= 2:
            std[i] = members.std(axis=0)
    # Clusters with a single box have no spread of their own: give them the typical one.
    typical = np.nanmedian(std, axis=0) if np.isfinite(std).any() else np.full(4, min_std)
    std = np.where(np.isfinite(std), std, typical)
    std = np.maximum(std, min_std)
    return torch.from_numpy(centroids).float(), torch.from_numpy(std).float()


def encode(gt: Tensor, priors: Tensor, std: Tensor) -> Tensor:
    """Whitened targets of every ground truth for every prior.

    Args: gt (Tensor[..., N, 4]) normalised xyxy; priors, std (Tensor[K, 4]).
    Returns: Tensor[..., K, N, 4]: (g_j - mu_i) / sigma_i.
    """
    return (gt.unsqueeze(-3) - priors[:, None, :]) / std[:, None, :]


def decode(offsets: Tensor, priors: Tensor, std: Tensor) -> Tensor:
    """Boxes from whitened outputs: Tensor[..., K, 4] -> normalised xyxy (x1 <= x2, y1 <= y2)."""
    b = priors + std * offsets
    x1, x2 = torch.minimum(b[..., 0], b[..., 2]), torch.maximum(b[..., 0], b[..., 2])
    y1, y2 = torch.minimum(b[..., 1], b[..., 3]), torch.maximum(b[..., 1], b[..., 3])
    return torch.stack([x1, y1, x2, y2], dim=-1)


# ----------------------------------------------------------------------------- network

class MultiBoxNet(nn.Module):
    """Trunk features -> (K x 4 whitened boxes, K confidence logits), one pair per prior.

    The head reads the trunk's feature map pooled to P x P (the image's layout) into an image
    code h, and each prior's own code e_i (a linear map of its coordinates); one small
    network shared by all priors turns relu(h + e_i) into prior i's offsets and logit. Every
    matched box thus trains the same weights, where a separate output row per prior would see
    only the few boxes that land on it.

    `trunk` is a backbone classifier (its `forward_features` is used; its own classifier
    layer is removed so that DistributedDataParallel sees no unused parameters).
    """

    def __init__(self, trunk: nn.Module, priors: Tensor, prior_std: Tensor, head_pool: int = 3,
                 head_hidden: int = 512, dropout: float = 0.0, positives_per_image: float = 2.0):
        super().__init__()
        _strip_classifier(trunk)
        self.trunk = trunk
        self.register_buffer("priors", priors.float().clone())
        self.register_buffer("prior_std", prior_std.float().clone())
        k = priors.shape[0]
        self.image_code = nn.Sequential(
            nn.AdaptiveAvgPool2d(head_pool), nn.Flatten(),
            nn.Linear(trunk.num_features * head_pool * head_pool, head_hidden),
            nn.ReLU(inplace=True), nn.Dropout(dropout), nn.Linear(head_hidden, head_hidden))
        self.prior_code = nn.Linear(4, head_hidden)
        self.out = nn.Linear(head_hidden, 5)  # 4 whitened offsets and a logit
        # Start exactly at the priors, and at the confidence a prior has on average (a few
        # matches per image out of K): the first steps then refine instead of undoing noise.
        nn.init.zeros_(self.out.weight[:4])
        nn.init.zeros_(self.out.bias)
        nn.init.normal_(self.out.weight[4:], std=0.01)
        p = min(max(positives_per_image / k, 1e-4), 0.5)
        nn.init.constant_(self.out.bias[4:], float(np.log(p / (1 - p))))

    @property
    def num_priors(self) -> int:
        return self.priors.shape[0]

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """x (Tensor[B, 3, S, S]) normalised images -> offsets Tensor[B, K, 4], logits Tensor[B, K]."""
        h = self.image_code(self.trunk.forward_features(x))  # [B, hidden]
        e = self.prior_code(self.priors * 2 - 1)  # [K, hidden]; coordinates centred on 0
        y = self.out(F.relu(h[:, None, :] + e[None, :, :]))  # [B, K, 5]
        return y[..., :4], y[..., 4]

    def boxes(self, offsets: Tensor) -> Tensor:
        """Tensor[B, K, 4] whitened offsets -> Tensor[B, K, 4] normalised xyxy boxes."""
        return decode(offsets, self.priors, self.prior_std)


def he_init_(trunk: nn.Module) -> None:
    """He-normal weights and zero biases for a trunk trained from scratch.

    Caffe's xavier filler with 0.2 biases (the classifier's initialisation) leaves the 5b
    features of a 22-layer ReLU network without normalisation almost independent of the
    image (their spread across images is ~1% of their mean at width 0.125); the paper's
    MultiBox started from a trained classifier instead. He initialisation keeps the signal
    (~15%), so box regression can start learning at once.
    """
    for m in trunk.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def _strip_classifier(trunk: nn.Module) -> None:
    owner = getattr(trunk, "net", trunk)  # TorchvisionGoogLeNet keeps torchvision's model in .net
    owner.fc = nn.Identity()


# ----------------------------------------------------------------------------- loss

class MultiBoxLoss(NamedTuple):
    total: Tensor  # alpha * match + conf, summed over an image's predictions, mean over images
    match: Tensor  # F_match (without alpha), mean over images
    conf: Tensor  # F_conf, mean over images


def match(offsets: Tensor, logits: Tensor, targets: Sequence[Tensor], priors: Tensor,
          std: Tensor, alpha: float) -> Tensor:
    """Per-image Hungarian assignment x of predictions to ground truth (scipy).

    F = alpha * F_match + F_conf with F_match = 1/2 sum_ij x_ij ||l_i - g_j||^2 and
    F_conf = -sum_ij x_ij log c_i - sum_i (1 - sum_j x_ij) log(1 - c_i). Regrouping,
        F = sum_ij x_ij [alpha/2 ||l_i - g_j||^2 - log c_i + log(1 - c_i)] - sum_i log(1 - c_i),
    and the last sum does not depend on x. So the x minimising F over one-to-one assignments
    is the linear assignment with cost C_ij = alpha/2 ||l_i - g_j||^2 - log c_i + log(1 - c_i)
    = alpha/2 ||l_i - g_j||^2 - z_i  (z_i the logit, since log(c/(1-c)) = z).

    Args:
        offsets (Tensor[B, K, 4]), logits (Tensor[B, K]): the network's outputs.
        targets: B tensors [N_b, 4] of normalised xyxy ground truth (N_b may be 0).
    Returns:
        Tensor[B, K] long: the ground truth index matched to each prediction, -1 for none.
    """
    from scipy.optimize import linear_sum_assignment  # training only, as kmeans2 above

    b, k = logits.shape
    assigned = torch.full((b, k), -1, dtype=torch.long)
    with torch.no_grad():
        costs = [alpha / 2 * (offsets[i, :, None, :] - encode(g.to(offsets), priors, std)).pow(2).sum(-1)
                 - logits[i, :, None] for i, g in enumerate(targets) if len(g)]
        costs = [c.double().cpu().numpy() for c in costs]  # one host transfer per image, no grad
    nonempty = [i for i, g in enumerate(targets) if len(g)]
    for i, cost in zip(nonempty, costs):
        rows, cols = linear_sum_assignment(cost)
        assigned[i, torch.from_numpy(rows)] = torch.from_numpy(cols)
    return assigned.to(logits.device)


def multibox_loss(offsets: Tensor, logits: Tensor, targets: Sequence[Tensor], priors: Tensor,
                  std: Tensor, alpha: float) -> MultiBoxLoss:
    """F = alpha * F_match + F_conf (REFERENCE section 5), x from `match`.

    log c and log(1 - c) are logsigmoid(z) and logsigmoid(-z): finite for any logit.
    Shapes as in `match`. Returns the mean over the B images of each image's sums.
    """
    assigned = match(offsets, logits, targets, priors, std, alpha)
    b = logits.shape[0]
    match_sum = logits.new_zeros(())
    for i, g in enumerate(targets):
        rows = (assigned[i] >= 0).nonzero().squeeze(1)
        if len(rows):
            g_i = g.to(offsets)[assigned[i, rows]]  # [n, 4]
            target = (g_i - priors[rows]) / std[rows]
            match_sum = match_sum + 0.5 * (offsets[i, rows] - target).pow(2).sum()
    x = (assigned >= 0).to(logits.dtype)
    conf_sum = -(x * F.logsigmoid(logits) + (1 - x) * F.logsigmoid(-logits)).sum()
    return MultiBoxLoss((alpha * match_sum + conf_sum) / b, match_sum / b, conf_sum / b)


# ----------------------------------------------------------------------------- images

def resize_square(image: np.ndarray, size: int) -> np.ndarray:
    """Warp an RGB uint8 image [H, W, 3] to [size, size, 3] (area when shrinking)."""
    h, w = image.shape[:2]
    interp = cv2.INTER_AREA if size < min(h, w) else cv2.INTER_LINEAR
    return cv2.resize(image, (size, size), interpolation=interp)


def normalize(batch: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """uint8 Tensor[B, 3, S, S] -> float (x / 255 - mean) / std, on the batch's device."""
    m = torch.tensor(mean, device=batch.device).view(1, 3, 1, 1)
    s = torch.tensor(std, device=batch.device).view(1, 3, 1, 1)
    return (batch.float() / 255.0 - m) / s


# ----------------------------------------------------------------------------- saved model

@dataclass
class MultiBoxMeta:
    arch: str  # trunk architecture: "googlenet" or "torchvision_googlenet"
    width: float  # trunk filter-count multiplier
    input_size: int  # images are warped to input_size x input_size
    num_priors: int  # K
    head_pool: int  # trunk features are pooled to head_pool x head_pool
    head_hidden: int  # width of the head's hidden layer
    priors: list  # [K][4] prior means (k-means centroids), normalised xyxy
    prior_std: list  # [K][4] per-prior standard deviations of the coordinates
    mean: tuple = IMAGENET_MEAN  # image normalisation, RGB on the 0..1 scale
    std: tuple = IMAGENET_STD
    extra: dict = dataclasses.field(default_factory=dict)  # e.g. the classifier it started from


def build_multibox_net(meta: MultiBoxMeta, trunk: nn.Module | None = None,
                       dropout: float = 0.0) -> MultiBoxNet:
    """The network `meta` describes; a fresh trunk unless one is given (e.g. a classifier's)."""
    if trunk is None:
        trunk = build_model(meta.arch, num_classes=1, width=meta.width, aux_logits=False)
    return MultiBoxNet(trunk, torch.tensor(meta.priors), torch.tensor(meta.prior_std),
                       meta.head_pool, meta.head_hidden, dropout)


def save_multibox(run_dir: str | Path, net: nn.Module, meta: MultiBoxMeta) -> None:
    """Write model.safetensors and multibox.json into `run_dir` (atomically)."""
    net = getattr(net, "module", net)  # unwrap DistributedDataParallel
    meta = dataclasses.replace(meta, priors=net.priors.tolist(), prior_std=net.prior_std.tolist())
    save_weights(Path(run_dir) / WEIGHTS_FILE, net.state_dict(), {"task": "multibox"})
    atomic_write_json(Path(run_dir) / META_FILE, dataclasses.asdict(meta))


def read_multibox_meta(run_dir: str | Path) -> MultiBoxMeta:
    path = Path(run_dir) / META_FILE
    data = read_json(path)
    try:
        data["mean"], data["std"] = tuple(data["mean"]), tuple(data["std"])
        meta = MultiBoxMeta(**data)
    except (TypeError, KeyError) as e:
        raise InputError(path, f"not a MultiBox description: {e}") from None
    if np.shape(meta.priors) != (meta.num_priors, 4) or np.shape(meta.prior_std) != (meta.num_priors, 4):
        raise InputError(path, f"priors must be {meta.num_priors} x 4")
    return meta


class MultiBox:
    """A trained MultiBox network ready to propose boxes for images of any size."""

    def __init__(self, net: MultiBoxNet, meta: MultiBoxMeta, device: str | torch.device = "cpu"):
        self.device = torch.device(device)
        self.net = net.to(self.device).eval()
        self.meta = meta

    @classmethod
    def load(cls, run_dir: str | Path, device: str | torch.device = "cpu") -> "MultiBox":
        """Load a run written by `train_multibox` (or `save_multibox`)."""
        run_dir = Path(run_dir)
        if not run_dir.is_dir():
            raise InputError(run_dir, "MultiBox run folder not found")
        meta = read_multibox_meta(run_dir)
        net = build_multibox_net(meta)
        try:
            net.load_state_dict(load_weights(run_dir / WEIGHTS_FILE))
        except RuntimeError as e:
            raise InputError(run_dir / WEIGHTS_FILE, f"weights do not match {META_FILE}: "
                             f"{str(e).strip().splitlines()[-1].strip()}") from None
        return cls(net, meta, device)

    @torch.no_grad()
    def predict_batch(self, images: Sequence, top_k: int = 200, nms_iou: float | None = None,
                      batch_size: int = 32) -> list[tuple[Tensor, Tensor]]:
        """`predict` for many images, `batch_size` at a time through the network."""
        out = []
        for start in range(0, len(images), batch_size):
            arrays = [load_image(im) for im in images[start:start + batch_size]]
            batch = torch.stack([torch.from_numpy(resize_square(a, self.meta.input_size)) for a in arrays])
            x = normalize(batch.permute(0, 3, 1, 2).to(self.device), self.meta.mean, self.meta.std)
            offsets, logits = self.net(x)
            boxes, scores = self.net.boxes(offsets), torch.sigmoid(logits)
            for a, b, s in zip(arrays, boxes, scores):
                out.append(_to_image(b, s, a.shape[0], a.shape[1], top_k, nms_iou))
        return out

    def predict(self, image, top_k: int = 200, nms_iou: float | None = None) -> tuple[Tensor, Tensor]:
        """Propose boxes for one image.

        Args:
            image: a path, an RGB uint8 array [H, W, 3] or a PIL image.
            top_k: keep the k most confident boxes (at most K).
            nms_iou: if given, drop boxes overlapping a more confident one above this IoU
                before taking the top k (off by default, as in the paper's top-200).
        Returns:
            boxes (Tensor[k, 4]) xyxy in the image's pixels, clipped to it, float32 on the CPU;
            scores (Tensor[k]) sigmoid confidences, in decreasing order.
        """
        return self.predict_batch([image], top_k, nms_iou)[0]


def _to_image(boxes: Tensor, scores: Tensor, height: int, width: int, top_k: int,
              nms_iou: float | None) -> tuple[Tensor, Tensor]:
    """Normalised Tensor[K, 4] + Tensor[K] -> the top k in pixels, sorted by score."""
    scale = torch.tensor([width, height, width, height], dtype=boxes.dtype, device=boxes.device)
    boxes = clip_boxes_to_image(boxes * scale, (height, width))
    if nms_iou is not None:
        keep = nms(boxes, scores, nms_iou)  # sorted by decreasing score
    else:
        keep = torch.argsort(scores, descending=True, stable=True)
    keep = keep[:top_k]
    return boxes[keep].float().cpu(), scores[keep].float().cpu()
