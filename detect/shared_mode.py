"""The shared-computation mode (SPP-net, Fast R-CNN): one trunk pass an image, features pooled per region.

Shapes: R regions, K foreground classes (column 0 is background), C channels of the map after
the split, h x w that map, S the member's input size (its crop side), n x n the split's grid at
S (inception 4e: 14 at 224, 3 at 48).

R-CNN runs the whole network on every warped region. Here each member runs GoogLeNet from the
stem through the split block (`shared.split`; inception 4e, stride 16, by default: Fast R-CNN's
choice) once on the whole image, each region's features are pooled from that map with
`torchvision.ops.roi_align` to the n x n grid the member's own map has there at its input size,
and the rest of the network -- after 4e: pool4 (3x3/2), 5a, 5b, the average pool and the head --
runs on all regions of the image, `batch_size` at a time, with the very weights the classifier
learned. The members' softmax outputs are averaged as in the R-CNN mode. An earlier split costs
more per region and keeps more of what a classifier learnt on small crops: at 48 px every cell
of 4e's 3 x 3 map sees the crop's zero border (docs/detector.md, "Choosing the split").

Box regression. The head's pass also gives each region's pooled vector (5b's average pool, the
classifier's input: `pool_features` in the R-CNN mode), so one pass yields every member's softmax,
features and, with box regressors fitted on this mode's features (`detect fit-boxes`), its deltas;
`ensemble_outputs` averages them over members and views exactly as `Detector._score` does.

Image scale. Fast R-CNN scales the image once so that its shorter side is 600 px (the longer
side at most 1,000): VOC's ~500 x 375 images grow 1.6x so that objects come near the 224 px its
VGG16 was trained on; SPP-net used one scale of 688 px (or five, 480-1200). `short_side` is that
setting here (0 keeps the image as it is). The demo's members (width 0.25, 48 px crops of
garments of 24-160 px on 320-500 px scenes) score the scene as it is: configs/demo_detector_shared.yaml
says why.

Where each region samples the map. Inception 4e's cell j is centred on pixel 16 j + 14.5 of its
input (continuous coordinates; the stem's conv 7x7/2 pad 3 and three 3x3/2 max pools without
padding shift it; the stem's own map: 8 j + 6.5, `split_geometry`). `region_rois` places each
region's n x n roi_align samples exactly where the member's own cells would sit over the R-CNN
warp of that region (context padding included):
at the member's input scale a region then gets the member's own features, so a box covering a
whole S x S image (S a multiple of 16) reproduces the classifier's forward pass within float
rounding (tests/detect/test_shared_mode.py). roi_align uses aligned=True; `sampling_ratio` 0
(adaptive, the default) averages ceil(region / S) bilinear samples per cell and axis, an area
resize of the features for regions larger than the member's input (1 would keep one sample per
bin and skip most of a large region's cells); both are exact at the member's scale, where one
sample falls on each cell (2 is not: its samples sit between the cells).

Mirroring (inference.mirror): each member also runs the trunk on the mirrored image and scores
the mirrored boxes there -- the same function as the R-CNN mode's mirrored crop, since a
region's mirrored warp is the warp of the mirrored box in the mirrored image. That view's
deltas move the mirrored box: their tx is negated (`mirror_deltas`).
"""
from __future__ import annotations

import contextlib
import math
import time
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import roi_align

from backbone.errors import InputError
from backbone.googlenet import GoogLeNet
from backbone.models import ModelMeta
from detect.box_regression import BoxRegressor, mean_deltas
from detect.config import MODES, DetectorConfig
from detect.regions import dilate_boxes, scaled_context_pad, to_tensor

LAYERS = ("inception3a", "inception3b", "pool3", "inception4a", "inception4b", "inception4c", "inception4d",
          "inception4e", "pool4", "inception5a", "inception5b")  # after the stem, in forward order
SPLITS = ("stem", *LAYERS[:-1])  # where the trunk may stop: 5b's output is pooled by the head itself
DEFAULT_SPLIT = "inception4e"  # SPP-net's and Fast R-CNN's choice: the last map before the head's pool
STEM_STRIDE, STEM_CENTRE = 8, 6.5  # the stem's output cell j is centred on input pixel 8 j + 6.5


