"""The R-CNN detector: proposals, warped regions, an ensemble of GoogLeNet region classifiers.

Shapes: R regions, K foreground classes (column/label 0 is background), D detections, M members.

`Detector.score_regions(image, boxes) -> Tensor[R, K+1]` is the one region-scoring call: each
box is warped (detect.regions) and classified by every member; the members' softmax outputs
are averaged (the paper's ensemble). `Detector.detect(image)` adds the proposals, R-CNN's box
regression when the run has regressors (detect.box_regression: each region's box moved per class
by the members' mean regression of the pooled features the scoring pass computed) and R-CNN's
per-class greedy NMS. `Detector.regress_boxes(image, boxes) -> Tensor[R, K, 4]`.

A detector run folder (written by `save_detector_run`, read by `Detector.load`):

    RUN/detector.yaml     the resolved DetectorConfig
    RUN/detector.json     {"classes": [K names], "members": ["members/0", ...], "multibox": "multibox" | null}
    RUN/members/<i>/      one region classifier each (backbone.models.save_classifier), K+1 outputs,
                          and optionally its box_regressor.safetensors (`detect fit-boxes`)
    RUN/multibox/         optional: the MultiBox run the proposals use
"""
from __future__ import annotations

import dataclasses
import shutil
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import Tensor, nn
from torchvision.ops import batched_nms, clip_boxes_to_image

from backbone.config import config_from_dict, deep_merge, parse_overrides, read_yaml, save_config, set_dotted
from backbone.device import resolve_device
from backbone.errors import InputError
from backbone.io import atomic_write_json, load_image, read_json
from backbone.models import ModelMeta, load_classifier, save_classifier
from detect.box_regression import BoxRegressor, decode_boxes, load_member_regressors, mirror_deltas
from detect import shared_mode
from detect.config import PRECISIONS, DetectorConfig, InferenceConfig
from detect.regions import to_tensor, warp_regions

FAST_CHECK_REGIONS = 8  # regions compared in float32 and the fast dtype before "auto" trusts it
FAST_MAX_DIFF = 0.02  # the largest softmax difference "auto" accepts against float32
RUN_JSON = "detector.json"
RUN_YAML = "detector.yaml"
BACKGROUND = "__background__"
DEFAULT_MODEL_DIR = Path(__file__).resolve().parent / "default_model"

