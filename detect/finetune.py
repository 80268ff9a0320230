"""R-CNN fine-tuning of an ensemble of GoogLeNet region classifiers (`detect train-detector`).

Shapes: R regions in a mini-batch, S crop side, K foreground classes (outputs K+1, 0 = background).

Each member starts from a classifier run (`detect train-classifier`, either architecture), gets
a fresh K+1-way classifier, and is fine-tuned with SGD on warped regions drawn by R-CNN's
sampling (`detect.sampling`): 128 regions per mini-batch, 32 of them foreground. Members
differ by seed (new head, image order, region draws, mirroring, dropout), as the paper's
ensemble did. Crops are made on the training device from decoded images and cached proposals.

A run folder holds, besides the detector itself (`detect.detector.save_detector_run`):

    train/member_<i>.pt    checkpoint after each epoch (atomic; `resume` continues from it)
    train/metrics.jsonl    one JSON line per member and epoch (loss, accuracy, val mAP, ...)

All randomness derives from (seed, epoch, step), so a resumed run ends with exactly the weights
of an uninterrupted one. Under torchrun each process takes an equal share of the images of
every mini-batch; gradients are averaged by DistributedDataParallel so that the update equals
the single-process one on the whole mini-batch.
"""
from __future__ import annotations

import copy
import re
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from backbone.checkpoint import check_finite_loss, load_checkpoint, save_checkpoint
from backbone.config import config_to_dict, save_config
from backbone.distributed import DistInfo, all_reduce_sum, barrier, cleanup, init_distributed
from backbone.errors import InputError
from backbone.googlenet import TRUNK_BLOCKS
from backbone.io import append_jsonl, load_image
from backbone.loaders import start_workers, worker_init
from backbone.models import ModelMeta, load_classifier
from backbone.train import LR_SCHEDULES, OPTIMIZERS, cosine_rate
from detect.config import DetectorConfig, FinetuneConfig
from detect.data import DetectionDataset, ImageRecord
from detect.detector import BACKGROUND, Detector, detect_dataset, save_detector_run
from detect.metrics import evaluate_map
from detect.regions import to_tensor, warp_regions
from detect.sampling import (SEED_DROPOUT, SEED_HEAD, LabelledRegions, RegionSample, EpochSteps,
                             label_regions, mix_seed, sample_minibatch)
from proposals import ProposalCache

LOG_FILE = "metrics.jsonl"


def usable_images(dataset: DetectionDataset, cache: ProposalCache) -> tuple[list[int], list[str]]:
    """Indices into dataset.images of the images with cached proposals, and the keys without."""
    kept, skipped = [], []
    for i, rec in enumerate(dataset.images):
        (kept if rec.key in cache else skipped).append(i)
    return kept, [dataset.images[i].key for i in skipped]


def label_image(rec: ImageRecord, cache: ProposalCache, ft: FinetuneConfig) -> LabelledRegions:
    """The ground truth and cached proposals of one image, labelled by R-CNN's IoU rule."""
    entry = cache.get(rec.key)
    if entry is None:
        raise InputError(cache.path(rec.key), "proposals of this image disappeared from the cache")
    return label_regions(entry[0], rec.boxes, rec.labels, ft.fg_iou, ft.bg_iou_high, ft.bg_iou_low)


INIT_HEADS = ("match", "fresh")


def class_key(name: str) -> str:
    """A class name reduced for matching across data sets: lower case, a leading `N_` index
    dropped, letters and digits only ('0_T-shirt_top' and 'tshirt_top' both give 'tshirttop';
    an ImageNet wnid stays itself)."""
    return re.sub(r"[^0-9a-z]", "", re.sub(r"^\d+_", "", name.strip().lower()))


def _main_head(model: nn.Module) -> nn.Linear:
    """The final linear layer of either architecture (ours: .fc; torchvision's: .net.fc)."""
    return model.fc if isinstance(getattr(model, "fc", None), nn.Linear) else model.net.fc


