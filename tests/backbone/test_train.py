import json
import math

import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from torch import nn

from backbone.checkpoint import load_checkpoint
from backbone.config import load_config
from backbone.errors import InputError
from backbone.io import load_weights
from backbone.models import load_classifier
from backbone.train import (ClassifierConfig, TrainConfig, build_state, classification_loss, evaluate, make_schedule,
                            train_classifier, train_one_epoch)
from classification_data import make_image_folder
from host_reads import count_host_reads

CPU = torch.device("cpu")

# Tiny and fast: width 1/8, 32 x 32 inputs, 3 classes of 8 training images.
TINY = ["model.width=0.125", "model.input_size=32", "train.batch_size=8", "train.lr=0.01",
        "train.workers=0", "train.ema_decay=0.9", "train.eval_batch_size=16", "train.threads=1",
        "data.saturation=0.0", "model.mean=[0.5,0.5,0.5]", "model.std=[0.25,0.25,0.25]"]


def tiny_config(*overrides: str) -> ClassifierConfig:
    return load_config(ClassifierConfig, None, [*TINY, *overrides])


def read_log(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_config_maps_to_the_engine_schedule_and_optimizer():
    cfg = TrainConfig(lr=0.01, lr_gamma=0.96, lr_step_epochs=8, warmup_epochs=0.5)
    s = make_schedule(cfg, steps_per_epoch=10)  # 5 warm-up steps, then -4% every 80 steps
    assert [s.rate(i) for i in (0, 4, 79)] == pytest.approx([0.002, 0.01, 0.01])
    assert s.rate(80) == pytest.approx(0.0096)
    cosine = make_schedule(TrainConfig(lr=0.002, epochs=8, lr_schedule="cosine"), steps_per_epoch=4)
    assert cosine.rate(16) == pytest.approx(0.001) and cosine.rate(32) == pytest.approx(0.0)
    net = nn.Sequential(nn.Linear(3, 2))
    state = build_state(net, TrainConfig(optimizer="adamw", lr=1e-3, momentum=0.8, weight_decay=0.05), CPU)
    assert isinstance(state.optimizer, torch.optim.AdamW)
    assert state.optimizer.param_groups[0]["betas"] == (0.8, 0.999)
    assert [g["weight_decay"] for g in state.optimizer.param_groups] == [0.05, 0.0]  # no decay on the bias
    assert state.ema is not None and not state.scaler.is_enabled()  # float16 scaling is for CUDA
    assert isinstance(build_state(net, TrainConfig(), CPU).optimizer, torch.optim.SGD)
    with pytest.raises(InputError, match="train.optimizer"):
        build_state(net, TrainConfig(optimizer="adam"), CPU)
    with pytest.raises(InputError, match="train.lr_schedule"):
        build_state(net, TrainConfig(lr_schedule="poly"), CPU)


def test_label_smoothing_by_hand_and_range_check():
    from backbone.googlenet import GoogLeNetOutputs
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 3.0]])
    labels = torch.tensor([0, 2])
    logp = logits.log_softmax(1)
    eps = 0.1  # target: 1 - eps + eps/3 on the label, eps/3 elsewhere
    target = torch.full_like(logp, eps / 3)
    target[[0, 1], labels] += 1 - eps
    hand = -(target * logp).sum(1).mean()
    assert torch.isclose(classification_loss(logits, labels, 0.3, eps), hand)
    assert torch.isclose(classification_loss(logits, labels, 0.3), F.cross_entropy(logits, labels))
    out = GoogLeNetOutputs(logits, logits * 0, logits)
    aux = classification_loss(out, labels, 0.3, eps)
    assert torch.isclose(aux, hand + 0.3 * (math.log(3) + hand))  # zero logits: ln 3 whatever the target
    with pytest.raises(InputError, match="label_smoothing"):
        build_state(nn.Linear(2, 2), TrainConfig(label_smoothing=1.0), CPU)