def check_member(model: nn.Module) -> GoogLeNet:
    """The member as backbone's GoogLeNet; ValueError for another architecture."""
    if not isinstance(model, GoogLeNet):
        raise ValueError(f"the shared mode runs the paper's GoogLeNet (backbone.googlenet), not {type(model).__name__}")
    return model


def check_split(split: str) -> str:
    """`split` if it names a block the trunk may stop after (SPLITS); ValueError otherwise."""
    if split not in SPLITS:
        raise ValueError(f"shared.split must be one of {', '.join(SPLITS)}, got '{split}'")
    return split


def trunk_layers(split: str = DEFAULT_SPLIT) -> tuple[str, ...]:
    """The blocks after the stem that run once per image: through `split` ("stem": none)."""
    return LAYERS[:LAYERS.index(check_split(split)) + 1] if split != "stem" else ()


def head_layers(split: str = DEFAULT_SPLIT) -> tuple[str, ...]:
    """The blocks that run once per region, on the pooled grid: after `split`, through 5b."""
    return LAYERS[len(trunk_layers(split)):]


def split_geometry(split: str = DEFAULT_SPLIT) -> tuple[int, float]:
    """(stride, centre of cell 0) of the map after `split`, in input pixels: each 3x3/2 pool
    without padding centres its cell k on the previous map's cell 2k + 1 (inception 4e: 16, 14.5)."""
    stride, centre = STEM_STRIDE, STEM_CENTRE
    for name in trunk_layers(split):
        if name.startswith("pool"):
            stride, centre = 2 * stride, centre + stride
    return stride, centre


def grid_size(input_size: int, split: str = DEFAULT_SPLIT) -> int:
    """Side n of the map after `split` for an S x S input (ceil-mode pools): inception 4e at
    224 -> 14, at 48 -> 3; the stem at 48 -> 6."""
    side = (input_size - 1) // 2 + 1  # conv 7x7/2, pad 3
    pools = 2 + sum(name.startswith("pool") for name in trunk_layers(split))
    for _ in range(pools):  # 3x3/2, rounding up
        side = math.ceil((side - 3) / 2) + 1
    return side


def image_scale(height: int, width: int, short_side: int, max_side: int = 0) -> float:
    """Fast R-CNN's scale: the shorter side to `short_side`, the longer at most `max_side`
    (0: no cap); short_side 0 = 1.0 (the image as it is)."""
    if short_side <= 0:
        return 1.0
    scale = short_side / min(height, width)
    if max_side > 0 and scale * max(height, width) > max_side:
        scale = max_side / max(height, width)
    return scale


def scaled_size(height: int, width: int, scale: float) -> tuple[int, int]:
    """The trunk's input size for an H x W image at `scale`, rounded to whole pixels."""
    return max(1, round(height * scale)), max(1, round(width * scale))


def trunk_features(model: nn.Module, images: Tensor, scale: float = 1.0,
                   split: str = DEFAULT_SPLIT) -> tuple[Tensor, tuple[float, float]]:
    """The map after `split` (inception 4e by default) of normalised images scaled by `scale`.

    images (Tensor[B, 3, H, W]) -> (Tensor[B, C, h, w], (sy, sx)): the map and the scale per
    axis actually used (the resized size is rounded to whole pixels). scale 1 is no resize.
    """
    net = check_member(model)
    height, width = images.shape[-2:]
    size = scaled_size(height, width, scale)
    if size != (height, width):
        images = F.interpolate(images, size=size, mode="bilinear", align_corners=False,
                               antialias=scale < 1.0)
    x = net.stem(images)
    for name in trunk_layers(split):
        x = getattr(net, name)(x)
    return x, (size[0] / height, size[1] / width)


