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

The optimizer, schedule, checkpoints, processes and metrics are `backbone.engine`'s, shared with
the other trainers; the loss, the region batches and the mAP validation are this module's.
All randomness derives from (seed, epoch, step), so a resumed run ends with exactly the weights
of an uninterrupted one. Under torchrun each process takes an equal share of the images of
every mini-batch; gradients are averaged by DistributedDataParallel so that the update equals
the single-process one on the whole mini-batch.
"""
from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from backbone.config import config_to_dict, save_config
from backbone.distributed import DistInfo, barrier
from backbone.engine import (Meter, Schedule, TrainState, check_recipe, distributed, load_state, log_epoch,
                             make_optimizer, save_state, set_lr, trim_log, wrap_ddp)
from backbone.errors import InputError
from backbone.googlenet import TRUNK_BLOCKS
from backbone.io import load_image
from backbone.loaders import start_workers, worker_init
from backbone.models import ModelMeta, load_classifier
from backbone.progress import write
from backbone.warm_start import carry_rows, class_key, main_head, match_rows  # class_key: also read from here
from detect.config import MODES, DetectorConfig, FinetuneConfig
from detect.data import DetectionDataset, ImageRecord
from detect.records import skipped_line, usable_images
from detect.dataset_detections import detect_dataset
from detect.detector import BACKGROUND, Detector, save_detector_run
from detect.metrics import evaluate_map
from detect.regions import to_tensor, warp_regions
from detect.sampling import (SEED_DROPOUT, SEED_HEAD, EpochSteps, LabelledRegions, RegionSample, epoch_batches,
                             label_regions, mix_seed, sample_minibatch)
from proposals import ProposalCache

LOG_FILE = "metrics.jsonl"


def label_image(rec: ImageRecord, cache: ProposalCache, ft: FinetuneConfig) -> LabelledRegions:
    """The ground truth and cached proposals of one image, labelled by R-CNN's IoU rule."""
    entry = cache.get(rec.key)
    if entry is None:
        raise InputError(cache.path(rec.key), "proposals of this image disappeared from the cache")
    return label_regions(entry[0], rec.boxes, rec.labels, ft.fg_iou, ft.bg_iou_high, ft.bg_iou_low)


INIT_HEADS = ("match", "fresh")


def carry_class_rows(old_weight: Tensor, old_bias: Tensor, old_classes: list[str], head: nn.Linear,
                     classes: list[str]) -> list[str]:
    """Copy into `head` (row 0: background, row j + 1: classes[j]) the classifier's rows of the
    classes it knows by `class_key` (a classifier class named `__background__` fills row 0); a
    key two classifier classes share is left alone (`backbone.warm_start.match_rows`, which
    train-classifier --init uses too). Returns the rows carried, by name."""
    names = [BACKGROUND, *classes]
    pairs = match_rows(old_classes, names)
    carry_rows(old_weight, old_bias, head, pairs)
    return [names[j] for j, _ in pairs]


def init_member(init_run: str | Path, classes: list[str], seed: int,
                dropout: float | None, init_head: str = "match") -> tuple[nn.Module, ModelMeta]:
    """A classifier run with a new (K+1)-way head, on the CPU: the starting point of a member.

    init_head "match": the rows of detection classes the classifier already knows (same
    `class_key`; ILSVRC's 200 DET classes match a 1000-class model by wnid) start from the
    classifier's own rows, and the background row and unknown classes are new; "fresh": every
    row new (R-CNN's way). meta.extra["head_rows_carried"] counts the rows carried.
    """
    model, base = load_classifier(init_run, "cpu")
    old = main_head(model)
    old_weight, old_bias = old.weight.detach().clone(), old.bias.detach().clone()
    torch.manual_seed(mix_seed(seed, 0, 0, SEED_HEAD))  # the new head differs between members
    model.reset_classifier(len(classes) + 1)
    carried = []
    if init_head == "match":
        carried = carry_class_rows(old_weight, old_bias, base.classes, main_head(model), classes)
    if dropout is not None:
        for m in model.modules():
            if isinstance(m, nn.Dropout):
                m.p = dropout
    meta = ModelMeta(arch=base.arch, num_classes=len(classes) + 1, classes=[BACKGROUND, *classes],
                     width=base.width, input_size=base.input_size, mean=base.mean, std=base.std,
                     extra={"task": "region_classifier", "init": str(init_run),
                            "head_rows_carried": len(carried)})
    return model, meta