def test_evaluate_scores_several_models_in_one_pass():
    from torch.utils.data import DataLoader, TensorDataset
    torch.manual_seed(0)
    x, y = torch.randn(40, 6), torch.randint(0, 6, (40,))
    loader = DataLoader(TensorDataset(x, y), batch_size=16)
    a, b = nn.Linear(6, 6), nn.Linear(6, 6)
    both = evaluate([a, b], loader, torch.device("cpu"))
    assert both == [evaluate(a, loader, torch.device("cpu")), evaluate(b, loader, torch.device("cpu"))]
    hand = 100.0 * (a(x).argmax(1) == y).sum().item() / 40
    assert both[0]["top1"] == pytest.approx(hand) and both[0] != both[1]


def test_short_training_run_loss_falls_and_model_loads(tmp_path):
    data = make_image_folder(tmp_path / "data")
    # No BatchNorm: without dropout and at a modest rate the loss leaves ln(3) * 1.6 steadily.
    cfg = tiny_config("train.epochs=5", "train.batch_size=4", "model.dropout=0.0", "model.aux_dropout=0.0")
    run = train_classifier(cfg, data, tmp_path / "run", device="cpu")
    log = read_log(run)
    assert [r["epoch"] for r in log] == [1, 2, 3, 4, 5]
    assert log[-1]["train_loss"] < log[0]["train_loss"] - 0.1, log
    assert {"val_top1", "val_top5", "val_top1_avg", "val_top5_avg"} <= set(log[0])
    assert all(r["val_top5"] == 100.0 for r in log)  # 3 classes: top-5 always hits
    model, meta = load_classifier(run)
    assert meta.classes == ["c0", "c1", "c2"] and meta.input_size == 32 and meta.width == 0.125
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 3)
    # The saved model is the averaged one.
    ema = load_checkpoint(run / "checkpoint.pt")["ema"]["module"]
    assert torch.equal(load_weights(run / "model.safetensors")["fc.weight"], ema["fc.weight"])
    assert (run / "config.yaml").is_file()


def test_resume_reproduces_an_uninterrupted_run(tmp_path):
    data = make_image_folder(tmp_path / "data")
    straight = train_classifier(tiny_config("train.epochs=2"), data, tmp_path / "a", device="cpu")
    train_classifier(tiny_config("train.epochs=1"), data, tmp_path / "b", device="cpu")
    resumed = train_classifier(tiny_config("train.epochs=2"), data, tmp_path / "b", resume=True, device="cpu")
    a, b = load_checkpoint(straight / "checkpoint.pt"), load_checkpoint(resumed / "checkpoint.pt")
    assert a["epoch"] == b["epoch"] == 2
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
        assert torch.equal(a["ema"]["module"][key], b["ema"]["module"][key]), key
    assert read_log(straight) == [dict(r, seconds=s["seconds"]) for r, s in zip(read_log(resumed), read_log(straight))]


def test_channels_last_training_matches_the_plain_layout(tmp_path):
    # The CPU trains in NHWC by default (2-3x faster steps); it must learn the same weights.
    data = make_image_folder(tmp_path / "data")
    nhwc = train_classifier(tiny_config("train.epochs=1"), data, tmp_path / "nhwc", device="cpu")
    nchw = train_classifier(tiny_config("train.epochs=1", "train.channels_last=false"), data,
                            tmp_path / "nchw", device="cpu")
    a, b = load_checkpoint(nhwc / "checkpoint.pt")["model"], load_checkpoint(nchw / "checkpoint.pt")["model"]
    assert a["stem.0.0.weight"].is_contiguous(memory_format=torch.channels_last)
    assert not b["stem.0.0.weight"].is_contiguous(memory_format=torch.channels_last)
    moved = max((a[k].float() - b[k].float()).abs().max().item() for k in a)
    assert moved < 1e-4, moved  # different kernels, the same arithmetic


def test_persistent_loader_workers_train_as_the_main_process(tmp_path):
    # Workers are forked once and kept: each epoch's augmentation seeds must still reach them.
    data = make_image_folder(tmp_path / "data")
    inline = train_classifier(tiny_config("train.epochs=2"), data, tmp_path / "w0", device="cpu")
    worker = train_classifier(tiny_config("train.epochs=2", "train.workers=1"), data, tmp_path / "w1", device="cpu")
    a, b = load_checkpoint(inline / "checkpoint.pt"), load_checkpoint(worker / "checkpoint.pt")
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert [r["val_top1"] for r in read_log(inline)] == [r["val_top1"] for r in read_log(worker)]