def region_rois(boxes: Tensor, scales: tuple[float, float], input_size: int, context_pad: int,
                split: str = DEFAULT_SPLIT) -> Tensor:
    """roi_align boxes (scaled-image pixels) whose n x n bin centres fall where the cells of the
    member's own map after `split` sit over the R-CNN warp of each region.

    boxes (Tensor[R, 4]) xyxy in original image pixels; scales (sy, sx) of the trunk's image;
    context_pad: context pixels at a 224 crop (as detect.regions). Returns Tensor[R, 4].
    The warp maps crop pixel p to x1 + p * w / S; the member's cell i is at crop pixel t i + c
    (`split_geometry`: t = 16, c = 14.5 for 4e); roi_align (aligned=True, scale 1/t) samples
    bin i at a / t - 0.5 + (i + 0.5) * b / (t n) for a roi [a, a + b]; equal for every i when
    b = t n s w / S and a = s x1 - (c - t / 2) (1 - s w / S).
    """
    regions = dilate_boxes(boxes.float(), input_size, scaled_context_pad(context_pad, input_size))
    n, (stride, centre) = grid_size(input_size, split), split_geometry(split)
    s = torch.tensor([scales[1], scales[0]]).to(regions.device, non_blocking=True)  # x, y; no wait for a GPU
    start, extent = regions[:, :2] * s, (regions[:, 2:] - regions[:, :2]) * s
    a = start - (centre - stride / 2) * (1 - extent / input_size)
    return torch.cat([a, a + extent * (stride * n / input_size)], dim=1)


def pool_regions(features: Tensor, rois: Tensor, grid: int, sampling_ratio: int = 0, stride: int = 16) -> Tensor:
    """Each roi's features on a grid x grid: Tensor[C, h, w] map of `stride` input pixels a
    cell, rois (Tensor[R, 4]) in scaled-image pixels -> Tensor[R, C, grid, grid] (zero where a
    sample is over a cell outside the map, as roi_align)."""
    batch = [rois.to(device=features.device, dtype=features.dtype)]
    return roi_align(features.unsqueeze(0), batch, output_size=(grid, grid), spatial_scale=1.0 / stride,
                     sampling_ratio=sampling_ratio, aligned=True)


def region_head(model: nn.Module, pooled: Tensor, split: str = DEFAULT_SPLIT) -> tuple[Tensor, Tensor]:
    """The blocks after `split` (pool4, 5a, 5b after 4e), the average pool and the classifier:
    Tensor[R, C, n, n] -> (logits Tensor[R, K+1], the pooled vector Tensor[R, D] float32 the
    classifier reads -- what `pool_features` gives in the R-CNN mode, and what the box
    regressors read)."""
    net = check_member(model)
    x = pooled
    for name in head_layers(split):
        x = getattr(net, name)(x)
    features = net.pool_features(x.float())
    return net.fc(net.dropout(features)), features


def member_views(model: nn.Module, image: Tensor, boxes: Tensor, input_size: int, *,
                 scale: float = 1.0, context_pad: int = 16, batch_size: int = 256,
                 sampling_ratio: int = 0, split: str = DEFAULT_SPLIT, mirror: bool = False,
                 autocast: Callable[[], object] | None = None, channels_last: bool = False) -> tuple[Tensor, Tensor]:
    """One member's softmax and pooled features for every region on each view (1, or 2 with
    `mirror`: view 1 is the mirrored image with the mirrored boxes).

    image (Tensor[3, H, W]) normalised; boxes (Tensor[R, 4]) xyxy original pixels.
    autocast: a context factory for the trunk and 5a/5b (the head runs in float32).
    Returns (Tensor[V, R, K+1], Tensor[V, R, D]) float32 on the image's device.
    """
    views = [(image, boxes)]
    if mirror:  # the mirrored image, its boxes mirrored: x -> W - x
        width = image.shape[-1]
        views.append((image.flip(-1), torch.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0],
                                                   boxes[:, 3]], 1)))
    outs = [_one_view(model, pixels, regions, input_size, scale, context_pad, batch_size, sampling_ratio, split,
                      autocast, channels_last) for pixels, regions in views]
    return torch.stack([p for p, _ in outs]), torch.stack([f for _, f in outs])


def _one_view(model: nn.Module, image: Tensor, boxes: Tensor, input_size: int, scale: float,
              context_pad: int, batch_size: int, sampling_ratio: int, split: str,
              autocast: Callable[[], object] | None, channels_last: bool) -> tuple[Tensor, Tensor]:
    """Softmax [R, K+1] and pooled features [R, D] of one member on one view (see `member_views`)."""
    ctx = autocast or contextlib.nullcontext
    x = image.unsqueeze(0)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with ctx():
        features, scales = trunk_features(model, x, scale, split)
    rois = region_rois(boxes.to(image.device), scales, input_size, context_pad, split)
    grid, stride = grid_size(input_size, split), split_geometry(split)[0]
    probs, vectors = [], []
    for start in range(0, len(rois), batch_size):
        pooled = pool_regions(features[0], rois[start:start + batch_size], grid, sampling_ratio, stride)
        if channels_last:
            pooled = pooled.contiguous(memory_format=torch.channels_last)
        with ctx():
            logits, vector = region_head(model, pooled, split)
        probs.append(logits.float().softmax(dim=1))
        vectors.append(vector.float())
    if not probs:
        net = check_member(model)
        return image.new_zeros((0, net.num_classes)), image.new_zeros((0, net.num_features))
    return torch.cat(probs), torch.cat(vectors)