def carry_class_rows(old_weight: Tensor, old_bias: Tensor, old_classes: list[str], head: nn.Linear,
                     classes: list[str]) -> list[str]:
    """Copy into `head` (row 0: background, row j + 1: classes[j]) the classifier's rows of the
    classes it knows by `class_key` (a classifier class named `__background__` fills row 0); a
    key two classifier classes share is left alone. Returns the rows carried, by name."""
    keys: dict[str, int | None] = {}
    for i, name in enumerate(old_classes):
        k = class_key(name)
        keys[k] = None if k in keys else i  # ambiguous: do not guess
    carried = []
    with torch.no_grad():
        for j, name in enumerate([BACKGROUND, *classes]):
            i = keys.get(class_key(name))
            if i is not None:
                head.weight[j] = old_weight[i]
                head.bias[j] = old_bias[i]
                carried.append(name)
    return carried


def init_member(init_run: str | Path, classes: list[str], seed: int,
                dropout: float | None, init_head: str = "match") -> tuple[nn.Module, ModelMeta]:
    """A classifier run with a new (K+1)-way head, on the CPU: the starting point of a member.

    init_head "match": the rows of detection classes the classifier already knows (same
    `class_key`; ILSVRC's 200 DET classes match a 1000-class model by wnid) start from the
    classifier's own rows, and the background row and unknown classes are new; "fresh": every
    row new (R-CNN's way). meta.extra["head_rows_carried"] counts the rows carried.
    """
    model, base = load_classifier(init_run, "cpu")
    old = _main_head(model)
    old_weight, old_bias = old.weight.detach().clone(), old.bias.detach().clone()
    torch.manual_seed(mix_seed(seed, 0, 0, SEED_HEAD))  # the new head differs between members
    model.reset_classifier(len(classes) + 1)
    carried = []
    if init_head == "match":
        carried = carry_class_rows(old_weight, old_bias, base.classes, _main_head(model), classes)
    if dropout is not None:
        for m in model.modules():
            if isinstance(m, nn.Dropout):
                m.p = dropout
    meta = ModelMeta(arch=base.arch, num_classes=len(classes) + 1, classes=[BACKGROUND, *classes],
                     width=base.width, input_size=base.input_size, mean=base.mean, std=base.std,
                     extra={"task": "region_classifier", "init": str(init_run),
                            "head_rows_carried": len(carried)})
    return model, meta


class _TrainImages(torch.utils.data.Dataset):
    """Item i -> (i, decoded image uint8 [H, W, 3], its LabelledRegions); run in loader workers,
    so that neither images nor proposals of the whole data set are ever held in memory."""

    def __init__(self, records: list[ImageRecord], cache_root: Path, ft: FinetuneConfig):
        self.records, self.cache_root, self.ft = records, cache_root, ft

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int):
        rec = self.records[i]
        regions = label_image(rec, ProposalCache(self.cache_root), self.ft)
        return i, torch.from_numpy(load_image(rec.path)), regions


def make_loader(data: _TrainImages, dist: DistInfo, workers: int) -> torch.utils.data.DataLoader:
    """The fine-tuning loader of a whole run: persistent workers, forked now (before any model
    is built: `backbone.loaders`). Set its epoch with `loader.batch_sampler.set_epoch(seed, epoch)`;
    per step it yields this process's share of the step's images: [(index, image, regions), ...]."""
    steps = EpochSteps(len(data), data.ft.images_per_batch, dist.rank, dist.world_size)
    loader = torch.utils.data.DataLoader(data, batch_sampler=steps, num_workers=workers, collate_fn=list,
                                         persistent_workers=workers > 0,
                                         worker_init_fn=worker_init if workers else None,
                                         generator=torch.Generator().manual_seed(data.ft.seed))
    return start_workers(loader)


def make_crops(images: dict[int, Tensor], samples: list[RegionSample], crop_size: int,
               context_pad: int) -> tuple[Tensor, Tensor]:
    """Warped, mirrored crops of the sampled regions: (Tensor[R, 3, S, S], labels Tensor[R]).

    images: index -> normalised Tensor[3, H, W] on the training device.
    """
    any_image = next(iter(images.values()))
    crops = [warp_regions(images[s.image], s.boxes, crop_size, context_pad) for s in samples]
    x = torch.cat(crops) if crops else warp_regions(any_image, torch.zeros(0, 4), crop_size, context_pad)
    if not samples:  # no labelled region in this process's images: an empty batch keeps DDP in step
        return x, torch.zeros(0, dtype=torch.int64, device=x.device)
    flip = torch.cat([s.flip for s in samples]).to(x.device)
    x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    return x, torch.cat([s.labels for s in samples]).to(x.device)


