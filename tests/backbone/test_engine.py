"""The shared training engine: hand-computed schedules, parameter groups and decay, the weight
average, checkpoints that restore exactly, the on-device meter and its non-finite guard, the log."""
import json
import math

import pytest
import torch
from torch import nn

from backbone.engine import (Meter, ModelEMA, Schedule, TrainState, check_recipe, load_state, make_optimizer,
                             param_groups, save_state, start_run, trim_log)
from backbone.errors import InputError
from host_reads import count_host_reads

CPU = torch.device("cpu")


def test_step_schedule_by_hand():
    s = Schedule(lr=0.01, epochs=100, steps_per_epoch=100, kind="step", gamma=0.96, step_epochs=8)
    assert s.rate(0) == 0.01 and s.rate(799) == 0.01
    assert math.isclose(s.rate(800), 0.0096)
    assert math.isclose(s.rate(1650), 0.01 * 0.96 ** 2)
    assert math.isclose(s.rate(8000), 0.01 * 0.96 ** 10)
    constant = Schedule(lr=0.1, epochs=5, steps_per_epoch=3)  # step_epochs 0: no decay
    assert {constant.rate(i) for i in range(15)} == {0.1}


def test_linear_warmup_multiplies_the_schedule():
    # 10 steps an epoch, 2 warm-up epochs: step i runs at (i + 1) / 20 of the decayed rate.
    s = Schedule(lr=0.1, epochs=10, steps_per_epoch=10, kind="step", gamma=0.5, step_epochs=1, warmup_epochs=2)
    assert math.isclose(s.rate(0), 0.1 / 20)
    assert math.isclose(s.rate(4), 0.1 * 5 / 20)
    assert math.isclose(s.rate(14), 0.05 * 15 / 20)  # decayed once, still ramping
    assert math.isclose(s.rate(19), 0.05)  # ramp done
    assert math.isclose(s.rate(30), 0.1 * 0.125)


def test_cosine_schedule_by_hand():
    s = Schedule(lr=0.002, epochs=8, steps_per_epoch=4, kind="cosine", warmup_epochs=0.5)  # 2 warm-up steps
    assert math.isclose(s.rate(0), 0.002 * 0.5 * (1 + math.cos(0.0)) * 0.5)
    assert math.isclose(s.rate(1), 0.002 * 0.5 * (1 + math.cos(math.pi / 32)))
    assert math.isclose(s.rate(16), 0.001)  # half-way: half the rate
    assert math.isclose(s.rate(32), 0.0, abs_tol=1e-15) and s.rate(40) == s.rate(32)
    assert s.rate(24) < s.rate(20) < s.rate(8)


def test_no_decay_on_biases_and_norms():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4, 2))
    model[0].bias.requires_grad_(False)  # a frozen parameter is left out of both groups
    decay, no_decay = param_groups(model, 0.05)
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    assert [p.shape for p in decay["params"]] == [(4, 3, 3, 3), (2, 4)]
    assert [p.shape for p in no_decay["params"]] == [(4,), (4,), (2,)]  # BN scale, BN shift, fc bias


def test_sgd_step_decays_the_weight_but_not_the_bias():
    # A zero loss gradient: the update is the decay alone, w <- w - lr * wd * w; the bias stays.
    layer = nn.Linear(1, 1)
    with torch.no_grad():
        layer.weight.fill_(2.0), layer.bias.fill_(3.0)
    opt = make_optimizer(layer, "sgd", lr=0.1, momentum=0.9, weight_decay=0.5)
    (0.0 * layer(torch.ones(1, 1))).sum().backward()
    opt.step()
    assert math.isclose(layer.weight.item(), 2.0 * (1 - 0.1 * 0.5), rel_tol=1e-6) and layer.bias.item() == 3.0


def test_optimizer_choices():
    net = nn.Linear(3, 2)
    adamw = make_optimizer(net, "adamw", lr=1e-3, momentum=0.8, weight_decay=0.05)
    assert isinstance(adamw, torch.optim.AdamW) and adamw.param_groups[0]["betas"] == (0.8, 0.999)
    assert [g["weight_decay"] for g in adamw.param_groups] == [0.05, 0.0]
    assert isinstance(make_optimizer(net, "sgd", 0.1, 0.9, 0.0), torch.optim.SGD)
    with pytest.raises(InputError, match="finetune.optimizer"):
        check_recipe("finetune", "adam", "step")
    with pytest.raises(InputError, match="train.lr_schedule"):
        check_recipe("train", "sgd", "poly")


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
    ema.updates = 100
    ema.update(model)  # d = min(0.5, 102 / 111) = 0.5
    assert math.isclose(ema.module.weight.item(), 0.5 * expected + 0.5 * 2, rel_tol=1e-6)
    assert not ema.module.weight.requires_grad and model.weight.item() == 2.0