@torch.inference_mode()
def ensemble_outputs(members: Sequence[nn.Module], input_sizes: Sequence[int], image: Tensor | Sequence[Tensor],
                     boxes: Tensor, regressors: Sequence[BoxRegressor] | None = None, keep_features: bool = False,
                     **options) -> tuple[Tensor, Tensor | None, list[Tensor] | None]:
    """One pass of every member and view over the regions, all on the CPU: (the mean softmax
    Tensor[R, K+1], rows sum to 1; with `regressors` (one per member) the mean deltas
    Tensor[R, K, 4] of every member and view (`mean_deltas`: a mirrored view's tx negated);
    with `keep_features` each member's pooled features Tensor[V, R, D], None for no region),
    as `Detector._score` returns them in the R-CNN mode.

    members: GoogLeNets with K+1 outputs (eval mode); input_sizes: each member's S.
    image: one normalised Tensor[3, H, W], or one per member (members normalise differently).
    boxes (Tensor[R, 4]); options: `member_views` keywords (scale, mirror, ...).
    """
    images = [image] * len(members) if torch.is_tensor(image) else list(image)
    probs, deltas, kept = None, None, []
    for m, (model, size, pixels) in enumerate(zip(members, input_sizes, images)):
        p, features = member_views(model, pixels, boxes, size, **options)
        probs = p.sum(0) if probs is None else probs + p.sum(0)
        if regressors:  # every member has V views: the mean of the members' means is the mean of all
            d = mean_deltas([regressors[m]], [features])
            deltas = d if deltas is None else deltas + d
        if keep_features:
            kept.append(features)
    views = len(members) * (2 if options.get("mirror") else 1)
    return ((probs / views).cpu(), (deltas / len(members)).cpu() if regressors else None,
            [f.cpu() for f in kept] if keep_features and len(boxes) else None)


def ensemble_scores(members: Sequence[nn.Module], input_sizes: Sequence[int], image: Tensor | Sequence[Tensor],
                    boxes: Tensor, **options) -> Tensor:
    """The members' mean softmax over all views: Tensor[R, K+1] float32 on the CPU, rows sum to 1
    (`ensemble_outputs`' first output; the same arguments)."""
    return ensemble_outputs(members, input_sizes, image, boxes, **options)[0]


def score_members(members: Sequence[tuple[nn.Module, ModelMeta]], pixels: np.ndarray, boxes: Tensor,
                  config: DetectorConfig, dtype: torch.dtype | None = None,
                  regressors: Sequence[BoxRegressor] | None = None,
                  keep_features: bool = False) -> tuple[Tensor, Tensor | None, list[Tensor] | None]:
    """`Detector._score` in the shared mode: `ensemble_outputs` (mean softmax Tensor[R, K+1], mean
    deltas Tensor[R, K, 4] with `regressors`, features Tensor[V, R, D] per member with `keep_features`).

    members: (model, meta) pairs on one device; pixels: uint8 RGB [H, W, 3]; boxes (Tensor[R, 4]);
    config: the detector's (regions, inference and shared sections); dtype: autocast dtype or None.
    """
    device = next(members[0][0].parameters()).device
    height, width = pixels.shape[:2]
    scale = image_scale(height, width, config.shared.short_side, config.shared.max_side)
    normalised: dict[tuple, Tensor] = {}  # one normalised copy per distinct mean/std
    for _, meta in members:
        key = (tuple(meta.mean), tuple(meta.std))
        if key not in normalised:
            normalised[key] = to_tensor(pixels, meta.mean, meta.std, device)
    inf = config.inference
    autocast = (lambda: torch.autocast(device.type, dtype=dtype)) if dtype is not None else None
    sizes = [config.regions.crop_size or meta.input_size for _, meta in members]
    images = [normalised[(tuple(meta.mean), tuple(meta.std))] for _, meta in members]
    return ensemble_outputs([m for m, _ in members], sizes, images, boxes, regressors, keep_features, scale=scale,
                            context_pad=config.regions.context_pad, batch_size=inf.batch_size or 256,
                            sampling_ratio=config.shared.sampling_ratio, split=config.shared.split, mirror=inf.mirror,
                            autocast=autocast,
                            channels_last=inf.channels_last)