def test_persistent_workers_receive_each_epoch(tmp_path):
    from backbone.distributed import DistInfo
    from backbone.train import build_loaders
    data = make_image_folder(tmp_path / "data")
    _, loader, val = build_loaders(tiny_config("train.workers=1"), data, DistInfo(0, 1, 0, torch.device("cpu")))
    assert list(loader) == [] and len(list(val)) > 0  # training waits for its first epoch
    for epoch in (0, 1):
        loader.sampler.set_epoch(epoch)
        got = torch.cat([x for x, _ in loader])
        order = [i for _, i in loader.sampler][:len(got)]
        assert torch.equal(got, torch.stack([loader.dataset[(epoch, i)][0] for i in order]))


def test_existing_run_needs_resume_and_non_finite_loss_stops(tmp_path):
    data = make_image_folder(tmp_path / "data", per_class=4, val_per_class=1)
    train_classifier(tiny_config("train.epochs=1"), data, tmp_path / "run", device="cpu")
    with pytest.raises(InputError, match="--resume"):
        train_classifier(tiny_config("train.epochs=1"), data, tmp_path / "run", device="cpu")
    data = make_image_folder(tmp_path / "data8", per_class=8, val_per_class=1)  # 3 steps an epoch
    with pytest.raises(FloatingPointError, match="non-finite loss"):
        train_classifier(tiny_config("train.lr=1.0e+30"), data, tmp_path / "boom", device="cpu")
    assert not (tmp_path / "boom" / "checkpoint.pt").exists()
    # Epoch 2 blows up: the checkpoint and log of epoch 1 are kept as they were.
    good = train_classifier(tiny_config("train.epochs=1"), data, tmp_path / "good", device="cpu")
    before = load_checkpoint(good / "checkpoint.pt")
    with pytest.raises(FloatingPointError, match="non-finite loss in epoch 2/2"):
        train_classifier(tiny_config("train.epochs=2", "train.lr=1.0e+30"), data, good, resume=True, device="cpu")
    after = load_checkpoint(good / "checkpoint.pt")
    assert after["epoch"] == 1 and all(torch.equal(before["model"][k], after["model"][k]) for k in before["model"])
    assert [r["epoch"] for r in read_log(good)] == [1]


def test_training_steps_never_wait_for_the_device():
    # Loss sums stay on the device: an epoch of 4 steps reads tensor values once, at its end.
    from backbone.models import build_model
    torch.manual_seed(0)
    model = build_model("googlenet", 3, 0.125, aux_logits=True, dropout=0.0, aux_dropout=0.0)
    cfg = TrainConfig(epochs=1, lr=0.01)
    state = build_state(model, cfg, CPU)
    batches = [(torch.randn(2, 3, 32, 32), torch.tensor([0, 2])) for _ in range(4)]
    with count_host_reads() as reads:
        loss = train_one_epoch(model, state, batches, make_schedule(cfg, 4), cfg, 0, CPU, show_progress=False)
    assert len(reads) == 1 and math.isfinite(loss)


def test_cli_trains_with_overrides_and_rejects_unknown_keys(tmp_path):
    from detect.cli_train import train_classifier as command

    data = make_image_folder(tmp_path / "data", per_class=4, val_per_class=1)
    config = tmp_path / "tiny.yaml"
    config.write_text("train:\n  epochs: 1\n")
    args = ["--data", str(data), "--config", str(config), "--device", "cpu"]
    result = CliRunner().invoke(command, [*args, "--out", str(tmp_path / "run"), *TINY])
    assert result.exit_code == 0, result.output
    assert "model saved" in result.output and (tmp_path / "run" / "model.json").is_file()
    result = CliRunner().invoke(command, [*args, "--out", str(tmp_path / "bad"), "train.lrr=1"])
    assert isinstance(result.exception, InputError) and "train.lrr" in str(result.exception)
