"""What must hold on a GPU, each check a function of the device.

Every test runs twice: on the CPU in the normal suite (cheap: it proves the check itself can
fail) and on CUDA, marked `cuda` and skipped where torch sees no GPU. `tools/bench/gpu_check.sh`
runs them on a GPU machine (`python -m pytest -m cuda tests/test_cuda.py`). Covered: a training
step under autocast in each trainer (classifier, MultiBox, R-CNN and shared-mode region
classifiers) with the trainer's own host reads counted, two steps of each training command, the
warp and NMS against hand-computed values, and `Detector.score_regions` against the CPU.

Shapes: B images, R regions, K foreground classes (K+1 outputs, 0 = background).
"""
from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from torchvision.ops import batched_nms

from backbone.config import load_config, save_config
from backbone.distributed import DistInfo
from backbone.engine import Schedule, TrainState, make_optimizer
from backbone.models import ModelMeta, build_model
from cli_helpers import run
from detect.config import DetectorConfig
from detect.data import load_dataset
from detect.detector import Detector, select_detections
from detect.regions import dilate_boxes, scaled_context_pad, warp_regions
from device_checks import (CLASSES, amp_dtype, changed, conv_dtypes, device_reads, extra_step_syncs,
                           make_class_folders, make_init_run, make_voc, snapshot)

GPU = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU (torch.cuda.is_available() is False)")
DEVICES = ["cpu", pytest.param("cuda", marks=[pytest.mark.cuda, GPU])]


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny steps: one thread (tests/conftest.py)


@pytest.fixture(autouse=True)
def quiet_progress(monkeypatch):
    """The progress bar reads the device's sums when it is due: never, during these short steps."""
    monkeypatch.setattr("backbone.engine.PROGRESS_SECONDS", 1e9)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("cuda_data")
    return {"classes": make_class_folders(root / "classes"), "voc": make_voc(root / "voc"),
            "init": make_init_run(root / "init")}


# ----------------------------------------------------------------------------- one step per trainer

@pytest.mark.parametrize("device", DEVICES)
def test_classifier_step_under_autocast(device, data):
    from backbone.train import TrainConfig, build_state, train_one_epoch

    dev = torch.device(device)
    cfg = TrainConfig(epochs=1, lr=0.01, ema_decay=0.9, amp=True, channels_last=True)
    torch.manual_seed(0)
    model = build_model("googlenet", 3, width=0.125, aux_logits=True).to(dev).to(memory_format=torch.channels_last)
    state = build_state(model, cfg, dev)
    assert state.scaler.is_enabled() == (device == "cuda")  # float16 needs its loss scaled
    if device == "cuda":  # from 2^16 the first steps may overflow and be skipped, as they should: none left to check
        state.scaler = torch.amp.GradScaler("cuda", init_scale=256.0)
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randn(4, 3, 32, 32, generator=g), torch.tensor([0, 1, 2, 1])) for _ in range(2)]
    before = snapshot(model)
    with conv_dtypes(model) as dtypes, device_reads(device, ("backbone/train.py", "backbone/engine.py")) as reads:
        loss = train_one_epoch(model, state, batches, Schedule(0.01, 1, 2), cfg, 0, dev, show_progress=False)
    assert dtypes == {amp_dtype(device, torch.float16)}
    assert np.isfinite(loss) and changed(before, model) and np.isfinite(state.scaler.get_scale())
    assert reads == ["tolist"]  # once, at the end of the epoch: never per batch

    def run(steps: int) -> None:
        train_one_epoch(model, state, batches[:steps], Schedule(0.01, 1, steps), cfg, 0, dev, show_progress=False)
    # float16 loss scaling reads its inf check every step (torch's GradScaler), not the trainer's code
    assert extra_step_syncs(device, run, ("grad_scaler.py",)) == []


