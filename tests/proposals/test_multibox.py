"""MultiBox: the loss by hand, k-means priors, save/load, predict, training, and the must-hold
comparison with a sliding-window grid of the same number of boxes."""
from __future__ import annotations

import io
import json
import math
import os
import socket
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from PIL import Image

from backbone.checkpoint import load_checkpoint
from backbone.config import load_config
from backbone.errors import InputError
from backbone.models import ModelMeta, build_model, save_classifier
from detect.cli import main
from detect.data import write_voc
from proposals.multibox import (MultiBox, MultiBoxMeta, build_multibox_net, decode, encode,
                                kmeans_priors, match, multibox_loss, save_multibox)
from proposals.multibox_train import (MultiBoxConfig, hflip, recall_at, train_multibox)

CONFIG = Path(__file__).resolve().parent / "multibox_small.yaml"
PRIORS = torch.tensor([[0.0, 0.0, 0.5, 0.5], [0.5, 0.5, 1.0, 1.0]])
STD = torch.full((2, 4), 0.1)
GT = [torch.tensor([[0.1, 0.1, 0.5, 0.5]])]


# ----------------------------------------------------------------------------- loss

def test_loss_two_predictions_one_ground_truth_by_hand():
    # Whitened targets: prior 0 -> (g - p0)/0.1 = [1, 1, 0, 0]; prior 1 -> [-4, -4, -5, -5].
    # With zero offsets: ||l0 - g||^2 / 2 = 1, ||l1 - g||^2 / 2 = 41. Logits z = [0, 1].
    offsets, logits = torch.zeros(1, 2, 4), torch.tensor([[0.0, 1.0]])
    # alpha = 1: costs 1 - 0 = 1 and 41 - 1 = 40, prior 0 is matched.
    loss = multibox_loss(offsets, logits, GT, PRIORS, STD, alpha=1.0)
    conf = math.log(2) + math.log(1 + math.e)  # -log sigmoid(0) - log(1 - sigmoid(1))
    assert loss.match.item() == pytest.approx(1.0)
    assert loss.conf.item() == pytest.approx(conf, rel=1e-6)
    assert loss.total.item() == pytest.approx(1.0 + conf, rel=1e-6)
    # alpha = 0.01: costs 0.01 and 0.41 - 1 = -0.59, the confident prior 1 wins the match.
    loss = multibox_loss(offsets, logits, GT, PRIORS, STD, alpha=0.01)
    conf = math.log(1 + math.exp(-1)) + math.log(2)  # -log sigmoid(1) - log(1 - sigmoid(0))
    assert loss.match.item() == pytest.approx(41.0)
    assert loss.total.item() == pytest.approx(0.01 * 41 + conf, rel=1e-6)


def test_matching_minimises_the_loss_over_every_assignment():
    gen = torch.Generator().manual_seed(3)
    offsets, logits = torch.randn(1, 4, 4, generator=gen), torch.randn(1, 4, generator=gen)
    priors = torch.rand(4, 2, generator=gen).repeat(1, 2) + torch.tensor([0, 0, 0.2, 0.2])
    gt = [priors[[2, 0]] + 0.03]
    best = multibox_loss(offsets, logits, gt, priors, STD.repeat(2, 1), 0.5).total.item()
    # Brute force: the loss of every one-to-one assignment of the 2 boxes to the 4 predictions.
    losses = []
    for i in range(4):
        for j in range(4):
            if i != j:
                x = torch.zeros(4)
                x[[i, j]] = 1
                target = (gt[0] - priors[[i, j]]) / 0.1
                f_match = 0.5 * (offsets[0, [i, j]] - target).pow(2).sum()
                f_conf = -(x * torch.log(torch.sigmoid(logits[0])) + (1 - x) * torch.log(1 - torch.sigmoid(logits[0]))).sum()
                losses.append((0.5 * f_match + f_conf).item())
    assert best == pytest.approx(min(losses), rel=1e-5)


