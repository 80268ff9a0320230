"""Shared-mode (Fast R-CNN) fine-tuning: its mini-batch, resume equal to a straight run, the run
folder loads and scores in the shared mode, and an ensemble on generated scenes reaches an mAP floor."""
import json

import pytest
import torch

from backbone.config import load_config, save_config
from backbone.distributed import DistInfo
from backbone.errors import InputError
from backbone.io import load_image, load_weights
from detect.config import DetectorConfig
from detect.data import load_dataset
from detect.finetune import TrainImages, make_loader, member_network
from detect.finetune import train_detector as rcnn_train_detector
from detect.regions import to_tensor
from detect.shared_finetune import step_inputs, train_detector
from detect.shared_mode import ensemble_scores, region_rois
from proposals import compute_proposals
from shapes_data import make_init_classifier, make_shapes_dataset, small_image_proposals

# 4 images, 2 per step: 2 steps per epoch of 16 regions (8 an image, 2 of them foreground).
TINY = ["mode=shared", "shared.short_side=0", "finetune.workers=0", "finetune.batch_regions=16",
        "finetune.fg_per_batch=4", "finetune.images_per_batch=2", "finetune.dropout=0.0", "finetune.lr=0.01",
        "finetune.threads=1", "finetune.bg_iou_low=0.1"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    torch.set_num_threads(1)  # a busy 2-core machine: more threads only fight
    root = tmp_path_factory.mktemp("shared_finetune")
    data = make_shapes_dataset(root / "data", {"train": 4, "val": 2}, size=96, seed=3)
    train, val = load_dataset(data, "train"), load_dataset(data, "val")
    compute_proposals([(r.key, r.path) for r in train.images + val.images], small_image_proposals(),
                      root / "cache", workers=1, progress=False)
    init = make_init_classifier(root / "init", width=0.125, input_size=64)
    return {"root": root, "data": data, "train": train, "val": val, "cache": root / "cache", "init": init}


def _cfg(*extra: str) -> DetectorConfig:
    return load_config(DetectorConfig, None, [*TINY, *extra])


def test_a_step_is_fast_rcnns_minibatch(setup):
    s, cfg = setup, _cfg("finetune.bg_iou_low=0.0")  # background in plenty on these small images
    dist = DistInfo(0, 1, 0, torch.device("cpu"))
    loader = make_loader(TrainImages(s["train"].images, s["cache"], cfg.finetune), dist, 0)
    _, meta = member_network(s["init"], s["train"].classes, cfg.finetune, 0, dist.device)
    loader.batch_sampler.set_epoch(0, 0)
    for step, decoded in enumerate(loader):
        group = loader.batch_sampler.steps[step]
        images, rois, scales, y = step_inputs(decoded, group, cfg, meta, 0, 0, step, dist)
        assert len(images) == 2 and [len(r) for r in rois] == [8, 8] and scales == [1.0, 1.0]
        assert (y[:8] > 0).sum() == 2 and (y[8:] > 0).sum() == 2  # a quarter foreground, per image
        for (i, img, _), x in zip(decoded, images):
            plain = to_tensor(img.numpy(), meta.mean, meta.std)
            assert torch.equal(x, plain) or torch.equal(x, plain.flip(-1))  # the whole image, or its mirror
    assert step == 1
    # Without mirroring every image is as it is.
    decoded = next(iter(loader))
    images, rois, _, _ = step_inputs(decoded, loader.batch_sampler.steps[0], _cfg("finetune.mirror=false"), meta,
                                     0, 0, 0, dist)
    assert all(torch.equal(x, to_tensor(img.numpy(), meta.mean, meta.std)) for (_, img, _), x in zip(decoded, images))


def _member_weights(run, i: int = 0) -> dict:
    return load_weights(run / "members" / str(i) / "model.safetensors")


def test_resume_equals_straight_and_the_run_scores_in_the_shared_mode(setup):
    s = setup
    straight = train_detector(_cfg("finetune.epochs=2"), s["train"], s["val"], s["cache"], s["init"],
                              s["root"] / "straight", members=2, device="cpu")
    part = s["root"] / "resumed"
    train_detector(_cfg("finetune.epochs=1"), s["train"], None, s["cache"], s["init"], part, members=2, device="cpu")
    train_detector(_cfg("finetune.epochs=2"), s["train"], s["val"], s["cache"], s["init"], part, members=2,
                   resume=True, device="cpu")
    for i in range(2):
        a, b = _member_weights(straight, i), _member_weights(part, i)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    log = [json.loads(line) for line in (straight / "train" / "metrics.jsonl").read_text().splitlines()]
    assert [(r["member"], r["epoch"]) for r in log] == [(0, 1), (0, 2), (1, 1), (1, 2)]
    assert all(0.0 <= r["val_mAP"] <= 1.0 for r in log)

    from detect.detector import Detector
    det = Detector.load(straight, device="cpu")
    assert det.config.mode == "shared" and len(det.members) == 2
    rec = s["val"].images[0]
    boxes = torch.cat([rec.boxes, torch.tensor([[0.0, 0.0, 50.0, 40.0], [10.0, 20.0, 95.0, 90.0]])])
    scores = det.score_regions(rec.path, boxes)
    assert scores.shape == (len(boxes), 4)
    torch.testing.assert_close(scores.sum(1), torch.ones(len(boxes)))
    pixels = load_image(rec.path)
    meta = det.members[0][1]
    expected = ensemble_scores([m for m, _ in det.members], [64, 64], to_tensor(pixels, meta.mean, meta.std), boxes)
    torch.testing.assert_close(scores, expected)
    with pytest.raises(InputError, match="mode"):
        train_detector(_cfg("mode=fast"), s["train"], None, s["cache"], s["init"], s["root"] / "bad", members=1,
                       device="cpu")
    with pytest.raises(InputError, match="shared_finetune"):  # the R-CNN trainer does not train it
        rcnn_train_detector(_cfg(), s["train"], None, s["cache"], s["init"], s["root"] / "bad", members=1,
                            device="cpu")


def test_rois_follow_the_mirror(setup):
    # A mirrored image's rois are those of the mirrored boxes: x -> W - x.
    boxes = torch.tensor([[10.0, 20.0, 40.0, 60.0]])
    mirrored = torch.tensor([[96.0 - 40.0, 20.0, 96.0 - 10.0, 60.0]])
    a, b = region_rois(boxes, (1.0, 1.0), 64, 16), region_rois(mirrored, (1.0, 1.0), 64, 16)
    torch.testing.assert_close(a[:, [1, 3]], b[:, [1, 3]])
    torch.testing.assert_close(a[:, 2] - a[:, 0], b[:, 2] - b[:, 0])


FINETUNE = ["finetune.workers=0", "finetune.threads=1", "finetune.epochs=4", "finetune.lr=0.003",
            "finetune.lr_step_epochs=3", "finetune.batch_regions=64", "finetune.fg_per_batch=16",
            "finetune.dropout=0.0", "finetune.bg_iou_low=0.1", "mode=shared", "shared.short_side=0"]


def test_shared_ensemble_on_generated_scenes_reaches_an_map_floor(tmp_path):
    from detect.cli import main
    from detect.detector import Detector
    from detect.metrics import evaluate_map

    torch.set_num_threads(1)
    data = make_shapes_dataset(tmp_path / "data", {"train": 60, "test": 24}, size=112, seed=11)
    save_config(small_image_proposals(), tmp_path / "proposals.yaml")
    main(["proposals", "--data", str(data), "--split", "train", "--config", str(tmp_path / "proposals.yaml"),
          "--out", str(tmp_path / "cache"), "--workers", "1", "--quiet"])
    init = make_init_classifier(tmp_path / "init", width=0.125, input_size=32)
    run = tmp_path / "detector"
    main(["train-detector", "--data", str(data), "--split", "train", "--proposals", str(tmp_path / "cache"),
          "--init", str(init), "--out", str(run), "--members", "2", "--device", "cpu", *FINETUNE])
    test = load_dataset(data, "test")
    detector = Detector.load(run, device="cpu")
    assert detector.config.mode == "shared"
    detections = {rec.image_id: detector.detect(rec.path) for rec in test.images}
    report = evaluate_map(test, detections, "voc12")
    assert report["mAP"] >= 0.8, report["per_class"]  # 0.92 measured (2 members, 4 epochs)
