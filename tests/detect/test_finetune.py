"""R-CNN fine-tuning: the loss falls, resume equals a straight run, the run folder loads, the CLI,
the non-finite guard, and a 2-process gloo run equal to the single-process one."""
import json
import math
import os
import socket

import pytest
import torch
import torch.nn.functional as F

from backbone.checkpoint import load_checkpoint
from backbone.config import load_config
from backbone.distributed import DistInfo
from backbone.engine import TrainState, make_optimizer
from backbone.errors import InputError
from backbone.io import load_image, load_weights
from detect.config import DetectorConfig
from detect.data import load_dataset
from detect.finetune import (TrainImages, init_member, label_image, make_crops, make_loader, make_schedule,
                             member_network, train_detector, train_one_epoch)
from detect.regions import to_tensor
from detect.sampling import sample_minibatch
from proposals import ProposalCache, compute_proposals
from host_reads import count_host_reads
from shapes_data import make_init_classifier, make_shapes_dataset, small_image_proposals

# 4 images, 2 per step: 2 steps per epoch of 16 regions (4 foreground) at width 0.125, crop 64.
TINY = ["finetune.workers=0", "finetune.batch_regions=16", "finetune.fg_per_batch=4",
        "finetune.images_per_batch=2", "finetune.dropout=0.0", "finetune.lr=0.01", "finetune.threads=1"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    torch.set_num_threads(1)  # a busy 2-core machine: more threads only fight
    root = tmp_path_factory.mktemp("finetune")
    data = make_shapes_dataset(root / "data", {"train": 4, "val": 2}, size=96, seed=3)
    train, val = load_dataset(data, "train"), load_dataset(data, "val")
    items = [(r.key, r.path) for r in train.images + val.images]
    compute_proposals(items, small_image_proposals(), root / "cache", workers=1, progress=False)
    init = make_init_classifier(root / "init", width=0.125, input_size=64)
    return {"root": root, "data": data, "train": train, "val": val, "cache": root / "cache", "init": init}


def _cfg(*extra: str) -> DetectorConfig:
    return load_config(DetectorConfig, None, [*TINY, *extra])


def _member_weights(run, i: int = 0) -> dict:
    return load_weights(run / "members" / str(i) / "model.safetensors")


def _fixed_batch_loss(model, meta, s) -> float:
    """Eval-mode loss on a fixed draw of regions from the training images."""
    regions = [label_image(rec, ProposalCache(s["cache"]), _cfg().finetune) for rec in s["train"].images]
    samples = sample_minibatch(regions, [0, 1, 2, 3], 64, 16, False, seed=99, epoch=0, step=0)
    images = {i: to_tensor(load_image(s["train"].images[i].path), meta.mean, meta.std) for i in range(4)}
    x, y = make_crops(images, samples, 64, 16)
    with torch.no_grad():
        return F.cross_entropy(model.eval()(x), y).item()


def test_loss_falls_and_run_loads(setup):
    s = setup
    out = train_detector(_cfg("finetune.epochs=4"), s["train"], None, s["cache"], s["init"],
                         s["root"] / "run_loss", members=1, device="cpu")
    log = [json.loads(line) for line in (out / "train" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2, 3, 4] and all(r["steps"] == 2 for r in log)
    from detect.detector import Detector
    det = Detector.load(out, device="cpu")
    model, meta = det.members[0]
    assert meta.classes == ["__background__", "disc", "square", "triangle"]
    assert meta.extra["task"] == "region_classifier" and meta.input_size == 64
    before, _ = init_member(s["init"], s["train"].classes, seed=0, dropout=0.0)
    assert _fixed_batch_loss(model, meta, s) < 0.8 * _fixed_batch_loss(before, meta, s)
    # the proposal settings the cache was made with travel with the run
    assert det.config.proposals.selective_search.resize_width == 0


def test_resume_gives_the_same_weights_as_straight(setup):
    s = setup
    straight = train_detector(_cfg("finetune.epochs=2"), s["train"], None, s["cache"], s["init"],
                              s["root"] / "straight", members=2, device="cpu")
    part = s["root"] / "resumed"
    train_detector(_cfg("finetune.epochs=1"), s["train"], None, s["cache"], s["init"], part,
                   members=2, device="cpu")
    with pytest.raises(InputError, match="--resume"):
        train_detector(_cfg("finetune.epochs=2"), s["train"], None, s["cache"], s["init"], part,
                       members=2, device="cpu")
    train_detector(_cfg("finetune.epochs=2"), s["train"], None, s["cache"], s["init"], part,
                   members=2, resume=True, device="cpu")
    for i in range(2):
        a, b = _member_weights(straight, i), _member_weights(part, i)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # members differ by seed
    m0, m1 = _member_weights(straight, 0), _member_weights(straight, 1)
    assert not torch.equal(m0["fc.weight"], m1["fc.weight"])
    assert json.loads((straight / "detector.json").read_text())["members"] == ["members/0", "members/1"]


def test_loader_worker_trains_as_the_main_process(setup):
    # One persistent worker serves every epoch of every member: the same steps as inline.
    s = setup
    inline = train_detector(_cfg("finetune.epochs=2"), s["train"], None, s["cache"], s["init"],
                            s["root"] / "inline", members=2, device="cpu")
    worker = train_detector(_cfg("finetune.epochs=2", "finetune.workers=1"), s["train"], None, s["cache"],
                            s["init"], s["root"] / "worker", members=2, device="cpu")
    for i in range(2):
        a, b = _member_weights(inline, i), _member_weights(worker, i)
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_optimizer_and_schedule_choices(setup):
    s = setup
    ft = _cfg("finetune.optimizer=adamw", "finetune.lr_schedule=cosine", "finetune.epochs=4",
              "finetune.lr=0.002", "finetune.momentum=0.8").finetune
    cosine = make_schedule(ft, steps_per_epoch=2)  # epoch starts: (1 + cos(pi * epoch / 4)) / 2
    assert [cosine.rate(2 * e) for e in range(4)] == pytest.approx([0.002, 0.002 * (1 + 0.5 ** 0.5) / 2, 0.001,
                                                                   0.002 * (1 - 0.5 ** 0.5) / 2])
    assert cosine.rate(1) == pytest.approx(0.002 * (1 + math.cos(math.pi / 8)) / 2)  # every step decays
    step = make_schedule(_cfg("finetune.lr_step_epochs=2", "finetune.lr_gamma=0.1").finetune, steps_per_epoch=3)
    assert [step.rate(3 * e + 2) for e in range(5)] == pytest.approx([0.01, 0.01, 0.001, 0.001, 0.0001])
    with pytest.raises(InputError, match="finetune.optimizer"):  # before any work is done
        train_detector(_cfg("finetune.optimizer=adam"), s["train"], None, s["cache"], s["init"],
                       s["root"] / "bad_opt", members=1, device="cpu")
    assert not (s["root"] / "bad_opt" / "train").exists()


def test_non_finite_loss_stops_training_and_keeps_the_last_checkpoint(setup):
    s = setup
    with pytest.raises(FloatingPointError, match="non-finite loss"):
        train_detector(_cfg("finetune.epochs=1", "finetune.lr=1.0e+30", "finetune.momentum=0.0"),
                       s["train"], None, s["cache"], s["init"], s["root"] / "nan", members=1, device="cpu")
    run = s["root"] / "nan_epoch2"  # epoch 1 as usual, epoch 2 blows up
    train_detector(_cfg("finetune.epochs=1"), s["train"], None, s["cache"], s["init"], run, members=1, device="cpu")
    before = load_checkpoint(run / "train" / "member_0.pt")
    with pytest.raises(FloatingPointError, match="non-finite loss in member 1/1 epoch 2/2"):
        train_detector(_cfg("finetune.epochs=2", "finetune.lr=1.0e+30", "finetune.momentum=0.0"), s["train"], None,
                       s["cache"], s["init"], run, members=1, resume=True, device="cpu")
    after = load_checkpoint(run / "train" / "member_0.pt")
    assert after["epoch"] == 1 and all(torch.equal(before["model"][k], after["model"][k]) for k in before["model"])
    assert len((run / "train" / "metrics.jsonl").read_text().splitlines()) == 1


def test_training_steps_never_wait_for_the_device(setup):
    # The trainer reads its sums once, at the end of the epoch (the region sampling is host-side data).
    s, cfg = setup, _cfg("finetune.epochs=2")
    dist = DistInfo(0, 1, 0, torch.device("cpu"))
    loader = make_loader(TrainImages(s["train"].images, s["cache"], cfg.finetune), dist, 0)
    model, meta = member_network(s["init"], s["train"].classes, cfg.finetune, 0, dist.device)
    state = TrainState(model, make_optimizer(model, "sgd", 0.01, 0.9, 0.0))
    with count_host_reads(callers=("detect/finetune.py", "backbone/engine.py")) as reads:
        stats = train_one_epoch(model, state, loader, make_schedule(cfg.finetune, 2), meta, cfg, 0, 0, dist, "t")
    assert stats["steps"] == 2 and reads == ["tolist"]


def test_cli_with_validation_map(setup, capsys):
    from detect.cli import main
    s, out = setup, setup["root"] / "cli_run"
    main(["train-detector", "--data", str(s["data"]), "--split", "train", "--val-split", "val",
          "--proposals", str(s["cache"]), "--init", str(s["init"]), "--out", str(out),
          "--members", "1", "--device", "cpu", "finetune.epochs=3", "finetune.val_every=2", *TINY])
    assert "detector saved in" in capsys.readouterr().out
    records = [json.loads(line) for line in (out / "train" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records if "val_mAP" in r] == [2, 3]  # every 2nd epoch and the last
    assert all(0.0 <= r["val_mAP"] <= 1.0 for r in records if "val_mAP" in r)
    assert (out / "detector.yaml").is_file() and (out / "members" / "0" / "model.json").is_file()
    with pytest.raises(SystemExit) as e:  # a bad override: one-line error, exit status 2
        main(["train-detector", "--data", str(s["data"]), "--proposals", str(s["cache"]), "--init",
              str(s["init"]), "--out", str(out / "x"), "finetune.epochz=1"])
    assert e.value.code == 2 and "epochz" in capsys.readouterr().err


def _ddp_worker(rank: int, port: int, args: tuple) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2",
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    cfg, train, cache, init, out = args
    train_detector(cfg, train, None, cache, init, out, members=1, device="cpu")


def test_two_process_gloo_run_matches_one_process(setup):
    import torch.multiprocessing as mp
    s = setup
    cfg = _cfg("finetune.epochs=1")
    single = train_detector(cfg, s["train"], None, s["cache"], s["init"], s["root"] / "one", members=1,
                            device="cpu")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    two = s["root"] / "two"
    # fork: the workers inherit the imports (a spawned one would spend ~10 s importing torch)
    mp.start_processes(_ddp_worker, args=(port, (cfg, s["train"], s["cache"], s["init"], two)), nprocs=2,
                       start_method="fork")
    a, b = _member_weights(single), _member_weights(two)
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-4, rtol=1e-3) for k in a)


def test_torchvision_architecture_member(setup):
    from backbone.models import ModelMeta, build_model, save_classifier
    from detect.detector import Detector
    s = setup
    init = s["root"] / "tv_init"
    save_classifier(init, build_model("torchvision_googlenet", 10),
                    ModelMeta("torchvision_googlenet", 10, [f"c{i}" for i in range(10)], input_size=64))
    out = train_detector(_cfg("finetune.epochs=1"), s["train"], None, s["cache"], init, s["root"] / "tv_run",
                         members=1, device="cpu")
    det = Detector.load(out, device="cpu")
    assert det.members[0][1].arch == "torchvision_googlenet"
    scores = det.score_regions(s["train"].images[0].path, s["train"].images[0].boxes)
    assert scores.shape == (len(s["train"].images[0].boxes), 4)
    with pytest.raises(InputError, match="finetune.freeze needs a googlenet"):
        train_detector(_cfg("finetune.epochs=1", "finetune.freeze=stem"), s["train"], None, s["cache"], init,
                       s["root"] / "tv_frozen", members=1, device="cpu")


def test_head_rows_of_known_classes_start_from_the_classifier(tmp_path):
    from backbone.models import ModelMeta, build_model, save_classifier
    from detect.finetune import check_finetune_choices, class_key

    assert class_key("0_T-shirt_top") == class_key("tshirt_top") == "tshirttop"
    assert class_key("n01440764") == "n01440764" and class_key("9_Ankle_boot") == "ankleboot"
    torch.manual_seed(0)
    model = build_model("googlenet", 4, width=0.125)
    # "square" twice (by key): ambiguous, so that row must not be guessed.
    names = ["0_Disc", "1_Tri-angle", "2_square", "3_Square"]
    save_classifier(tmp_path / "cls", model, ModelMeta("googlenet", 4, names, width=0.125, input_size=64))
    old_w, old_b = model.fc.weight.detach(), model.fc.bias.detach()
    classes = ["disc", "square", "triangle"]
    member, meta = init_member(tmp_path / "cls", classes, seed=0, dropout=None)
    w, b = member.fc.weight.detach(), member.fc.bias.detach()
    assert w.shape == (4, old_w.shape[1]) and meta.extra["head_rows_carried"] == 2
    assert torch.equal(w[1], old_w[0]) and torch.equal(b[1], old_b[0])  # disc <- 0_Disc
    assert torch.equal(w[3], old_w[1]) and torch.equal(b[3], old_b[1])  # triangle <- 1_Tri-angle
    for row in (0, 2):  # background and the ambiguous square: new rows
        assert not any(torch.equal(w[row], old_w[i]) for i in range(4)), row
    fresh, fresh_meta = init_member(tmp_path / "cls", classes, seed=0, dropout=None, init_head="fresh")
    assert fresh_meta.extra["head_rows_carried"] == 0
    assert not any(torch.equal(fresh.fc.weight[j], old_w[i]) for j in range(4) for i in range(4))
    with pytest.raises(InputError, match="init_head"):
        check_finetune_choices(_cfg("finetune.init_head=copy").finetune)
    # A classifier with a __background__ class gives its row to the head's background row.
    bg_model = build_model("googlenet", 3, width=0.125)
    save_classifier(tmp_path / "bg", bg_model, ModelMeta("googlenet", 3, ["__background__", "disc", "other"],
                                                         width=0.125, input_size=64))
    member, meta = init_member(tmp_path / "bg", classes, seed=0, dropout=None)
    assert meta.extra["head_rows_carried"] == 2
    assert torch.equal(member.fc.weight[0], bg_model.fc.weight[0]) and torch.equal(member.fc.bias[0], bg_model.fc.bias[0])
    assert torch.equal(member.fc.weight[1], bg_model.fc.weight[1])  # disc


def test_members_start_from_several_classifiers(setup):
    # --init A --init B with 3 members: A, B, A, each member's trunk nearest the run it came from.
    s = setup
    other = make_init_classifier(s["root"] / "init_b", width=0.125, input_size=64, seed=1)
    run = train_detector(_cfg("finetune.epochs=1"), s["train"], None, s["cache"], [s["init"], other],
                         s["root"] / "two_inits", members=3, device="cpu")
    starts = [load_weights(s["init"] / "model.safetensors"), load_weights(other / "model.safetensors")]
    key = next(k for k in _member_weights(run, 0) if k.endswith("weight") and starts[0][k].dim() == 4)
    for i, expected in enumerate([0, 1, 0]):
        w = _member_weights(run, i)[key]
        distances = [(w - start[key]).norm().item() for start in starts]
        assert distances[expected] < 0.1 * distances[1 - expected]
        meta = json.loads((run / "members" / str(i) / "model.json").read_text())
        assert meta["extra"]["init"] == str([s["init"], other][expected])


def test_frozen_blocks_keep_the_classifier_weights(setup):
    # finetune.freeze=inception3a: the stem and 3a stay as the classifier trained them, 3b on train.
    s = setup
    run = train_detector(_cfg("finetune.epochs=2", "finetune.freeze=inception3a", "finetune.weight_decay=0.01"),
                         s["train"], None, s["cache"], s["init"], s["root"] / "frozen", members=1, device="cpu")
    start, after = load_weights(s["init"] / "model.safetensors"), _member_weights(run)
    blocks = {"stem": True, "inception3a": True, "inception3b": False, "inception5b": False}
    for block, frozen in blocks.items():
        keys = [k for k in after if k.startswith(block + ".")]
        assert keys, block
        same = all(torch.equal(after[k], start[k]) for k in keys)
        assert same == frozen, block
    meta = json.loads((run / "members" / "0" / "model.json").read_text())
    assert meta["extra"]["frozen"] == ["stem", "inception3a"]
    with pytest.raises(InputError, match="finetune.freeze"):  # before any work is done
        train_detector(_cfg("finetune.freeze=inception9z"), s["train"], None, s["cache"], s["init"],
                       s["root"] / "bad_freeze", members=1, device="cpu")
    assert not (s["root"] / "bad_freeze" / "train").exists()