class TrainImages(torch.utils.data.Dataset):
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


def make_loader(data: TrainImages, dist: DistInfo, workers: int) -> torch.utils.data.DataLoader:
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
    flip = torch.cat([s.flip for s in samples]).to(x.device, non_blocking=True)
    x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    return x, torch.cat([s.labels for s in samples]).to(x.device, non_blocking=True)


def step_batch(decoded: list, group: list[int], cfg: DetectorConfig, meta: ModelMeta, seed: int, epoch: int,
               step: int, dist: DistInfo) -> tuple[Tensor, Tensor]:
    """This process's crops (Tensor[R, 3, S, S]) and labels (Tensor[R]) of one step: R-CNN's draw of
    regions over the step's images `group` (every process's), made from its own `decoded` ones."""
    ft = cfg.finetune
    mine = range(dist.rank, len(group), dist.world_size)  # as EpochSteps shares them
    samples = sample_minibatch({i: r for i, _, r in decoded}, group, ft.batch_regions, ft.fg_per_batch,
                               ft.mirror, seed, epoch, step, positions=mine)
    images = {i: to_tensor(img.numpy(), meta.mean, meta.std, dist.device) for i, img, _ in decoded}
    x, y = make_crops(images, samples, cfg.regions.crop_size or meta.input_size, cfg.regions.context_pad)
    return (x.contiguous(memory_format=torch.channels_last) if ft.channels_last else x), y


def train_one_epoch(net: nn.Module, state: TrainState, loader: torch.utils.data.DataLoader, schedule: Schedule,
                    meta: ModelMeta, cfg: DetectorConfig, seed: int, epoch: int, dist: DistInfo, desc: str) -> dict:
    """One pass with `net` (state.model or its DDP wrapper) over the training images of `loader`
    (`make_loader`); returns mean loss, accuracies and regions/s. The sums stay on the device
    until the end of the epoch."""
    ft = cfg.finetune
    loader.batch_sampler.set_epoch(seed, epoch)
    steps = loader.batch_sampler.steps
    amp = dist.device.type == "cuda" and ft.amp
    net.train()
    with Meter(dist.device, 4, len(steps), desc, dist.is_main) as meter:  # loss, correct, fg, fg correct
        for step, decoded in enumerate(loader):
            lr = schedule.rate(epoch * len(steps) + step)
            set_lr(state.optimizer, lr)
            x, y = step_batch(decoded, steps[step], cfg, meta, seed, epoch, step, dist)
            torch.manual_seed(mix_seed(seed, epoch, step, SEED_DROPOUT, dist.rank))  # dropout masks, reproducibly
            with torch.autocast(dist.device.type, dtype=torch.bfloat16, enabled=amp):
                logits = net(x)
            region_step(state, meter, logits, y, lr, ft.batch_regions, dist)
    return epoch_record(meter, len(steps))


def region_step(state: TrainState, meter: Meter, logits: Tensor, y: Tensor, lr: float, batch_regions: int,
                dist: DistInfo) -> None:
    """One update on a batch's region logits (Tensor[R, K+1]) and labels (Tensor[R]); its loss and
    counts stay on the device in `meter`."""
    loss_sum = F.cross_entropy(logits.float(), y, reduction="sum")
    # DDP averages gradients over processes: scale so the update is the mean over the whole batch.
    state.step(loss_sum * (dist.world_size / batch_regions))
    correct, fg = logits.detach().argmax(1) == y, y > 0
    meter.add(len(y), torch.stack([loss_sum.detach(), correct.sum().float(), fg.sum().float(),
                                   (correct & fg).sum().float()]), lr)


def epoch_record(meter: Meter, steps: int) -> dict:
    """An epoch's loss, accuracies and speed, read from the device once."""
    (loss, correct, fg, fg_correct), regions, seconds = meter.result()
    return {"loss": loss / max(regions, 1), "accuracy": correct / max(regions, 1),
            "fg_accuracy": fg_correct / max(fg, 1.0), "regions_per_s": regions / seconds, "steps": steps,
            "seconds": seconds}