def test_loss_is_finite_for_extreme_logits_and_images_without_boxes():
    logits = torch.tensor([[-200.0, 200.0], [300.0, -300.0]], requires_grad=True)
    offsets = torch.zeros(2, 2, 4, requires_grad=True)
    loss = multibox_loss(offsets, logits, [GT[0], torch.zeros(0, 4)], PRIORS, STD, 0.3)
    loss.total.backward()
    assert torch.isfinite(loss.total) and torch.isfinite(logits.grad).all()
    # Image 0 matches its confident prediction (cost 0.3 * 41 - 200) and pays ~0; the image
    # without boxes has only negatives, and its confident one costs 300. Mean over images:
    assert loss.conf.item() == pytest.approx(300 / 2, rel=1e-6)
    assert match(offsets, logits, [torch.zeros(0, 4)] * 2, PRIORS, STD, 0.3).eq(-1).all()


def test_encode_decode_round_trip():
    gt = torch.tensor([[0.2, 0.1, 0.6, 0.9]])
    t = encode(gt, PRIORS, STD)[:, 0]  # [K, 4]
    assert torch.allclose(decode(t, PRIORS, STD), gt.expand(2, 4), atol=1e-6)


# ----------------------------------------------------------------------------- priors

def test_kmeans_priors_recover_clusters_and_their_spread():
    rng = np.random.default_rng(0)
    centres = np.array([[0.1, 0.1, 0.3, 0.4], [0.5, 0.2, 0.9, 0.6], [0.2, 0.6, 0.5, 0.95]])
    boxes = np.concatenate([c + rng.normal(0, 0.02, (200, 4)) for c in centres])
    priors, std = kmeans_priors(torch.tensor(boxes), 3, seed=1)
    order = [int(np.argmin(np.abs(priors.numpy() - c).sum(1))) for c in centres]
    assert sorted(order) == [0, 1, 2]
    assert np.allclose(priors.numpy()[order], centres, atol=0.01)
    assert np.allclose(std.numpy(), 0.02, atol=0.005)
    again, _ = kmeans_priors(torch.tensor(boxes), 3, seed=1)
    assert torch.equal(priors, again)
    with pytest.raises(InputError, match="distinct"):
        kmeans_priors(torch.tensor(centres).repeat(5, 1), 4)


def test_hflip_mirrors_images_and_boxes():
    images = torch.arange(2 * 3 * 2 * 4, dtype=torch.uint8).view(2, 3, 2, 4)
    targets = [torch.tensor([[0.1, 0.2, 0.3, 0.4]]), torch.tensor([[0.1, 0.2, 0.3, 0.4]])]
    out, boxes = hflip(images, targets, torch.tensor([True, False]))
    assert torch.equal(out[0], images[0].flip(-1)) and torch.equal(out[1], images[1])
    assert torch.allclose(boxes[0], torch.tensor([[0.7, 0.2, 0.9, 0.4]]))
    assert torch.equal(boxes[1], targets[1])


# ----------------------------------------------------------------------------- saved model

def tiny_meta(priors: torch.Tensor) -> MultiBoxMeta:
    return MultiBoxMeta("googlenet", 0.125, 64, len(priors), 2, 32, priors.tolist(),
                        torch.full((len(priors), 4), 0.05).tolist())


def test_save_load_round_trip_and_predict_contract(tmp_path, one_thread):
    torch.manual_seed(0)
    # One prior sticks out of the image: predictions must come back clipped.
    priors = torch.tensor([[-0.2, -0.1, 0.5, 0.6], [0.3, 0.3, 1.3, 0.9], [0.1, 0.5, 0.4, 0.9],
                           [0.0, 0.0, 1.0, 1.0], [0.6, 0.1, 0.9, 0.3]])
    net = build_multibox_net(tiny_meta(priors))
    torch.nn.init.normal_(net.out.weight, std=0.5)  # offsets and scores that differ per prior
    save_multibox(tmp_path, net, tiny_meta(priors))
    assert json.loads((tmp_path / "multibox.json").read_text())["num_priors"] == 5
    mb = MultiBox.load(tmp_path)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        for a, b in zip(net.eval()(x), mb.net(x)):
            assert torch.equal(a, b)
    image = np.random.default_rng(0).integers(0, 255, (50, 90, 3), dtype=np.uint8)
    boxes, scores = mb.predict(image, top_k=3)
    assert boxes.shape == (3, 4) and scores.shape == (3,) and boxes.dtype == torch.float32
    assert (scores[:-1] >= scores[1:]).all() and ((scores > 0) & (scores < 1)).all()
    all_boxes, all_scores = mb.predict(image, top_k=200)  # more than K: all K come back
    assert len(all_boxes) == 5 and torch.equal(all_boxes[:3], boxes)
    assert (all_boxes[:, [0, 2]] >= 0).all() and (all_boxes[:, [0, 2]] <= 90).all()
    assert (all_boxes[:, [1, 3]] >= 0).all() and (all_boxes[:, [1, 3]] <= 50).all()
    assert (all_boxes[:, 2] >= all_boxes[:, 0]).all() and (all_boxes[:, 3] >= all_boxes[:, 1]).all()
    assert all_boxes[:, 2].max() == 90 and all_boxes[:, 0].min() == 0  # clipped, not dropped
    Image.fromarray(image).save(tmp_path / "x.png")  # a path gives the same answer
    assert torch.equal(mb.predict(tmp_path / "x.png", top_k=3)[0], boxes)
    batch = mb.predict_batch([image, image[:, ::-1].copy()], top_k=2)
    assert len(batch) == 2 and torch.allclose(batch[0][0], boxes[:2], atol=1e-4)  # batched: same up to rounding


