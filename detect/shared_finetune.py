"""Fast R-CNN fine-tuning of a shared-mode member (`detect train-detector` with `mode: shared`).

Shapes: B images in a step, R regions of a step (n per image), K foreground classes (K+1 outputs).

Everything but the step is the R-CNN trainer's (`detect.finetune`): the members start from the
same classifier runs (`--init`), the same loader, checks, schedule, checkpoints (resume), torchrun
and per-epoch validation (the one-member Detector runs in the shared mode, as the run will). What
differs is Fast R-CNN's mini-batch (Girshick 2015, section 2.3):

- a few images a step (finetune.images_per_batch, Fast R-CNN: 2), each contributing the same
  number of regions (batch_regions / images_per_batch, Fast R-CNN: 64), a quarter of them
  foreground (fg_per_batch; IoU >= fg_iou) and the rest background (IoU in [bg_iou_low,
  bg_iou_high), Fast R-CNN: [0.1, 0.5)) -- `detect.sampling` draws them as for R-CNN;
- each image mirrored as a whole with probability 1/2 (finetune.mirror), its regions with it;
- the step runs the trunk (stem .. 4e) once per image, at the shared mode's scale, pools its
  regions (`detect.shared_mode`) and runs pool4 .. classifier on all of them: the gradient of
  every region flows back into the one shared map of its image.

The loss is the log loss over K+1 classes. Fast R-CNN adds box regression to it (a multi-task
loss); here both modes have one box-regression method, R-CNN's: after fine-tuning,
`train-detector` fits ridge regressors post hoc on the final members' pooled region features
(box_regression section; `detect.fit_boxes`), in this mode on the shared mode's features.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from backbone.distributed import DistInfo
from backbone.errors import InputError
from backbone.engine import Meter, Schedule, TrainState, set_lr
from backbone.models import ModelMeta
from detect.config import DetectorConfig
from detect.data import DetectionDataset
from detect import finetune
from detect.finetune import member_network
from detect.regions import to_tensor
from detect.sampling import SEED_DROPOUT, mix_seed, sample_minibatch
from detect.shared_mode import DEFAULT_SPLIT, check_member, check_split, grid_size, image_scale, pool_regions, \
    region_head, region_rois, scaled_size, split_geometry, trunk_features
from proposals import ProposalCache

SEED_IMAGE_FLIP = 4  # the random stream of the whole-image flips, beside detect.sampling's SEED_* streams


class SharedNet(nn.Module):
    """A member's network in the shared mode, as one module so that DistributedDataParallel sees
    one forward pass: images and their regions in, logits of every region out."""

    def __init__(self, net: nn.Module, input_size: int, sampling_ratio: int, channels_last: bool = False,
                 split: str = DEFAULT_SPLIT):
        super().__init__()
        self.net = check_member(net)
        self.input_size, self.grid, self.sampling_ratio = input_size, grid_size(input_size, split), sampling_ratio
        self.split, self.stride = split, split_geometry(split)[0]
        self.layout = torch.channels_last if channels_last else torch.contiguous_format

    def forward(self, images: list[Tensor], rois: list[Tensor], scales: list[float]) -> Tensor:
        """images: B normalised Tensor[3, H, W]; rois: B Tensor[n, 4] (`region_rois`, in
        the scaled images' pixels); scales: B trunk scales. Returns logits Tensor[R, K+1]."""
        pooled = []
        for image, boxes, scale in zip(images, rois, scales):
            features, _ = trunk_features(self.net, image.unsqueeze(0).contiguous(memory_format=self.layout), scale,
                                         self.split)
            pooled.append(pool_regions(features[0], boxes, self.grid, self.sampling_ratio, self.stride))
        return region_head(self.net, torch.cat(pooled), self.split)[0]


def step_inputs(decoded: list, group: list[int], cfg: DetectorConfig, meta: ModelMeta, seed: int, epoch: int,
                step: int, dist: DistInfo) -> tuple[list[Tensor], list[Tensor], list[float], Tensor]:
    """This process's images, rois, scales and region labels (Tensor[R]) of one step."""
    ft, size = cfg.finetune, cfg.regions.crop_size or meta.input_size
    mine = list(range(dist.rank, len(group), dist.world_size))  # as EpochSteps shares them
    samples = sample_minibatch({i: r for i, _, r in decoded}, group, ft.batch_regions, ft.fg_per_batch,
                               False, seed, epoch, step, positions=mine)
    pixels = {i: img for i, img, _ in decoded}
    images, rois, scales, labels = [], [], [], []
    for pos, sample in zip(mine, samples):
        x = to_tensor(pixels[sample.image].numpy(), meta.mean, meta.std, dist.device)
        boxes = sample.boxes
        g = torch.Generator().manual_seed(mix_seed(seed, epoch, step, SEED_IMAGE_FLIP, pos))
        if ft.mirror and torch.rand(1, generator=g).item() < 0.5:  # the whole image and its regions
            x, width = x.flip(-1), x.shape[-1]
            boxes = torch.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], 1)
        height, width = x.shape[-2:]
        scale = image_scale(height, width, cfg.shared.short_side, cfg.shared.max_side)
        size_hw = scaled_size(height, width, scale)
        rois.append(region_rois(boxes.to(dist.device, non_blocking=True), (size_hw[0] / height, size_hw[1] / width),
                                size, cfg.regions.context_pad, cfg.shared.split))  # non_blocking: no wait for the GPU's queue
        images.append(x)
        scales.append(scale)
        labels.append(sample.labels)
    y = torch.cat(labels).to(dist.device, non_blocking=True) if labels else \
        torch.zeros(0, dtype=torch.int64, device=dist.device)
    return images, rois, scales, y