def validate(model: nn.Module, meta: ModelMeta, classes: list[str], cfg: DetectorConfig,
             val_dataset: DetectionDataset, cache: ProposalCache) -> float:
    """VOC 2012 mAP@0.5 of one member (as a one-member Detector) on the validation set."""
    # A copy: the Detector switches its members to eval mode and its own memory layout.
    member = copy.deepcopy(getattr(model, "module", model))
    detector = Detector([(member, meta)], classes, cfg)
    detections = detect_dataset(detector, val_dataset, proposals_cache=cache, progress=False)
    return float(evaluate_map(val_dataset, detections, "voc12")["mAP"])


def make_schedule(ft: FinetuneConfig, steps_per_epoch: int) -> Schedule:
    """step: lr * lr_gamma ** (epoch // lr_step_epochs), constant when lr_step_epochs is 0;
    cosine: a half cosine from lr to 0 over the run, decreasing every step."""
    return Schedule(ft.lr, ft.epochs, steps_per_epoch, ft.lr_schedule, ft.lr_gamma, ft.lr_step_epochs)


def check_finetune_choices(ft: FinetuneConfig) -> None:
    """InputError on an optimizer or schedule name the engine does not know, an init_head other
    than match / fresh, or a freeze block that is not one of the trunk's."""
    if ft.init_head not in INIT_HEADS:
        raise InputError(None, f"finetune.init_head must be one of {', '.join(INIT_HEADS)}, got '{ft.init_head}'")
    if ft.freeze and ft.freeze not in TRUNK_BLOCKS:
        raise InputError(None, f"finetune.freeze must be empty or one of {', '.join(TRUNK_BLOCKS)}, got '{ft.freeze}'")
    check_recipe("finetune", ft.optimizer, ft.lr_schedule)


def member_network(init_run: str | Path, classes: list[str], ft: FinetuneConfig, seed: int,
                   device: torch.device) -> tuple[nn.Module, ModelMeta]:
    """`init_member` with finetune.freeze applied, on `device` in the configured memory layout."""
    model, meta = init_member(init_run, classes, seed, ft.dropout, ft.init_head)
    if ft.freeze:
        if not hasattr(model, "freeze_through"):
            raise InputError(init_run, f"finetune.freeze needs a googlenet classifier, not {meta.arch}")
        meta.extra["frozen"] = model.freeze_through(ft.freeze)  # left out of the optimizer
    model = model.to(device)
    return (model.to(memory_format=torch.channels_last) if ft.channels_last else model), meta


def train_member(index: int, init_run: str | Path, classes: list[str], loader: torch.utils.data.DataLoader,
                 cfg: DetectorConfig, out_dir: Path,
                 val: tuple[DetectionDataset, ProposalCache] | None, resume: bool,
                 dist: DistInfo) -> tuple[nn.Module, ModelMeta]:
    """Fine-tune member `index` for cfg.finetune.epochs, checkpointing each epoch."""
    model, meta = member_network(init_run, classes, cfg.finetune, cfg.finetune.seed + index, dist.device)
    return fit_member(index, model, meta, model, train_one_epoch, classes, loader, cfg, out_dir, val, resume, dist)