@pytest.mark.parametrize("device", DEVICES)
def test_multibox_step_under_autocast(device):
    from proposals.multibox import MultiBoxMeta, build_multibox_net
    from proposals.multibox_train import MultiBoxTrainConfig, train_one_epoch

    dev = torch.device(device)
    torch.manual_seed(0)
    priors = torch.tensor([[0.1, 0.1, 0.5, 0.5], [0.5, 0.5, 0.9, 0.9], [0.2, 0.4, 0.6, 0.8]])
    meta = MultiBoxMeta("googlenet", 0.125, 64, 3, 2, 32, priors.tolist(), torch.full((3, 4), 0.1).tolist())
    net = build_multibox_net(meta).to(dev)
    state = TrainState(net, make_optimizer(net, "adamw", 1e-3, 0.9, 1e-4))
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randint(0, 256, (2, 3, 64, 64), generator=g, dtype=torch.uint8),
                [torch.tensor([[0.1, 0.2, 0.4, 0.6]]), torch.tensor([[0.5, 0.5, 0.8, 0.9], [0.0, 0.0, 0.3, 0.3]])])
               for _ in range(2)]
    before = snapshot(net)
    callers = ("proposals/multibox_train.py", "backbone/engine.py")
    # The trainer has no autocast of its own: its step must still run under one (bfloat16).
    with torch.autocast(dev.type, dtype=torch.bfloat16), conv_dtypes(net) as dtypes, \
            device_reads(device, callers) as reads:
        record = train_one_epoch(net, state, batches, Schedule(1e-3, 1, 2), meta,
                                 MultiBoxTrainConfig(epochs=1, hflip=False), 0, 0, False)
    assert dtypes == {torch.bfloat16}
    assert np.isfinite(record["loss"]) and record["images"] == 4 and changed(before, net)
    # One read a step: the finite check before the matching, which takes every image's costs to
    # the host (scipy's Hungarian) and so waits for the device anyway; one at the end.
    assert reads == ["__float__", "__float__", "tolist"]


def region_setup(device: str, data: dict, *overrides: str):
    from detect.finetune import TrainImages, make_loader, member_network, make_schedule

    cfg = load_config(DetectorConfig, None, ["finetune.workers=0", "finetune.batch_regions=16",
                                             "finetune.fg_per_batch=4", "finetune.images_per_batch=2",
                                             "finetune.epochs=1", "finetune.bg_iou_low=0.0", *overrides])
    dist = DistInfo(0, 1, 0, torch.device(device))
    dataset = load_dataset(data["voc"], "train")

    def loader(steps: int):  # 2 images a step
        return make_loader(TrainImages(dataset.images[:2 * steps], data["voc"] / "cache", cfg.finetune), dist, 0)
    model, meta = member_network(data["init"], dataset.classes, cfg.finetune, 0, dist.device)
    state = TrainState(model, make_optimizer(model, "sgd", 0.01, 0.9, 5e-4))
    return cfg, dist, loader, model, meta, state, make_schedule(cfg.finetune, 2)


@pytest.mark.parametrize("device", DEVICES)
def test_region_finetune_step_under_autocast(device, data):
    from detect.finetune import train_one_epoch

    cfg, dist, loader, model, meta, state, schedule = region_setup(device, data)
    before = snapshot(model)
    with conv_dtypes(model) as dtypes, device_reads(device, ("detect/finetune.py", "backbone/engine.py")) as reads:
        record = train_one_epoch(model, state, loader(2), schedule, meta, cfg, 0, 0, dist, "test")
    assert dtypes == {amp_dtype(device, torch.bfloat16)}
    assert record["steps"] == 2 and np.isfinite(record["loss"]) and changed(before, model)
    assert reads == ["tolist"]
    assert extra_step_syncs(device, lambda n: train_one_epoch(model, state, loader(n), schedule, meta, cfg, 0, 0, dist,
                                                              "test")) == []


@pytest.mark.parametrize("device", DEVICES)
def test_shared_finetune_step_under_autocast(device, data):
    from detect.shared_finetune import SharedNet, train_one_epoch

    cfg, dist, loader, model, meta, state, schedule = region_setup(device, data, "mode=shared", "shared.short_side=0")
    net = SharedNet(model, meta.input_size, cfg.shared.sampling_ratio, cfg.finetune.channels_last)
    before = snapshot(model)
    callers = ("detect/shared_mode.py", "backbone/engine.py")
    with conv_dtypes(model) as dtypes, device_reads(device, callers) as reads:
        record = train_one_epoch(net, state, loader(2), schedule, meta, cfg, 0, 0, dist, "test")
    assert dtypes == {amp_dtype(device, torch.bfloat16)}
    assert record["steps"] == 2 and np.isfinite(record["loss"]) and changed(before, model)
    assert reads == ["tolist"]
    assert extra_step_syncs(device, lambda n: train_one_epoch(net, state, loader(n), schedule, meta, cfg, 0, 0, dist,
                                                              "test")) == []


# ----------------------------------------------------------------------------- two steps of each command

