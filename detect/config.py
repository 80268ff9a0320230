"""The detector's config: proposals, region crops, inference and fine-tuning, in one dataclass.

Loaded with `backbone.config.load_config(DetectorConfig, yaml_path, overrides)` and saved as
`detector.yaml` in every detector run, so a run carries the settings it was trained with.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from proposals import ProposalConfig

PRECISIONS = ("auto", "float32", "bfloat16", "float16")


@dataclass
class RegionConfig:
    context_pad: int = 16  # context pixels around each box at a 224 crop (R-CNN); scaled with the crop
    crop_size: int = 0  # side of the warped crop; 0 = the member's input_size


@dataclass
class InferenceConfig:
    nms_iou: float = 0.3  # per-class greedy NMS overlap (R-CNN test time)
    score_threshold: float = 0.05  # detections scoring below this are dropped
    max_detections: int = 100  # most detections kept per image, best first
    batch_size: int = 0  # regions per forward pass (bounds memory); 0 = auto: 16 on a CPU (stays in cache), 128 on CUDA
    precision: str = "auto"  # auto | float32 | bfloat16 | float16; auto = fastest safe on the device
    channels_last: bool = True  # NHWC memory layout for the convolutions (faster on CPU and GPU)
    mirror: bool = False  # also score every region mirrored and average the two softmaxes (2x the network time)
    box_regression: bool = True  # move each region's box per class by the members' box regressors, when the run has them


MODES = ("rcnn", "shared")


@dataclass
class SharedConfig:
    short_side: int = 600  # shared mode: the image's shorter side scaled to this (Fast R-CNN: 600; 0 = as it is)
    max_side: int = 1000  # ... its longer side at most this (Fast R-CNN: 1000; 0 = no cap)
    sampling_ratio: int = 0  # roi_align samples per cell and axis (0 = adaptive; 0 and 1 exact at the member's scale)
    split: str = "inception4e"  # the last block run once per image; the blocks after it run per region (Fast R-CNN: 4e's stride-16 map)


@dataclass
class FinetuneConfig:
    epochs: int = 2  # passes over the training images
    optimizer: str = "sgd"  # "sgd" (R-CNN's) or "adamw" (decoupled weight decay; faster for short runs from scratch)
    lr: float = 0.001  # learning rate (R-CNN fine-tuning: SGD at 0.001)
    momentum: float = 0.9  # SGD momentum; AdamW's beta1
    weight_decay: float = 5e-4  # L2 penalty (AdamW: decoupled) on weights, not on biases (backbone.engine)
    batch_regions: int = 128  # regions per mini-batch
    fg_per_batch: int = 32  # foreground regions per mini-batch (the rest are background)
    images_per_batch: int = 2  # images a mini-batch's regions are drawn from
    fg_iou: float = 0.5  # IoU with a ground-truth box of the class at or above which a region is foreground
    bg_iou_high: float = 0.5  # background: best IoU below this ...
    bg_iou_low: float = 0.0  # ... and at or above this
    mirror: bool = True  # random horizontal flips of the regions
    members: int = 3  # ensemble members, each fine-tuned with its own seed and sampling
    seed: int = 0  # seed of member 0; member i uses seed + i
    workers: int = 2  # data loading worker processes
    lr_schedule: str = "step"  # "step" (x lr_gamma every lr_step_epochs) or "cosine" (half cosine over the run)
    lr_gamma: float = 0.1  # learning-rate factor at each step
    lr_step_epochs: int = 0  # epochs between learning-rate steps; 0 = constant
    dropout: float | None = None  # dropout before the classifier while fine-tuning; None = the network's own
    freeze: str = ""  # trunk blocks left as the classifier trained them: "" none, "stem", or stem through e.g. "inception3b"
    init_head: str = "match"  # "match": rows of classes the classifier knows (by name) start from its rows; "fresh"
    amp: bool = True  # bfloat16 autocast on CUDA (ignored on the CPU)
    channels_last: bool = True  # channels-last (NHWC) crops and weights on CPU and CUDA (faster steps)
    threads: int = 0  # CPU threads for torch per process (0: torch's default); 1 wins on a busy machine
    val_every: int = 1  # with a validation split: its mAP every this many epochs and after the last


@dataclass
class BoxRegressionConfig:
    enabled: bool = True  # train-detector fits each member's box regressors after fine-tuning (detect.fit_boxes)
    ridge_lambda: float = 1.0  # ridge penalty, targets normalised (R-CNN: 1000 on pool5; 1 chosen on the demo's val, docs/detector.md)
    min_iou: float = 0.6  # training pairs: proposals with at least this IoU to a ground-truth box (R-CNN: 0.6)


@dataclass
class DetectorConfig:
    mode: str = "rcnn"  # "rcnn": every region warped and run through the network; "shared": one trunk pass an image (Fast R-CNN)
    proposals: ProposalConfig = field(default_factory=ProposalConfig)  # where the regions come from
    regions: RegionConfig = field(default_factory=RegionConfig)  # how a region is cropped
    inference: InferenceConfig = field(default_factory=InferenceConfig)  # scoring and NMS at test time
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)  # R-CNN fine-tuning of the members
    shared: SharedConfig = field(default_factory=SharedConfig)  # the shared mode's image scale and pooling (detect.shared_mode)
    box_regression: BoxRegressionConfig = field(default_factory=BoxRegressionConfig)  # R-CNN's box regressors (detect.box_regression)
