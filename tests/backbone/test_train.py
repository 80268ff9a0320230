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
from backbone.train import (ClassifierConfig, ModelEMA, TrainConfig, classification_loss, evaluate, learning_rate,
                            make_optimizer, train_classifier)
from classification_data import make_image_folder

# Tiny and fast: width 1/8, 32 x 32 inputs, 3 classes of 8 training images.
TINY = ["model.width=0.125", "model.input_size=32", "train.batch_size=8", "train.lr=0.01",
        "train.workers=0", "train.ema_decay=0.9", "train.eval_batch_size=16", "train.threads=1",
        "data.saturation=0.0", "model.mean=[0.5,0.5,0.5]", "model.std=[0.25,0.25,0.25]"]


def tiny_config(*overrides: str) -> ClassifierConfig:
    return load_config(ClassifierConfig, None, [*TINY, *overrides])


def read_log(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_learning_rate_drops_4_percent_every_8_epochs():
    cfg = TrainConfig(lr=0.01, lr_gamma=0.96, lr_step_epochs=8)
    assert learning_rate(cfg, 0) == 0.01
    assert learning_rate(cfg, 7.99) == 0.01
    assert math.isclose(learning_rate(cfg, 8), 0.0096)
    assert math.isclose(learning_rate(cfg, 16.5), 0.01 * 0.96 ** 2)
    assert math.isclose(learning_rate(cfg, 80), 0.01 * 0.96 ** 10)
    warm = TrainConfig(lr=0.1, lr_gamma=0.5, lr_step_epochs=1, warmup_epochs=2)
    assert math.isclose(learning_rate(warm, 0.5), 0.1 * 0.25)  # ramp 0.5 / 2
    assert math.isclose(learning_rate(warm, 1.5), 0.05 * 0.75)  # decayed once, still ramping
    assert math.isclose(learning_rate(warm, 3), 0.1 * 0.125)


def test_cosine_schedule_and_optimizer_choice():
    cfg = TrainConfig(lr=0.002, epochs=8, lr_schedule="cosine", warmup_epochs=0.5)
    assert math.isclose(learning_rate(cfg, 0.25), 0.002 * 0.5 * (1 + math.cos(math.pi * 0.25 / 8)) * 0.5)
    assert math.isclose(learning_rate(cfg, 4), 0.001)  # half-way: half the rate
    assert math.isclose(learning_rate(cfg, 8), 0.0, abs_tol=1e-15)
    assert learning_rate(cfg, 6) < learning_rate(cfg, 5) < learning_rate(cfg, 2)
    net = nn.Sequential(nn.Linear(3, 2))
    adamw = make_optimizer(net, TrainConfig(optimizer="adamw", lr=1e-3, momentum=0.8, weight_decay=0.05))
    assert isinstance(adamw, torch.optim.AdamW)
    assert adamw.param_groups[0]["betas"] == (0.8, 0.999)
    assert [g["weight_decay"] for g in adamw.param_groups] == [0.05, 0.0]  # no decay on the bias
    assert isinstance(make_optimizer(net, TrainConfig()), torch.optim.SGD)
    with pytest.raises(InputError, match="train.optimizer"):
        make_optimizer(net, TrainConfig(optimizer="adam"))
    with pytest.raises(InputError, match="train.lr_schedule"):
        make_optimizer(net, TrainConfig(lr_schedule="poly"))


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
        make_optimizer(nn.Linear(2, 2), TrainConfig(label_smoothing=1.0))


def test_ema_arithmetic_by_hand():
    model = nn.Linear(1, 1, bias=False)
    nn.init.zeros_(model.weight)
    ema = ModelEMA(model, decay=0.5)
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema.update(model)  # d = min(0.5, 2 / 11): avg = 2/11 * 0 + 9/11 * 1
    assert math.isclose(ema.module.weight.item(), 9 / 11, rel_tol=1e-6)
    with torch.no_grad():
        model.weight.fill_(2.0)
    ema.update(model)  # d = min(0.5, 3 / 12) = 0.25
    expected = 0.25 * 9 / 11 + 0.75 * 2
    assert math.isclose(ema.module.weight.item(), expected, rel_tol=1e-6)
    ema.update(model)  # d = min(0.5, 4 / 13) = 4/13
    expected = 4 / 13 * expected + 9 / 13 * 2
    assert math.isclose(ema.module.weight.item(), expected, rel_tol=1e-6)
    ema.updates = 100
    ema.update(model)  # d = min(0.5, 102 / 111) = 0.5
    assert math.isclose(ema.module.weight.item(), 0.5 * expected + 0.5 * 2, rel_tol=1e-6)
    assert not ema.module.weight.requires_grad and model.weight.item() == 2.0


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