Member = tuple[nn.Module, ModelMeta]
Proposer = Callable[[np.ndarray], tuple[Tensor, Tensor]]


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for `precision` on `device`; None means plain float32.

    "auto" is the fast setting where the hardware runs it natively: bfloat16 on CPUs with
    AVX-512 BF16 / AMX and on GPUs that support it, float16 on older GPUs; float32 elsewhere.
    "auto" is then checked on the first real regions each member scores (Detector keeps it only
    if the softmax agrees with float32 within 0.02 and the top classes match), is tested in
    tests/detect/test_detector.py and measured by tools/bench/region_scoring.py.
    """
    if precision not in PRECISIONS:
        raise InputError(None, f"inference.precision must be one of {', '.join(PRECISIONS)}, got '{precision}'")
    if precision != "auto":
        return None if precision == "float32" else getattr(torch, precision)
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu" and torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return torch.bfloat16
    return None


def select_detections(boxes: Tensor, scores: Tensor, nms_iou: float, score_threshold: float,
                      max_detections: int) -> dict[str, Tensor]:
    """Per-class greedy NMS over scored regions.

    boxes (Tensor[R, 4], or Tensor[R, K, 4]: one box per class, regressed), scores (Tensor[R, K+1])
    -> {"boxes": [D, 4], "scores": [D], "labels": [D] int64 in 1..K}, best first. A region may be
    a detection of several classes;
    scores below `score_threshold` are dropped; at most `max_detections` (0 = no limit).
    """
    fg = scores[:, 1:]
    rows, cols = (fg >= score_threshold).nonzero(as_tuple=True)
    cand_boxes = (boxes[rows, cols] if boxes.dim() == 3 else boxes[rows]).float()
    cand_scores, labels = fg[rows, cols], cols + 1
    keep = batched_nms(cand_boxes, cand_scores, labels, nms_iou)  # sorted by decreasing score
    if max_detections > 0:
        keep = keep[:max_detections]
    return {"boxes": cand_boxes[keep], "scores": cand_scores[keep], "labels": labels[keep]}


def _as_boxes(boxes: Any) -> Tensor:
    """Tensor[R, 4] float32 on the CPU from a tensor, an array or nested lists; InputError if not."""
    t = torch.as_tensor(np.asarray(boxes, dtype=np.float32) if not torch.is_tensor(boxes) else boxes)
    t = t.detach().float().cpu()
    if t.numel() == 0:
        return t.reshape(0, 4)
    if t.ndim != 2 or t.shape[1] != 4:
        raise InputError(None, f"boxes must be [R, 4] (x1, y1, x2, y2), got shape {tuple(t.shape)}")
    if not torch.isfinite(t).all():
        raise InputError(None, "boxes contain NaN or Inf")
    if (t[:, 2:] < t[:, :2]).any():
        raise InputError(None, "boxes must have x2 >= x1 and y2 >= y1 (xyxy pixels)")
    return t


class Detector:
    """An ensemble of region classifiers (all with K+1 outputs) over region proposals.

    Args:
        members: (model, meta) pairs as `backbone.models.load_classifier` returns them, all on one
            device; they are put in eval mode (and channels-last if the config says so).
        classes: the K foreground class names; label k is classes[k-1].
        config: DetectorConfig (proposals, region crops, inference settings).
        proposer: `image -> (boxes [N, 4], sources [N])`; built from config.proposals if None.
        regressors: one BoxRegressor per member (features of that member, K classes), or None.
    """

    def __init__(self, members: Sequence[Member], classes: Sequence[str], config: DetectorConfig,
                 proposer: Proposer | None = None, regressors: Sequence[BoxRegressor] | None = None):
        if not members:
            raise ValueError("a detector needs at least one member")
        self.classes = list(classes)
        self.config = config
        self.proposer = proposer
        self.device = next(members[0][0].parameters()).device
        self.dtype = resolve_precision(config.inference.precision, self.device)
        self.members: list[Member] = []
        for model, meta in members:
            if meta.num_classes != len(self.classes) + 1:
                raise ValueError(f"member has {meta.num_classes} outputs, the detector needs "
                                 f"{len(self.classes) + 1} (K={len(self.classes)} classes + background)")
            model.eval()
            if config.inference.channels_last:
                model.to(memory_format=torch.channels_last)
            self.members.append((model, meta))
        self.regressors = list(regressors) if regressors else None
        if self.regressors and (len(self.regressors) != len(self.members) or any(
                r.num_classes != len(self.classes) for r in self.regressors)):
            raise ValueError(f"need one box regressor of {len(self.classes)} classes per member")
        self.timings = {"proposals": 0.0, "crops": 0.0, "network": 0.0, "nms": 0.0}  # seconds, cumulative
        self.timed = False  # True: each stage waits for a GPU (exact `timings`); False: no wait per batch
        # "auto" keeps its fast dtype only after the first real regions agree with float32.
        self._check_fast = config.inference.precision == "auto" and self.dtype is not None
        self.fast_check: dict | None = None  # the outcome of that check, once made

    # ---- loading -----------------------------------------------------------------------------

    @classmethod
    def load(cls, path: str | Path | None = None, device: str | torch.device = "auto",
             overrides: Sequence[str] = (), **settings: Any) -> "Detector":
        """Load a detector run (all members, its config, its MultiBox model if it has one).

        path: a run folder of `detect train-detector`; None = the built-in model.
        overrides: "key=value" strings with dotted keys ("inference.nms_iou=0.4").
        settings: inference fields by name (score_threshold=0.1, batch_size=16), or any field
            with "__" for the dots (regions__context_pad=8).
        """
        run = Path(path) if path is not None else _default_run()
        info = _read_run_json(run)
        config = _load_run_config(run, overrides, settings)
        dev = resolve_device(device)
        members = [load_classifier(run / m, dev) for m in info["members"]]
        for (_, meta), m in zip(members, info["members"]):
            if meta.num_classes != len(info["classes"]) + 1:
                raise InputError(run / m, f"member has {meta.num_classes} outputs but the run has "
                                          f"{len(info['classes'])} classes (+1 background expected)")
        if info.get("multibox"):
            config.proposals.multibox.model = str(run / info["multibox"])
            config.proposals.multibox.device = str(dev)
        regressors = load_member_regressors([run / m for m in info["members"]])
        return cls(members, info["classes"], config, regressors=regressors)

    # ---- the region-scoring API --------------------------------------------------------------

    def propose(self, image: Any) -> Tensor:
        """Proposals of an image (path | uint8 H x W x 3 RGB | PIL): Tensor[N, 4] xyxy."""
        if self.proposer is None:
            from proposals import build_proposer  # lazy: scoring given boxes needs no proposer

            self.proposer = build_proposer(self.config.proposals)
        start = time.perf_counter()
        boxes = self.proposer(load_image(image))[0]
        self.timings["proposals"] += time.perf_counter() - start
        return boxes.float().reshape(-1, 4)

    def score_regions(self, image: Any, boxes: Any) -> Tensor:
        """The ensemble's mean softmax for each region of one image.

        image: path | uint8 H x W x 3 RGB array | PIL image.
        boxes (Tensor[R, 4]): xyxy pixels of the image (array or lists accepted).
        Returns Tensor[R, K+1] float32 on the CPU; rows sum to 1; column 0 is background.
        Regions go through the network `batch_size()` at a time (bounded memory). With
        inference.mirror each member also scores the mirrored crops and every view counts once.
        """
        return self._score(load_image(image), _as_boxes(boxes))[0]

    def regress_boxes(self, image: Any, boxes: Any) -> Tensor:
        """The boxes (Tensor[R, 4]) of one image moved by the members' mean regression for each
        class and clipped to the image: Tensor[R, K, 4]. ValueError without regressors."""
        if not self.regressors:
            raise ValueError("this detector has no box regressors (fit them with `detect fit-boxes`)")
        return self._score_and_regress(load_image(image), _as_boxes(boxes))[1]

    def score_with_features(self, image: Any, boxes: Any) -> tuple[Tensor, list[Tensor]]:
        """`score_regions` (Tensor[R, K+1]) and each member's pooled features, what its box regressor
        reads: Tensor[V, R, D_m] per member, V = 2 with inference.mirror (view 1 mirrored)."""
        return self._score(load_image(image), _as_boxes(boxes), keep_features=True)[::2]

    def detect(self, image: Any, boxes: Any = None) -> dict[str, Tensor]:
        """Detections in one image: {"boxes": [D, 4], "scores": [D], "labels": [D] in 1..K}.

        boxes: regions to score (Tensor[R, 4]); None = this detector's proposals. With
        regressors and inference.box_regression each region's box is regressed per class first.
        """
        pixels = load_image(image)
        boxes = self.propose(pixels) if boxes is None else _as_boxes(boxes)
        if self.regressors and self.config.inference.box_regression:
            return self.select(*self._score_and_regress(pixels, boxes)[::-1])
        return self.select(boxes, self._score(pixels, boxes)[0])

    def _score_and_regress(self, pixels: np.ndarray, boxes: Tensor) -> tuple[Tensor, Tensor]:
        """(scores Tensor[R, K+1], regressed boxes Tensor[R, K, 4] clipped) from one pass."""
        scores, deltas, _ = self._score(pixels, boxes, regress=True)
        return scores, clip_boxes_to_image(decode_boxes(boxes, deltas), pixels.shape[:2])

    @torch.inference_mode()
    def _score(self, pixels: np.ndarray, boxes: Tensor, regress: bool = False,
               keep_features: bool = False) -> tuple[Tensor, Tensor | None, list[Tensor] | None]:
        """One pass of every member (and view) over the regions: (mean softmax [R, K+1], mean
        regression deltas [R, K, 4] if `regress`, per-member features [V, R, D] if `keep_features`).
        A mirrored view's deltas have tx negated: they move the mirrored box."""
        if self.config.mode != "rcnn":  # one trunk pass an image, regions pooled from it
            return shared_mode.detector_scores(self, pixels, boxes, regress, keep_features)
        k, mirror, dev = len(self.classes), self.config.inference.mirror, self.device
        views = len(self.members) * (2 if mirror else 1)
        out, deltas = torch.zeros((len(boxes), k + 1), device=dev), torch.zeros((len(boxes), k, 4), device=dev) if regress else None
        feats: list[list[list[Tensor]]] = [[[], []] for _ in self.members]
        normalised: dict[tuple, Tensor] = {}  # one normalised copy per distinct mean/std
        for start in range(0, len(boxes), step := self.batch_size()):
            batch, crops = boxes[start:start + step], {}
            total, moves = torch.zeros((), device=self.device), torch.zeros((), device=self.device)
            for m, (model, meta) in enumerate(self.members):
                key = (meta.mean, meta.std, self.config.regions.crop_size or meta.input_size)
                if key not in crops:
                    if key[:2] not in normalised:
                        normalised[key[:2]] = to_tensor(pixels, meta.mean, meta.std, self.device)
                    crops[key] = self._crops(normalised[key[:2]], batch, key[2])
                    if mirror:  # the paper's test-time mirroring: flipped once per batch, shared by members
                        crops[(*key, "mirror")] = crops[key].flip(-1)
                if self._check_fast:
                    self._check_fast_precision(model, crops[key])
                for view, x in enumerate([crops[key], crops[(*key, "mirror")]] if mirror else [crops[key]]):
                    probs, pooled = self._forward(model, x)
                    total = total + probs
                    if regress:
                        moves = moves + mirror_deltas(self.regressors[m].predict_deltas(pooled), view == 1)
                    if keep_features:
                        feats[m][view].append(pooled)
            out[start:start + len(batch)] = total / views
            if regress:
                deltas[start:start + len(batch)] = moves / views
        features = [torch.stack([torch.cat(v) for v in f if v]) for f in feats] if keep_features and len(boxes) else None
        return out.cpu(), deltas.cpu() if regress else None, features and [f.cpu() for f in features]  # one wait

    def select(self, boxes: Tensor, scores: Tensor) -> dict[str, Tensor]:
        """`select_detections` (per-class NMS) with this detector's inference settings.

        boxes (Tensor[R, 4]), scores (Tensor[R, K+1]) -> {"boxes": [D, 4], "scores": [D],
        "labels": [D] in 1..K}, best first.
        """
        start = time.perf_counter()
        inf = self.config.inference
        dets = select_detections(boxes, scores, inf.nms_iou, inf.score_threshold, inf.max_detections)
        self.timings["nms"] += time.perf_counter() - start
        return dets

    def batch_size(self) -> int:
        """Regions per forward pass: inference.batch_size, or for 0 the measured best of this
        device kind (CPU: 16, whose activations stay in the caches -- twice the crops/s of 64
        for a full-width member in bfloat16 on a 2-core Xeon; CUDA: 128)."""
        size = self.config.inference.batch_size
        return size if size > 0 else (128 if self.device.type == "cuda" else 16)

    # ---- internals ---------------------------------------------------------------------------

    def _crops(self, image: Tensor, boxes: Tensor, crop_size: int) -> Tensor:
        """Warped crops [B, 3, S, S] of normalised image [3, H, W], in the network's layout."""
        start = time.perf_counter()
        crops = warp_regions(image, boxes, crop_size, self.config.regions.context_pad)
        if self.config.inference.channels_last:
            crops = crops.contiguous(memory_format=torch.channels_last)
        self._sync()
        self.timings["crops"] += time.perf_counter() - start
        return crops

    def _check_fast_precision(self, model: nn.Module, crops: Tensor) -> None:
        """Score the first FAST_CHECK_REGIONS crops in float32 and in the fast dtype; fall back to
        float32 for good (with a warning) unless max |softmax diff| <= FAST_MAX_DIFF and the top
        classes agree. Made once per member, on the first regions it scores."""
        n = min(len(crops), FAST_CHECK_REGIONS)
        exact = self._probabilities(model, crops[:n], fast=False)
        fast = self._probabilities(model, crops[:n])
        diff = (exact - fast).abs().max().item()
        same = (exact.argmax(1) == fast.argmax(1)).all().item()
        self.fast_check = {"dtype": str(self.dtype).replace("torch.", ""), "regions": n,
                           "max_abs_diff": diff, "same_top_class": bool(same)}
        if diff > FAST_MAX_DIFF or not same:
            warnings.warn(f"{self.fast_check['dtype']} disagrees with float32 on this model (max softmax "
                          f"difference {diff:.3f}); scoring in float32 (set inference.precision to choose)")
            self.dtype, self._check_fast = None, False
        elif model is self.members[-1][0]:
            self._check_fast = False

    def _probabilities(self, model: nn.Module, crops: Tensor, fast: bool = True) -> Tensor:
        """Softmax [B, K+1] (float32) of one member, under the configured precision
        (fast=False: float32)."""
        return self._forward(model, crops, fast)[0]

    def _forward(self, model: nn.Module, crops: Tensor, fast: bool = True) -> tuple[Tensor, Tensor]:
        """(softmax [B, K+1], pooled features [B, D]) of one member, both float32."""
        start = time.perf_counter()
        dtype = self.dtype if fast else None
        # The trunk runs in the fast dtype; the head (pool + linear) in float32: logits rounded
        # to bfloat16 (8 significant bits: steps of 0.25 at 40) would shift a peaked softmax by
        # several hundredths on their own, for a negligible share of the multiply-adds.
        with torch.autocast(self.device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            features = model.forward_features(crops)
        features = features.float()
        probs = model.forward_head(features).float().softmax(dim=1)
        pooled = model.pool_features(features)
        self._sync()
        self.timings["network"] += time.perf_counter() - start
        return probs, pooled

    def _sync(self) -> None:
        if self.timed and self.device.type == "cuda":  # a wait per stage and batch: only when timing
            torch.cuda.synchronize(self.device)


def save_detector_run(out_dir: str | Path, members: Sequence[Member], config: DetectorConfig,
                      classes: Sequence[str], multibox_dir: str | Path | None = None) -> None:
    """Write a detector run folder that `Detector.load` reads (layout in the module docstring).

    Each member must have K+1 outputs; its meta is saved with classes ["__background__", *classes]
    and extra["task"] = "region_classifier". detector.json is written last: a folder holding
    it is complete.
    """
    out = Path(out_dir)
    classes = list(classes)
    names = []
    for i, (model, meta) in enumerate(members):
        if meta.num_classes != len(classes) + 1:
            raise ValueError(f"member {i} has {meta.num_classes} outputs, expected {len(classes) + 1}")
        meta = dataclasses.replace(meta, classes=[BACKGROUND, *classes],
                                   extra={**meta.extra, "task": "region_classifier"})
        names.append(f"members/{i}")
        save_classifier(out / names[-1], model, meta)
    multibox = None
    if multibox_dir is not None:
        multibox = "multibox"
        if Path(multibox_dir).resolve() != (out / multibox).resolve():
            shutil.copytree(multibox_dir, out / multibox, dirs_exist_ok=True)
    save_config(config, out / RUN_YAML)
    atomic_write_json(out / RUN_JSON, {"classes": classes, "members": names, "multibox": multibox})


def _default_run() -> Path:
    if (DEFAULT_MODEL_DIR / RUN_JSON).is_file():
        return DEFAULT_MODEL_DIR
    raise InputError(DEFAULT_MODEL_DIR, "no built-in detector model is installed; pass a detector "
                                        "run folder (--model RUN, made by `detect train-detector`)")


def _read_run_json(run: Path) -> dict:
    path = run / RUN_JSON
    if not path.is_file():
        raise InputError(run, f"not a detector run ({RUN_JSON} missing; make one with `detect train-detector`)")
    info = read_json(path)
    ok = isinstance(info, dict) and isinstance(info.get("classes"), list) \
        and all(isinstance(c, str) for c in info["classes"]) and isinstance(info.get("members"), list) \
        and info["members"] and all(isinstance(m, str) for m in info["members"]) \
        and (info.get("multibox") is None or isinstance(info["multibox"], str))
    if not ok:
        raise InputError(path, 'expected {"classes": [names], "members": ["members/0", ...], "multibox": str|null}')
    return info


def _load_run_config(run: Path, overrides: Sequence[str], settings: dict) -> DetectorConfig:
    """detector.yaml <- "key=value" overrides <- keyword settings, strictly checked."""
    data = read_yaml(run / RUN_YAML)
    inference_fields = {f.name for f in dataclasses.fields(InferenceConfig)}
    extra = parse_overrides(overrides)
    for key, value in settings.items():
        set_dotted(extra, f"inference.{key}" if key in inference_fields else key.replace("__", "."), value)
    where = str(run / RUN_YAML) + (" + overrides" if extra else "")
    return config_from_dict(DetectorConfig, deep_merge(data, extra), where)