def train_one_epoch(model: nn.Module, optimizer: torch.optim.Optimizer, loader: torch.utils.data.DataLoader,
                    meta: ModelMeta, cfg: DetectorConfig,
                    seed: int, epoch: int, dist: DistInfo, desc: str) -> dict:
    """One pass over the training images of `loader` (`make_loader`); returns mean loss,
    accuracies and regions/s."""
    ft = cfg.finetune
    crop = cfg.regions.crop_size or meta.input_size
    loader.batch_sampler.set_epoch(seed, epoch)
    steps = loader.batch_sampler.steps
    device = dist.device
    amp = device.type == "cuda" and ft.amp
    totals = torch.zeros(5, dtype=torch.float64)  # loss sum, regions, correct, fg regions, fg correct
    model.train()
    start = time.perf_counter()
    bar = tqdm(loader, total=len(steps), desc=desc,
               disable=not dist.is_main, leave=False)
    for step, decoded in enumerate(bar):
        mine = range(dist.rank, len(steps[step]), dist.world_size)  # as EpochSteps shares them
        samples = sample_minibatch({i: r for i, _, r in decoded}, steps[step], ft.batch_regions,
                                   ft.fg_per_batch, ft.mirror, seed, epoch, step, positions=mine)
        images = {i: to_tensor(img.numpy(), meta.mean, meta.std, device) for i, img, _ in decoded}
        x, y = make_crops(images, samples, crop, cfg.regions.context_pad)
        if ft.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        torch.manual_seed(mix_seed(seed, epoch, step, SEED_DROPOUT, dist.rank))  # dropout masks, reproducibly
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            logits = model(x)
        loss_sum = F.cross_entropy(logits.float(), y, reduction="sum")
        check_finite_loss(loss_sum, epoch, step)
        # DDP averages gradients over processes: scale so the update is the mean over the batch.
        loss = loss_sum * (dist.world_size / ft.batch_regions)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            correct, fg = logits.argmax(1) == y, y > 0
            totals += torch.tensor([loss_sum.item(), len(y), correct.sum().item(), fg.sum().item(),
                                    correct[fg].sum().item()], dtype=torch.float64)
        bar.set_postfix(loss=f"{loss_sum.item() / max(len(y), 1):.3f}",
                        lr=f"{optimizer.param_groups[0]['lr']:.2g}")
    bar.close()
    totals = all_reduce_sum(totals.to(device)).cpu()
    seconds = time.perf_counter() - start
    n = max(totals[1].item(), 1.0)
    return {"loss": totals[0].item() / n, "accuracy": totals[2].item() / n,
            "fg_accuracy": totals[4].item() / max(totals[3].item(), 1.0),
            "regions_per_s": totals[1].item() / seconds, "steps": len(steps), "seconds": seconds}


def validate(model: nn.Module, meta: ModelMeta, classes: list[str], cfg: DetectorConfig,
             val_dataset: DetectionDataset, cache: ProposalCache) -> float:
    """VOC 2012 mAP@0.5 of one member (as a one-member Detector) on the validation set."""
    # A copy: the Detector switches its members to eval mode and its own memory layout.
    member = copy.deepcopy(getattr(model, "module", model))
    detector = Detector([(member, meta)], classes, cfg)
    detections = detect_dataset(detector, val_dataset, proposals_cache=cache, progress=False)
    return float(evaluate_map(val_dataset, detections, "voc12")["mAP"])


