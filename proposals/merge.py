"""The GoogLeNet detector's proposals: selective search ∪ the top MultiBox boxes.

Near-duplicates are removed greedily with selective-search boxes first (in their rank order),
then MultiBox boxes (by score): a MultiBox box never removes a selective-search box, so the
merged set always contains the selective-search set of the same config, and its recall can
never be lower.

N proposals; boxes Tensor[N, 4] float32 xyxy pixels; sources Tensor[N] uint8.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Literal, Protocol

import numpy as np
import torch
from torchvision.ops import clip_boxes_to_image, nms

from backbone.errors import InputError
from backbone.io import load_image
from proposals.selective_search import selective_search

SOURCE_SELECTIVE_SEARCH = 0
SOURCE_MULTIBOX = 1
SOURCE_NAMES = {SOURCE_SELECTIVE_SEARCH: "selective_search", SOURCE_MULTIBOX: "multibox"}


@dataclass
class SelectiveSearchConfig:
    enabled: bool = True  # include selective-search boxes
    backend: Literal["opencv", "selectivesearch"] = "opencv"  # segmentation library
    mode: Literal["single", "fast", "quality"] = "fast"  # OpenCV strategy set (R-CNN used fast)
    superpixel_scale: float = 2.0  # multiplies k; 1.0 = R-CNN, 2.0 = GoogLeNet (halves the boxes)
    resize_width: int = 500  # segment a copy of this width, as R-CNN did (0 = original size)
    min_size: int = 20  # drop boxes with a side shorter than this many pixels
    max_boxes: int = 0  # keep only the best-ranked boxes (0 = all)
    seed: int = 0  # seed of the random ranking factor (same seed, same boxes)


@dataclass
class MultiBoxSourceConfig:
    enabled: bool = False  # include MultiBox boxes (needs `model`)
    model: str = ""  # run folder of a trained MultiBox network (`detect train-multibox --out`)
    top_k: int = 200  # MultiBox boxes kept per image (the paper: 200)
    device: str = "cpu"  # where the MultiBox network runs


@dataclass
class ProposalConfig:
    selective_search: SelectiveSearchConfig = field(default_factory=SelectiveSearchConfig)  # source 0
    multibox: MultiBoxSourceConfig = field(default_factory=MultiBoxSourceConfig)  # source 1
    dedup_iou: float = 0.95  # a box overlapping an earlier kept box above this IoU is dropped
    min_size: int = 20  # drop merged boxes with a side shorter than this many pixels


class BoxPredictor(Protocol):
    """What `propose` needs from a MultiBox network (proposals.multibox.MultiBox)."""

    def predict(self, image: np.ndarray, top_k: int = 200) -> tuple[torch.Tensor, torch.Tensor]: ...


def _selective_search_boxes(image: np.ndarray, cfg: SelectiveSearchConfig) -> torch.Tensor:
    boxes = selective_search(image, backend=cfg.backend, mode=cfg.mode,
                             superpixel_scale=cfg.superpixel_scale, resize_width=cfg.resize_width,
                             min_size=cfg.min_size, seed=cfg.seed)
    return boxes[: cfg.max_boxes] if cfg.max_boxes > 0 else boxes


def _multibox_boxes(image: np.ndarray, multibox: BoxPredictor, top_k: int) -> torch.Tensor:
    """The `top_k` MultiBox boxes [k, 4], best first, clipped to the image."""
    boxes, scores = multibox.predict(image, top_k=top_k)
    boxes = boxes.detach().float().cpu().reshape(-1, 4)
    order = scores.detach().float().cpu().reshape(-1).argsort(descending=True)[:top_k]
    return clip_boxes_to_image(boxes[order], image.shape[:2])


def merge_boxes(groups: list[torch.Tensor], dedup_iou: float,
                min_size: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Concatenate ranked box groups, drop small boxes and near-duplicates, earlier first.

    Args:
        groups: one Tensor[N_s, 4] per source s (its index is its source id), best first.
        dedup_iou: a box whose IoU with an earlier kept box exceeds this is dropped.
        min_size: boxes with a side shorter than this are dropped.

    Returns:
        boxes (Tensor[N, 4]) and sources (Tensor[N] uint8), in priority order.
    """
    boxes = torch.cat([g.reshape(-1, 4).float() for g in groups])
    sources = torch.cat([torch.full((len(g),), s, dtype=torch.uint8) for s, g in enumerate(groups)])
    keep = torch.minimum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]) >= min_size
    boxes, sources = boxes[keep], sources[keep]
    if len(boxes) == 0:
        return boxes, sources
    # nms keeps the highest score first; a decreasing sequence makes it keep the earliest.
    priority = -torch.arange(len(boxes), dtype=torch.float32)
    kept = nms(boxes, priority, dedup_iou).sort().values
    return boxes[kept], sources[kept]


def propose_with_sources(image: np.ndarray, config: ProposalConfig,
                         multibox: BoxPredictor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Proposals of one RGB image [H, W, 3] and the source of each (0 selective search, 1 MultiBox).

    Returns:
        boxes (Tensor[N, 4]) float32 xyxy, sources (Tensor[N]) uint8.
    """
    image = load_image(image)
    empty = torch.zeros((0, 4))
    ss = _selective_search_boxes(image, config.selective_search) if config.selective_search.enabled else empty
    mb = empty
    if config.multibox.enabled:
        if multibox is None:
            raise ValueError("config.multibox.enabled is set but no MultiBox network was given "
                             "(use build_proposer(config), which loads it)")
        mb = _multibox_boxes(image, multibox, config.multibox.top_k)
    return merge_boxes([ss, mb], config.dedup_iou, config.min_size)


def propose(image: np.ndarray, config: ProposalConfig,
            multibox: BoxPredictor | None = None) -> torch.Tensor:
    """Proposals of one RGB image [H, W, 3]: boxes (Tensor[N, 4]) float32 xyxy, best first."""
    return propose_with_sources(image, config, multibox)[0]


def build_proposer(config: ProposalConfig) -> Callable[[np.ndarray], tuple[torch.Tensor, torch.Tensor]]:
    """Turn a config into `proposer(image) -> (boxes [N, 4], sources [N])`.

    The MultiBox network, if enabled, is loaded once here (not once per image).
    """
    multibox = None
    if config.multibox.enabled:
        if not config.multibox.model:
            raise InputError(None, "multibox.enabled is true but multibox.model is empty "
                                   "(give the run folder of `detect train-multibox`)")
        from proposals.multibox import MultiBox  # lazy: selective search alone needs no network

        multibox = MultiBox.load(config.multibox.model, device=config.multibox.device)

    def proposer(image: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        return propose_with_sources(image, config, multibox)

    return proposer