@pytest.mark.parametrize("device", DEVICES)
def test_train_classifier_command_two_steps(device, data, tmp_path, capsys):
    out = tmp_path / "cls"
    from backbone.train import ClassifierConfig

    save_config(ClassifierConfig(), tmp_path / "classifier.yaml")
    code, _, err = run(capsys, "train-classifier", "--data", str(data["classes"]), "--config",
                       str(tmp_path / "classifier.yaml"), "--out", str(out), "--device", device, "--batch-size", "6", "--workers", "0",
                       "train.epochs=1", "model.width=0.125", "model.input_size=32", "train.eval_batch_size=6")
    assert code == 0, err
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 1 and '"epoch": 1' in lines[0] and (out / "model.safetensors").is_file()


@pytest.mark.parametrize("device", DEVICES)
def test_train_multibox_command_two_steps(device, data, tmp_path, capsys):
    from proposals.multibox_train import MultiBoxConfig, MultiBoxModelConfig, MultiBoxTrainConfig

    config = tmp_path / "multibox.yaml"
    save_config(MultiBoxConfig(MultiBoxModelConfig(width=0.125, input_size=64, num_priors=6, head_pool=2,
                                                   head_hidden=32),
                               MultiBoxTrainConfig(epochs=1, batch_size=2, workers=0)), config)
    out = tmp_path / "multibox"
    code, _, err = run(capsys, "train-multibox", "--data", str(data["voc"]), "--split", "train", "--config",
                       str(config), "--out", str(out), "--device", device)
    assert code == 0, err
    record = (out / "metrics.jsonl").read_text().splitlines()
    assert len(record) == 1 and '"steps": 2' in record[0] and (out / "model.safetensors").is_file()


@pytest.mark.parametrize("device", DEVICES)
def test_train_detector_command_two_steps(device, data, tmp_path, capsys):
    out = tmp_path / "detector"
    code, _, err = run(capsys, "train-detector", "--data", str(data["voc"]), "--split", "train", "--proposals",
                       str(data["voc"] / "cache"), "--init", str(data["init"]), "--out", str(out), "--members", "1",
                       "--device", device, "finetune.workers=0", "finetune.batch_regions=16",
                       "finetune.fg_per_batch=4", "finetune.images_per_batch=2", "finetune.epochs=1")
    assert code == 0, err
    record = (out / "train" / "metrics.jsonl").read_text().splitlines()
    assert len(record) == 1 and '"steps": 2' in record[0]
    assert Detector.load(out, device=device).score_regions(
        data["voc"] / "JPEGImages" / "img0.png", [[0.0, 0.0, 40.0, 40.0]]).shape == (1, len(CLASSES) + 1)


# ----------------------------------------------------------------------------- warp, NMS, scoring

@pytest.mark.parametrize("device", DEVICES)
def test_warp_of_a_ramp_by_hand(device):
    # Image value = column index j: a bilinear sample at x (pixel j covers [j, j + 1)) reads x - 0.5.
    h, w, size, pad = 40, 60, 8, 16
    image = torch.arange(w, dtype=torch.float32).expand(3, h, w).to(device)
    box = torch.tensor([[10.0, 8.0, 30.0, 24.0]])
    crops = warp_regions(image, box, size, pad)
    assert crops.device.type == device and crops.shape == (1, 3, size, size)
    x1, _, x2, _ = dilate_boxes(box, size, scaled_context_pad(pad, size))[0].tolist()
    assert (x1, x2) == pytest.approx((20 - 40 / 3, 20 + 40 / 3))  # 1 px of 8 each side: 8 / 6 as wide
    expected = torch.tensor([x1 + (c + 0.5) * (x2 - x1) / size - 0.5 for c in range(size)])
    torch.testing.assert_close(crops[0, 1].cpu(), expected.expand(size, size), atol=1e-4, rtol=0)
    # Outside the image the warp reads the mean (0): columns sampled at x = -18.5, -15.5, .., -0.5
    # read 0 (pixel -1 is the zero padding), the last one at x = 2.5 reads 2.
    edge = warp_regions(image, torch.tensor([[-20.0, 8.0, 4.0, 24.0]]), size, 0)[0, 0, 0].cpu()
    assert edge.tolist() == pytest.approx([0.0] * 7 + [2.0], abs=1e-5)