def test_load_refuses_mismatched_or_missing_files(tmp_path):
    priors = torch.tensor([[0.1, 0.1, 0.5, 0.5], [0.4, 0.4, 0.9, 0.9]])
    save_multibox(tmp_path, build_multibox_net(tiny_meta(priors)), tiny_meta(priors))
    meta = json.loads((tmp_path / "multibox.json").read_text())
    meta["head_hidden"] = 16
    (tmp_path / "multibox.json").write_text(json.dumps(meta))
    with pytest.raises(InputError, match="model.safetensors"):
        MultiBox.load(tmp_path)
    with pytest.raises(InputError, match="not found"):
        MultiBox.load(tmp_path / "absent")


# ----------------------------------------------------------------------------- training

def objects_image(rng: np.random.Generator, w: int, h: int) -> tuple[np.ndarray, list]:
    """Noise with 1-3 bright rectangles or ellipses of 10-45% of the sides; their boxes."""
    image = np.clip(rng.normal(90, 35, (h, w, 3)), 0, 255).astype(np.uint8)
    boxes = []
    for _ in range(int(rng.integers(1, 4))):
        bw, bh = int(rng.integers(w * 0.1, w * 0.45)), int(rng.integers(h * 0.1, h * 0.45))
        x1, y1 = int(rng.integers(0, w - bw + 1)), int(rng.integers(0, h - bh + 1))
        colour = tuple(int(c) for c in rng.integers(170, 256, 3))
        if rng.random() < 0.5:
            cv2.rectangle(image, (x1, y1), (x1 + bw - 1, y1 + bh - 1), colour, -1)
        else:
            cv2.ellipse(image, (x1 + bw // 2, y1 + bh // 2), (bw // 2, bh // 2), 0, 0, 360, colour, -1)
        boxes.append([x1, y1, x1 + bw, y1 + bh])
    return image, boxes


def objects_dataset(folder: Path, n: int, seed: int) -> list[tuple[Path, torch.Tensor]]:
    """`n` PNG images of 64-96 px per side (aspect varies) and their boxes."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    samples = []
    for i in range(n):
        image, boxes = objects_image(rng, int(rng.integers(64, 97)), int(rng.integers(64, 97)))
        cv2.imwrite(str(folder / f"{i:04d}.png"), image[:, :, ::-1])
        samples.append((folder / f"{i:04d}.png", torch.tensor(boxes, dtype=torch.float32)))
    return samples


def sliding_windows(width: int, height: int, count: int = 200) -> torch.Tensor:
    """A fixed multi-scale grid: squares (in image proportion) of 100% down to 18% of the
    sides, each scale slid with 50% overlap over the whole image; the first `count` boxes
    (the largest scales first): Tensor[count, 4]."""
    boxes = []
    for r in (1.0, 0.7, 0.5, 0.35, 0.25, 0.18):
        steps = int(np.ceil((1 - r) / (r / 2))) + 1
        for y in np.linspace(0, 1 - r, steps):
            for x in np.linspace(0, 1 - r, steps):
                boxes.append([x * width, y * height, (x + r) * width, (y + r) * height])
    assert len(boxes) >= count
    return torch.tensor(boxes[:count], dtype=torch.float32)


def small_config(**train) -> MultiBoxConfig:
    """tests/proposals/multibox_small.yaml (the must-hold recipe) with `train` overrides."""
    return load_config(MultiBoxConfig, CONFIG, [f"train.{k}={v}" for k, v in train.items()])


def test_multibox_top200_recall_beats_a_grid_of_200_boxes(tmp_path, one_thread):
    train = objects_dataset(tmp_path / "train", 700, seed=0)
    val = objects_dataset(tmp_path / "val", 150, seed=1)
    gts = [g for _, g in val]
    sizes = [Image.open(p).size for p, _ in val]
    grid_hit, total = recall_at([sliding_windows(w, h) for w, h in sizes], gts)
    train_multibox(small_config(), train, tmp_path / "run", device="cpu")
    preds = MultiBox.load(tmp_path / "run").predict_batch([p for p, _ in val], top_k=200)
    assert all(len(b) == 200 for b, _ in preds)  # K = 300 priors: the top 200 of them
    mb_hit, _ = recall_at([b for b, _ in preds], gts)
    grid, multibox = grid_hit / total, mb_hit / total
    print(f"recall@0.5 on {total} boxes: grid of 200 {grid:.3f}, MultiBox top 200 {multibox:.3f}")
    assert multibox >= grid + 0.08, (grid, multibox)


class Stopped(Exception):
    """Stands for a kill right after a checkpoint."""


def _stop() -> None:
    raise Stopped


def test_train_writes_a_run_and_resume_continues_exactly(tmp_path, one_thread, monkeypatch):
    samples = objects_dataset(tmp_path / "img", 24, seed=5)
    cfg = small_config(epochs=2, batch_size=8)
    cfg.model.num_priors = 16
    straight = train_multibox(cfg, samples, tmp_path / "a", device="cpu", val_samples=samples[:4])
    lines = [json.loads(s) for s in (straight / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1, 2] and "val_recall@0.5" in lines[0]
    assert all(math.isfinite(r["loss"]) for r in lines)
    assert (straight / "config.yaml").is_file() and (straight / "checkpoint.pt").is_file()
    with pytest.raises(InputError, match="--resume"):
        train_multibox(cfg, samples, straight, device="cpu")
    with monkeypatch.context() as patch:  # the same config stopped after epoch 1's checkpoint
        patch.setattr("proposals.multibox_train.barrier", _stop)
        with pytest.raises(Stopped):
            train_multibox(cfg, samples, tmp_path / "b", device="cpu")
    assert load_checkpoint(tmp_path / "b" / "checkpoint.pt")["epoch"] == 1
    train_multibox(cfg, samples, tmp_path / "b", resume=True, device="cpu")
    a, b = MultiBox.load(straight).net.state_dict(), MultiBox.load(tmp_path / "b").net.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    # A resumed epoch that blows up stops with the checkpoint of epoch 2 kept as it was.
    before = load_checkpoint(straight / "checkpoint.pt")
    cfg.train.epochs, cfg.train.lr = 3, 1e30
    with pytest.raises(FloatingPointError, match="non-finite loss in epoch 3/3"):
        train_multibox(cfg, samples, straight, resume=True, device="cpu")
    after = load_checkpoint(straight / "checkpoint.pt")
    assert after["epoch"] == 2 and all(torch.equal(before["model"][k], after["model"][k]) for k in before["model"])
    assert len((straight / "metrics.jsonl").read_text().splitlines()) == 2


def test_training_refuses_a_malformed_box(tmp_path):
    samples = objects_dataset(tmp_path / "img", 2, seed=0)
    samples[1] = (samples[1][0], torch.tensor([[10.0, 10.0, 5.0, 20.0]]))
    with pytest.raises(InputError, match="0001.png"):
        train_multibox(small_config(), samples, tmp_path / "run", device="cpu")


def test_fewer_distinct_boxes_than_priors_make_that_many_priors(tmp_path, capsys, one_thread):
    samples = objects_dataset(tmp_path / "img", 4, seed=2)
    distinct = len({tuple(b.tolist()) for _, boxes in samples for b in boxes})
    cfg = small_config(epochs=1, batch_size=4)
    cfg.model.num_priors = distinct + 10
    run = train_multibox(cfg, samples, tmp_path / "run", device="cpu")
    assert json.loads((run / "multibox.json").read_text())["num_priors"] == distinct
    assert len(MultiBox.load(run).predict_batch([samples[0][0]], top_k=200)[0][0]) == distinct
    assert f"{distinct} distinct training boxes make {distinct} priors, not model.num_priors={distinct + 10}" \
        in capsys.readouterr().err


def test_an_undecodable_image_is_left_out_with_one_warning(tmp_path, capsys, one_thread):
    """A JPEG cut short passes the header checks; training leaves it out of its batches (one
    warning line) instead of stopping, and learns from the images it can read."""
    samples = objects_dataset(tmp_path / "img", 12, seed=3)
    whole = io.BytesIO()
    Image.open(samples[2][0]).convert("RGB").save(whole, "JPEG")
    bad = tmp_path / "img" / "cut.jpg"
    bad.write_bytes(whole.getvalue()[:len(whole.getvalue()) // 2])
    samples[2] = (bad, samples[2][1])
    cfg = small_config(epochs=2, batch_size=3)
    cfg.model.num_priors = 16
    run = train_multibox(cfg, samples, tmp_path / "run", device="cpu")
    lines = [json.loads(s) for s in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["images"] for r in lines] == [11, 11]
    warnings = [ln for ln in capsys.readouterr().err.splitlines() if "cut.jpg" in ln]
    assert len(warnings) == 1 and warnings[0].startswith("warning: ") and "left out of training" in warnings[0]


def test_cli_trains_from_a_voc_folder_starting_from_a_classifier(tmp_path, capsys, one_thread):
    voc = tmp_path / "voc"
    for i, (path, boxes) in enumerate(objects_dataset(tmp_path / "img", 6, seed=2)):
        w, h = Image.open(path).size
        write_voc(voc, f"{i}", (w, h), boxes, torch.ones(len(boxes), dtype=torch.int64), ["shape"])
        (voc / "JPEGImages").mkdir(exist_ok=True)
        Image.open(path).save(voc / "JPEGImages" / f"{i}.jpg", quality=95)
    classifier = build_model("googlenet", 3, width=0.125, aux_logits=False)
    save_classifier(tmp_path / "cls", classifier, ModelMeta("googlenet", 3, ["a", "b", "c"], 0.125, 64))
    argv = ["train-multibox", "--data", str(voc), "--config", str(CONFIG), "--out", str(tmp_path / "run"),
            "--init", str(tmp_path / "cls"), "--device", "cpu", "train.epochs=1", "model.num_priors=8",
            "model.width=0.5"]  # the classifier's width wins
    with pytest.raises(SystemExit) as e:
        main(argv)
        raise SystemExit(0)
    assert e.value.code == 0 and "MultiBox model saved" in capsys.readouterr().out
    meta = json.loads((tmp_path / "run" / "multibox.json").read_text())
    assert meta["width"] == 0.125 and meta["extra"]["init"] == str(tmp_path / "cls")
    assert MultiBox.load(tmp_path / "run").predict(np.zeros((40, 70, 3), np.uint8), top_k=5)[0].shape == (5, 4)
    with pytest.raises(SystemExit) as e:  # a second run into the same folder needs --resume
        main(argv)
    assert e.value.code == 2 and "--resume" in capsys.readouterr().err


def _ddp_worker(rank: int, port: int, samples: list, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE="2", LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    cfg = small_config(epochs=1, batch_size=8, hflip=False)
    cfg.model.num_priors = 16
    train_multibox(cfg, samples, out, device="cpu")


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="no gloo backend")
def test_two_gloo_processes_match_one_process(tmp_path, one_thread):
    # Flips off (their draws depend on the rank); the global batch of 8 is split 4 + 4.
    samples = objects_dataset(tmp_path / "img", 16, seed=4)
    cfg = small_config(epochs=1, batch_size=8, hflip=False)
    cfg.model.num_priors = 16
    one = train_multibox(cfg, samples, tmp_path / "one", device="cpu")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.start_processes(_ddp_worker, args=(port, samples, str(tmp_path / "two")), nprocs=2,
                       join=True, start_method="fork")
    a = MultiBox.load(one).net.state_dict()
    b = MultiBox.load(tmp_path / "two").net.state_dict()
    for key in a:
        # Float rounding differs with the per-process batch (4 rows vs 8 in each matrix product,
        # e.g. LRN's): up to ~1.4e-5 here, far below an averaging error, which moves whole updates.
        torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=5e-5, msg=key)
    lines = (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["images"] == 16