def fit_member(index: int, model: nn.Module, meta: ModelMeta, net: nn.Module, one_epoch, classes: list[str],
               loader: torch.utils.data.DataLoader, cfg: DetectorConfig, out_dir: Path,
               val: tuple[DetectionDataset, ProposalCache] | None, resume: bool, dist: DistInfo,
               label: str = "") -> tuple[nn.Module, ModelMeta]:
    """The epochs of one member, for either mode: `net` (the model, or a module around it) is what
    `one_epoch` trains; checkpoints, log and validation are the model's, one each epoch."""
    ft, seed = cfg.finetune, cfg.finetune.seed + index
    state = TrainState(model, make_optimizer(model, ft.optimizer, ft.lr, ft.momentum, ft.weight_decay))
    ckpt_path, log_path = out_dir / "train" / f"member_{index}.pt", out_dir / "train" / LOG_FILE
    if resume and ckpt_path.is_file():
        load_state(ckpt_path, state)
    if dist.is_main:
        trim_log(log_path, state.epoch, member=index)  # lines of epochs that will run again
    net = wrap_ddp(net, dist)
    schedule = make_schedule(ft, len(epoch_batches(len(loader.dataset), ft.images_per_batch, seed, 0)))
    for epoch in range(state.epoch, ft.epochs):
        desc = f"member {index + 1}/{ft.members}{label} epoch {epoch + 1}/{ft.epochs}"
        record = one_epoch(net, state, loader, schedule, meta, cfg, seed, epoch, dist, desc)
        record = {"member": index, "epoch": epoch + 1, "lr": state.optimizer.param_groups[0]["lr"], **record}
        state.epoch = epoch + 1
        if dist.is_main:  # the checkpoint last: a run killed before it redoes this epoch
            if val is not None and ((epoch + 1) % ft.val_every == 0 or epoch + 1 == ft.epochs):
                record["val_mAP"] = validate(model, meta, classes, cfg, *val)
            log_epoch(log_path, record)
            save_state(ckpt_path, state, member=index, finetune=config_to_dict(ft))
        barrier()
    return model.eval(), meta


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
    if cfg.mode not in MODES:
        raise InputError(None, f"mode must be one of {', '.join(MODES)}, got '{cfg.mode}'")
    if ft.images_per_batch % dist.world_size:
        raise InputError(None, f"finetune.images_per_batch ({ft.images_per_batch}) must be a multiple "
                               f"of the number of processes ({dist.world_size})")
    if n_images < ft.images_per_batch:
        raise InputError(dataset.root, f"only {n_images} training images have cached proposals; "
                                       f"need at least images_per_batch = {ft.images_per_batch}")


def train_detector(cfg: DetectorConfig, dataset: DetectionDataset,
                   val_dataset: DetectionDataset | None, proposals_cache_dir: str | Path,
                   init_run: str | Path | Sequence[str | Path], out_dir: str | Path,
                   members: int | None = None, resume: bool = False, device: str = "auto",
                   member_trainer: Callable | None = None) -> Path:
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
        member_trainer: `train_member`'s stand-in (detect.shared_finetune's for mode: shared).
    Returns the run folder (load it with `detect.Detector.load`).
    """
    if cfg.mode == "shared" and member_trainer is None:
        raise InputError(None, "mode: shared trains with detect.shared_finetune.train_detector")
    with distributed(device, cfg.finetune.threads) as dist:
        return _train_detector(cfg, dataset, val_dataset, proposals_cache_dir, init_run, Path(out_dir),
                               members, resume, dist, member_trainer or train_member)


def _train_detector(cfg: DetectorConfig, dataset: DetectionDataset, val_dataset: DetectionDataset | None,
                    proposals_cache_dir: str | Path, init_run: str | Path | Sequence[str | Path],
                    out_dir: Path, members: int | None, resume: bool, dist: DistInfo, train: Callable) -> Path:
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
        write(skipped_line(skipped))
    # Workers forked once, before any member is built (backbone.loaders says why).
    loader = make_loader(TrainImages([dataset.images[i] for i in kept], cache.root, cfg.finetune),
                         dist, cfg.finetune.workers)
    if dist.is_main:
        (out_dir / "train").mkdir(parents=True, exist_ok=True)
        save_config(cfg, out_dir / "train" / "config.yaml")
    val = (val_dataset, cache) if val_dataset is not None else None
    inits = [init_run] if isinstance(init_run, (str, Path)) else list(init_run)
    if not inits:
        raise InputError(None, "train-detector needs at least one classifier run to start from (--init)")
    trained = [train(m, inits[m % len(inits)], dataset.classes, loader, cfg, out_dir, val, resume, dist)
               for m in range(cfg.finetune.members)]
    if dist.is_main:
        multibox = cfg.proposals.multibox.model if cfg.proposals.multibox.enabled else None
        save_detector_run(out_dir, trained, cfg, dataset.classes, multibox_dir=multibox)
        if cfg.box_regression.enabled:  # R-CNN's box regressors (either mode), on the same proposals
            from detect.fit_boxes import fit_run  # here: it imports detect.detector, as this module does

            box = cfg.box_regression
            fitted = fit_run(out_dir, dataset, proposals_cache_dir, box.ridge_lambda, box.min_iou,
                             device=str(dist.device), required=False)
            if fitted is None:
                tqdm.write(f"no box regressors: no proposal has IoU >= {box.min_iou} with a ground-truth box")
    barrier()
    return out_dir