@pytest.mark.parametrize("device", DEVICES)
def test_nms_by_hand(device):
    boxes = torch.tensor([[0.0, 0, 10, 10], [1, 0, 11, 10], [20, 20, 30, 30], [0, 0, 10, 10]], device=device)
    # IoU(box 0, box 1) = 90 / 110 = 0.82: box 1 goes at 0.5 (same class), stays at 0.9.
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6], device=device)
    labels = torch.tensor([1, 1, 1, 2], device=device)
    assert batched_nms(boxes, scores, labels, 0.5).tolist() == [0, 2, 3]
    assert batched_nms(boxes, scores, labels, 0.9).tolist() == [0, 1, 2, 3]
    # select_detections: column k + 1 of the scores is class k; rows below the threshold drop.
    # Class 1: box 0 (0.9) removes box 1 (0.8) and box 3 (0.2, the same box); class 2 keeps box 2
    # (0.65) and box 3 (0.5), apart; box 2's 0.05 for class 1 is under the threshold.
    table = torch.tensor([[0.1, 0.9, 0.0], [0.2, 0.8, 0.0], [0.3, 0.05, 0.65], [0.3, 0.2, 0.5]], device=device)
    dets = select_detections(boxes, table, 0.5, 0.1, 0)
    assert dets["labels"].tolist() == [1, 2, 2] and dets["scores"].tolist() == pytest.approx([0.9, 0.65, 0.5])
    assert dets["boxes"].device.type == device
    assert dets["boxes"].tolist() == [[0, 0, 10, 10], [20, 20, 30, 30], [0, 0, 10, 10]]


def tiny_detector(device: str, precision: str, batch_size: int = 8) -> Detector:
    """Two random width-1/8 members at 32 px, their classifier weights x 100 and x 10: the mean
    softmax is peaked (a random network's outputs are near uniform) and not tied."""
    members = []
    for seed, spread in ((0, 100.0), (1, 10.0)):
        torch.manual_seed(seed)
        model = build_model("googlenet", len(CLASSES) + 1, width=0.125, aux_logits=False, dropout=0.0)
        with torch.no_grad():
            model.fc.weight.mul_(spread)
        members.append((model.to(device), ModelMeta("googlenet", len(CLASSES) + 1, ["__background__", *CLASSES],
                                                    width=0.125, input_size=32)))
    cfg = DetectorConfig()
    cfg.inference.precision, cfg.inference.batch_size = precision, batch_size
    return Detector(members, CLASSES, cfg)


def region_boxes(n: int = 20, size: int = 96) -> torch.Tensor:
    g = torch.Generator().manual_seed(2)
    xy = torch.rand(n, 2, generator=g) * (size - 30)
    return torch.cat([xy, xy + 10 + torch.rand(n, 2, generator=g) * 20], 1)


@pytest.mark.parametrize("device", DEVICES)
def test_score_regions_against_the_cpu(device, data):
    image = data["voc"] / "JPEGImages" / "img0.png"
    boxes = region_boxes()
    reference = tiny_detector("cpu", "float32").score_regions(image, boxes)
    detector = tiny_detector(device, "auto")  # bfloat16 on a GPU (checked against float32 once)
    probs = detector.score_regions(image, boxes)
    assert probs.device.type == "cpu" and probs.shape == reference.shape
    top2 = reference.topk(2, dim=1).values
    clear = top2[:, 0] - top2[:, 1] > 1e-3  # rows where the top class is not a tie
    assert top2[:, 0].mean() > 0.5 and clear.sum() >= len(boxes) // 2
    assert torch.equal(probs.argmax(1)[clear], reference.argmax(1)[clear])
    assert (probs - reference).abs().max() <= 0.02
    torch.testing.assert_close(probs.sum(1), torch.ones(len(boxes)))


@pytest.mark.parametrize("device", DEVICES)
def test_scoring_waits_for_the_device_once_per_image(device, data, monkeypatch):
    image = data["voc"] / "JPEGImages" / "img0.png"
    detector, boxes = tiny_detector(device, "float32", batch_size=4), region_boxes()  # 5 batches, 2 members
    copies, waits = [], []
    original = torch.Tensor.cpu

    def cpu(self, *args, **kwargs):
        if sys._getframe(1).f_code.co_filename.replace("\\", "/").endswith("detect/detector.py"):
            copies.append(self.device.type)
        return original(self, *args, **kwargs)
    monkeypatch.setattr(torch.Tensor, "cpu", cpu)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a, **k: waits.append(1))
    detector.score_regions(image, boxes)
    assert copies.count(device) <= 2 and not waits  # the boxes given, and the scores once
    assert extra_step_syncs(device, lambda batches: detector.score_regions(image, boxes[:4 * batches])) == []
    detector.timed = True  # timing asked for: each stage waits for the device so that it is honest
    detector.score_regions(image, boxes)
    assert len(waits) == (2 * 5 + 5 if device == "cuda" else 0)  # each member's network, each batch's crops