def detector_scores(detector, pixels: np.ndarray, boxes: Tensor, regress: bool = False,
                    keep_features: bool = False) -> tuple[Tensor, Tensor | None, list[Tensor] | None]:
    """The shared-mode branch of a `detect.detector.Detector`'s `_score`, timed into its
    timings["network"]: (mean softmax Tensor[R, K+1], mean deltas Tensor[R, K, 4] if `regress`,
    per-member features Tensor[V, R, D] if `keep_features`). InputError on an unknown `mode`;
    ValueError for `regress` without regressors or a member that is not backbone's GoogLeNet."""
    if detector.config.mode not in MODES:
        raise InputError(None, f"mode must be one of {', '.join(MODES)}, got '{detector.config.mode}'")
    if detector.config.shared.split not in SPLITS:
        raise InputError(None, f"shared.split must be one of {', '.join(SPLITS)}, got '{detector.config.shared.split}'")
    if regress and not detector.regressors:
        raise ValueError("this detector has no box regressors (fit them with `detect fit-boxes`)")
    start = time.perf_counter()
    out = score_members(detector.members, pixels, boxes, detector.config, detector.dtype,
                        detector.regressors if regress else None, keep_features)
    detector.timings["network"] += time.perf_counter() - start
    return out


# ---- counting the work ---------------------------------------------------------------------------


def count_multiply_adds(run: Callable[[], object], modules: Sequence[nn.Module]) -> int:
    """Multiply-adds of every Conv2d / Linear call of `modules` during `run()`, whole batches
    counted (biases, pooling, LRN, ReLU free: the paper's and `detect summary`'s convention)."""
    total = [0]

    def hook(module: nn.Module, inputs: tuple, out: Tensor) -> None:
        if isinstance(module, nn.Conv2d):
            kh, kw = module.kernel_size
            total[0] += out.numel() * (module.in_channels // module.groups) * kh * kw
        else:
            total[0] += out.numel() * module.in_features

    handles = [m.register_forward_hook(hook) for root in modules for m in root.modules()
               if isinstance(m, (nn.Conv2d, nn.Linear))]
    try:
        with torch.inference_mode():
            run()
    finally:
        for h in handles:
            h.remove()
    return total[0]


def multiply_adds_per_image(model: nn.Module, input_size: int, height: int, width: int, regions: int,
                            scale: float = 1.0, mirror: bool = False, split: str = DEFAULT_SPLIT) -> dict[str, int]:
    """Counted multiply-adds of one member on one H x W image with `regions` regions, both modes.

    {"rcnn": regions x one S x S forward, "shared": the trunk through `split` on the scaled
    image + regions x the per-region head (the rest), "shared_trunk", "shared_regions"};
    with `mirror` every count doubles (each view runs the same work). Runs the network on one
    crop, one image and one pooled region (not on every region: each costs the same).
    """
    net = check_member(model).eval()
    device = next(net.parameters()).device
    n = grid_size(input_size, split)
    crop = count_multiply_adds(lambda: net(torch.zeros(1, 3, input_size, input_size, device=device)), [net])
    trunk = count_multiply_adds(lambda: trunk_features(net, torch.zeros(1, 3, height, width, device=device),
                                                       scale, split), [net])
    with torch.inference_mode():
        channels = trunk_features(net, torch.zeros(1, 3, input_size, input_size, device=device), 1.0, split)[0].shape[1]
    region = count_multiply_adds(lambda: region_head(net, torch.zeros(1, channels, n, n, device=device), split), [net])
    views = 2 if mirror else 1
    return {"rcnn": views * regions * crop, "shared": views * (trunk + regions * region),
            "shared_trunk": views * trunk, "shared_regions": views * regions * region}