def train_one_epoch(net: nn.Module, state: TrainState, loader: torch.utils.data.DataLoader, schedule: Schedule,
                    meta: ModelMeta, cfg: DetectorConfig, seed: int, epoch: int, dist: DistInfo, desc: str) -> dict:
    """One pass of `net` (SharedNet, or its DDP wrapper) over the training images; mean loss,
    accuracies and regions/s as the R-CNN trainer reports them."""
    ft = cfg.finetune
    loader.batch_sampler.set_epoch(seed, epoch)
    steps = loader.batch_sampler.steps
    amp = dist.device.type == "cuda" and ft.amp
    net.train()
    meter = Meter(dist.device, 4, len(steps), desc, dist.is_main)  # loss, correct, fg, fg correct
    for step, decoded in enumerate(loader):
        lr = schedule.rate(epoch * len(steps) + step)
        set_lr(state.optimizer, lr)
        images, rois, scales, y = step_inputs(decoded, steps[step], cfg, meta, seed, epoch, step, dist)
        if not images:  # no labelled region in this process's images
            continue
        torch.manual_seed(mix_seed(seed, epoch, step, SEED_DROPOUT, dist.rank))
        with torch.autocast(dist.device.type, dtype=torch.bfloat16, enabled=amp):
            logits = net(images, rois, scales)
        finetune.region_step(state, meter, logits, y, lr, ft.batch_regions, dist)
    return finetune.epoch_record(meter, len(steps))


def train_member(index: int, init_run: str | Path, classes: list[str], loader: torch.utils.data.DataLoader,
                 cfg: DetectorConfig, out_dir: Path, val: tuple[DetectionDataset, ProposalCache] | None,
                 resume: bool, dist: DistInfo) -> tuple[nn.Module, ModelMeta]:
    """Fine-tune member `index` in the shared mode for cfg.finetune.epochs, checkpointing each
    epoch (the same checkpoints, log and validation as `detect.finetune.train_member`)."""
    ft = cfg.finetune
    model, meta = member_network(init_run, classes, ft, ft.seed + index, dist.device)
    meta.extra["mode"] = "shared"
    shared = SharedNet(model, cfg.regions.crop_size or meta.input_size, cfg.shared.sampling_ratio, ft.channels_last,
                       cfg.shared.split)
    return finetune.fit_member(index, model, meta, shared, train_one_epoch, classes, loader, cfg, out_dir, val,
                               resume, dist, label=" (shared)")


def train_detector(cfg: DetectorConfig, *args, **kwargs) -> Path:
    """`detect.finetune.train_detector` with this module's member trainer (what train-detector
    runs for mode: shared); the same arguments. InputError on an unknown shared.split."""
    try:
        check_split(cfg.shared.split)
    except ValueError as err:
        raise InputError(None, str(err)) from None
    return finetune.train_detector(cfg, *args, member_trainer=train_member, **kwargs)