def _lr_at(ft: FinetuneConfig, epoch: int) -> float:
    """The rate of an epoch. step: lr * gamma ** (epoch // lr_step_epochs), constant when
    lr_step_epochs is 0; cosine: lr * (1 + cos(pi * epoch / epochs)) / 2."""
    if ft.lr_schedule == "cosine":
        return cosine_rate(ft.lr, epoch / max(ft.epochs, 1))
    return ft.lr * (ft.lr_gamma ** (epoch // ft.lr_step_epochs) if ft.lr_step_epochs > 0 else 1.0)


def check_finetune_choices(ft: FinetuneConfig) -> None:
    """InputError on an optimizer or schedule name that train-classifier does not know either,
    or an init_head other than match / fresh."""
    if ft.init_head not in INIT_HEADS:
        raise InputError(None, f"finetune.init_head must be one of {', '.join(INIT_HEADS)}, got '{ft.init_head}'")
    if ft.optimizer not in OPTIMIZERS:
        raise InputError(None, f"finetune.optimizer must be one of {', '.join(OPTIMIZERS)}, got '{ft.optimizer}'")
    if ft.freeze and ft.freeze not in TRUNK_BLOCKS:
        raise InputError(None, f"finetune.freeze must be empty or one of {', '.join(TRUNK_BLOCKS)}, got '{ft.freeze}'")
    if ft.lr_schedule not in LR_SCHEDULES:
        raise InputError(None, f"finetune.lr_schedule must be one of {', '.join(LR_SCHEDULES)}, "
                               f"got '{ft.lr_schedule}'")


def make_optimizer(model: nn.Module, ft: FinetuneConfig) -> torch.optim.Optimizer:
    """SGD with momentum (R-CNN's) or AdamW, as `ft.optimizer` says; InputError on other names."""
    check_finetune_choices(ft)
    if ft.optimizer == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=ft.lr, betas=(ft.momentum, 0.999),
                                 weight_decay=ft.weight_decay)
    return torch.optim.SGD(model.parameters(), lr=ft.lr, momentum=ft.momentum, weight_decay=ft.weight_decay)


def train_member(index: int, init_run: str | Path, classes: list[str], loader: torch.utils.data.DataLoader,
                 cfg: DetectorConfig, out_dir: Path,
                 val: tuple[DetectionDataset, ProposalCache] | None, resume: bool,
                 dist: DistInfo) -> tuple[nn.Module, ModelMeta]:
    """Fine-tune member `index` for cfg.finetune.epochs, checkpointing each epoch."""
    ft = cfg.finetune
    seed = ft.seed + index
    model, meta = init_member(init_run, classes, seed, ft.dropout, ft.init_head)
    if ft.freeze:
        if not hasattr(model, "freeze_through"):
            raise InputError(init_run, f"finetune.freeze needs a googlenet classifier, not {meta.arch}")
        meta.extra["frozen"] = model.freeze_through(ft.freeze)  # SGD and AdamW skip their gradless weights
    model = model.to(dist.device)
    if ft.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(model, ft)
    ckpt_path = out_dir / "train" / f"member_{index}.pt"
    first_epoch = 0
    if resume and ckpt_path.is_file():
        state = load_checkpoint(ckpt_path, map_location=dist.device)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        first_epoch = int(state["epoch"])
    net = model
    if dist.world_size > 1:
        ids = [dist.device.index] if dist.device.type == "cuda" else None
        net = nn.parallel.DistributedDataParallel(model, device_ids=ids)
    for epoch in range(first_epoch, ft.epochs):
        for group in optimizer.param_groups:
            group["lr"] = _lr_at(ft, epoch)
        desc = f"member {index + 1}/{ft.members} epoch {epoch + 1}/{ft.epochs}"
        record = train_one_epoch(net, optimizer, loader, meta, cfg, seed, epoch, dist, desc)
        record = {"member": index, "epoch": epoch + 1, "lr": optimizer.param_groups[0]["lr"], **record}
        if dist.is_main:
            if val is not None and ((epoch + 1) % ft.val_every == 0 or epoch + 1 == ft.epochs):
                record["val_mAP"] = validate(model, meta, classes, cfg, *val)
            save_checkpoint(ckpt_path, {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                                        "epoch": epoch + 1, "member": index,
                                        "finetune": config_to_dict(ft)})
            append_jsonl(out_dir / "train" / LOG_FILE, record)
            tqdm.write(_summary(record))
        barrier()
    return model.eval(), meta


def _summary(r: dict) -> str:
    text = (f"member {r['member']} epoch {r['epoch']}: loss {r['loss']:.4f} acc {r['accuracy']:.3f} "
            f"fg acc {r['fg_accuracy']:.3f} ({r['regions_per_s']:.0f} regions/s)")
    return text + (f" val mAP {r['val_mAP']:.4f}" if "val_mAP" in r else "")


def _check_inputs(cfg: DetectorConfig, out_dir: Path, resume: bool, n_images: int, dist: DistInfo,
                  dataset: DetectionDataset) -> None:
    ft = cfg.finetune
    if not resume and (out_dir / "train").is_dir() and any((out_dir / "train").glob("member_*.pt")):
        raise InputError(out_dir, "already holds a detector training run; pass --resume to continue "
                                  "it or choose another --out")
    if (ft.fg_per_batch > ft.batch_regions or ft.batch_regions < 1 or ft.members < 1 or ft.epochs < 1
            or ft.val_every < 1):
        raise InputError(None, "finetune: need 1 <= fg_per_batch <= batch_regions, members >= 1, epochs >= 1, "
                               "val_every >= 1")
    check_finetune_choices(ft)  # before any work
    if ft.images_per_batch % dist.world_size:
        raise InputError(None, f"finetune.images_per_batch ({ft.images_per_batch}) must be a multiple "
                               f"of the number of processes ({dist.world_size})")
    if n_images < ft.images_per_batch:
        raise InputError(dataset.root, f"only {n_images} training images have cached proposals; "
                                       f"need at least images_per_batch = {ft.images_per_batch}")


def train_detector(cfg: DetectorConfig, dataset: DetectionDataset,
                   val_dataset: DetectionDataset | None, proposals_cache_dir: str | Path,
                   init_run: str | Path | Sequence[str | Path], out_dir: str | Path,
                   members: int | None = None, resume: bool = False, device: str = "auto") -> Path:
    """Fine-tune an ensemble of region classifiers and save the detector run in `out_dir`.

    Args:
        cfg: the detector config (its finetune section drives training; the rest is saved
            with the run). The proposals section is taken from the cache when it has one, so
            that the detector proposes at test time as its members were trained.
        dataset, val_dataset: training images (and optional validation images: mAP per epoch).
        proposals_cache_dir: a cache of `detect proposals` covering the training (and
            validation) images; images without an entry are skipped and listed.
        init_run: a classifier run of `detect train-classifier` (either architecture), or a
            sequence of them: member i starts from init_run[i % len(init_run)] (members of
            different classifiers make errors less alike, so their mean gains more).
        members: ensemble size (default cfg.finetune.members).
        resume: continue from the checkpoints in `out_dir`.
    Returns the run folder (load it with `detect.Detector.load`).
    """
    if cfg.finetune.threads > 0:
        torch.set_num_threads(cfg.finetune.threads)
    dist = init_distributed(device)
    try:
        return _train_detector(cfg, dataset, val_dataset, proposals_cache_dir, init_run, Path(out_dir),
                               members, resume, dist)
    finally:
        cleanup()


def _train_detector(cfg: DetectorConfig, dataset: DetectionDataset, val_dataset: DetectionDataset | None,
                    proposals_cache_dir: str | Path, init_run: str | Path | Sequence[str | Path],
                    out_dir: Path, members: int | None, resume: bool, dist: DistInfo) -> Path:
    if members is not None:
        cfg = replace(cfg, finetune=replace(cfg.finetune, members=members))
    cache = ProposalCache(proposals_cache_dir)
    if not cache.entries.is_dir():
        raise InputError(proposals_cache_dir, "not a proposal cache (no boxes/ folder); "
                                              "make one with `detect proposals`")
    cfg = replace(cfg, proposals=cache.config() or cfg.proposals)
    kept, skipped = usable_images(dataset, cache)
    _check_inputs(cfg, out_dir, resume, len(kept), dist, dataset)
    if skipped and dist.is_main:
        tqdm.write(f"skipped {len(skipped)} images without cached proposals: "
                   f"{', '.join(skipped[:10])}{' ...' if len(skipped) > 10 else ''}")
    # Workers forked once, before any member is built (backbone.loaders says why).
    loader = make_loader(_TrainImages([dataset.images[i] for i in kept], cache.root, cfg.finetune),
                         dist, cfg.finetune.workers)
    if dist.is_main:
        (out_dir / "train").mkdir(parents=True, exist_ok=True)
        save_config(cfg, out_dir / "train" / "config.yaml")
    val = (val_dataset, cache) if val_dataset is not None else None
    inits = [init_run] if isinstance(init_run, (str, Path)) else list(init_run)
    if not inits:
        raise InputError(None, "train-detector needs at least one classifier run to start from (--init)")
    trained = [train_member(m, inits[m % len(inits)], dataset.classes, loader, cfg, out_dir, val, resume, dist)
               for m in range(cfg.finetune.members)]
    if dist.is_main:
        multibox = cfg.proposals.multibox.model if cfg.proposals.multibox.enabled else None
        save_detector_run(out_dir, trained, cfg, dataset.classes, multibox_dir=multibox)
    barrier()
    return out_dir