def _state(seed: int) -> TrainState:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    return TrainState(model, make_optimizer(model, "adamw", 0.01, 0.9, 0.01), ModelEMA(model, 0.9))


def _steps(state: TrainState, n: int) -> None:
    g = torch.Generator().manual_seed(7)
    for _ in range(n):
        x, y = torch.randn(16, 4, generator=g), torch.randint(0, 2, (16,), generator=g)
        state.step(nn.functional.cross_entropy(state.model(x), y))


def test_checkpoint_restores_a_state_that_continues_exactly(tmp_path):
    straight, first = _state(0), _state(0)
    _steps(straight, 6)
    _steps(first, 3)
    first.epoch = 1
    save_state(tmp_path / "ckpt.pt", first, classes=["a", "b"])
    resumed = _state(1)  # other initial weights: everything must come from the file
    saved = load_state(tmp_path / "ckpt.pt", resumed)
    assert saved["classes"] == ["a", "b"] and resumed.epoch == 1
    _steps(resumed, 3)  # the same generator: the batches of steps 4-6 equal steps 1-3 of each
    _steps(first, 3)
    for a, b in zip(first.model.state_dict().values(), resumed.model.state_dict().values()):
        assert torch.equal(a, b)
    assert torch.equal(first.ema.module[0].weight, resumed.ema.module[0].weight)
    other = TrainState(nn.Linear(4, 2), make_optimizer(nn.Linear(4, 2), "sgd", 0.1, 0.9, 0.0))
    with pytest.raises(InputError, match="does not match"):
        load_state(tmp_path / "ckpt.pt", other)


def test_meter_sums_on_the_device_and_reads_once():
    meter = Meter(CPU, 2, total_steps=3, desc="epoch 1/1", show=False)
    with count_host_reads() as reads:
        for loss, n in ((0.5, 2), (1.0, 4), (2.0, 2)):
            meter.add(n, torch.tensor([loss * n, float(n - 1)]), lr=0.1)
    assert reads == []  # no synchronisation per step
    sums, count, seconds = meter.result()
    assert sums == [0.5 * 2 + 1.0 * 4 + 2.0 * 2, 1 + 3 + 1] and count == 8 and seconds >= 0


def test_meter_stops_on_a_non_finite_loss(monkeypatch):
    meter = Meter(CPU, 1, total_steps=2, desc="epoch 3/4", show=False)
    meter.add(2, torch.tensor([float("nan")]), lr=0.1)
    meter.add(2, torch.tensor([1.0]), lr=0.1)  # no read yet: the guard fires at the next read
    with pytest.raises(FloatingPointError, match="non-finite loss in epoch 3/4"):
        meter.result()
    monkeypatch.setattr("backbone.engine.PROGRESS_SECONDS", 0.0)  # a shown bar reads at every step
    closed = []
    with pytest.raises(FloatingPointError):
        with Meter(CPU, 1, total_steps=2, desc="epoch 1/1", show=True) as shown:
            monkeypatch.setattr(shown.bar, "close", lambda: closed.append(True))
            shown.add(1, torch.tensor([float("inf")]), lr=0.1)
    assert closed  # the bar ends on the way out: an error message starts its own line


def test_run_folder_refused_without_resume_and_log_trimmed(tmp_path):
    from backbone.train import ClassifierConfig
    run, cfg = tmp_path / "run", ClassifierConfig()
    start_run(run, held=False, resume=False, cfg=cfg, config_path=run / "config.yaml", is_main=True)
    assert "epochs: 250" in (run / "config.yaml").read_text()
    with pytest.raises(InputError, match="--resume"):
        start_run(run, held=True, resume=False, cfg=cfg, config_path=run / "config.yaml", is_main=True)
    log = run / "metrics.jsonl"
    records = [{"member": m, "epoch": e} for m in (0, 1) for e in (1, 2, 3)]
    log.write_text("".join(json.dumps(r) + "\n" for r in records))
    trim_log(log, 1, member=1)  # member 1 resumes after its epoch 1; member 0's lines stay
    assert [json.loads(x) for x in log.read_text().splitlines()] == records[:4]
    trim_log(log, 2)
    assert [json.loads(x) for x in log.read_text().splitlines()] == [records[0], records[1], records[3]]
