"""Box regression wired into the detector: a tiny detector, briefly fine-tuned on generated
scenes, fitted on proposals jittered off the ground truth, moves held-out jittered proposals
clearly closer to their objects; save and load give the same boxes; with regression off
`detect()` is the old score-then-NMS; `detect fit-boxes` from the command line."""
from __future__ import annotations

import pytest
import torch
from torchvision.ops import box_iou, clip_boxes_to_image

from cli_helpers import run
from detect.box_regression import REGRESSOR_FILE, decode_boxes
from detect.detector import Detector, select_detections
from detect.finetune import train_detector
from detect.fit_boxes import ensemble_boxes, fit_members, fit_run, training_pairs
from proposals import ProposalCache
from shapes_data import jittered, regression_run

TINY = ["finetune.workers=0", "finetune.batch_regions=16", "finetune.fg_per_batch=6",
        "finetune.images_per_batch=2", "finetune.dropout=0.0", "finetune.lr=0.01", "finetune.threads=1",
        "finetune.epochs=2", "box_regression.enabled=false", "inference.precision=float32"]
# The pooled features of a briefly trained width-0.125 net are small (norm ~5): a lambda of 10
# already shrinks the moves to a third of their gain (mean IoU 0.72 -> 0.83 at 0.01, 0.74 at 10).
LAMBDA = 0.01


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return regression_run(tmp_path_factory.mktemp("fit_boxes"), 12, train_detector, TINY)


def _mean_iou(boxes: torch.Tensor, gt: torch.Tensor) -> float:
    return box_iou(boxes, gt).diagonal().mean().item()


def test_regressed_boxes_are_clearly_closer_to_their_objects(setup):
    s = setup
    det = Detector.load(s["run"], device="cpu")
    assert det.regressors is None  # box_regression.enabled=false: train-detector fitted none
    regs = fit_members(training_pairs(det, s["train"], s["cache"], 0.6), 3, LAMBDA, 0.6)
    before, after = [], []
    for rec in s["test"].images:
        gen = torch.Generator().manual_seed(rec.image_id)
        props = jittered(rec.boxes, 20, gen).clamp(0, 96)
        gt, labels = rec.boxes.repeat_interleave(20, 0), rec.labels.repeat_interleave(20)
        _, feats = det.score_with_features(rec.path, props)
        moved = ensemble_boxes(regs, feats, props, (96, 96))[torch.arange(len(props)), labels - 1]
        before.append(_mean_iou(props, gt))
        after.append(_mean_iou(moved, gt))
    before, after = sum(before) / len(before), sum(after) / len(after)
    assert after > before + 0.05, (before, after)


def test_fit_run_saves_regressors_that_load_into_the_same_boxes(setup):
    s = setup
    result = fit_run(s["run"], s["train"], s["cache"].root, LAMBDA, 0.6, device="cpu")
    assert [p.name for p in result["files"]] == [REGRESSOR_FILE] * 2 and result["pairs"] > 100
    loaded = Detector.load(s["run"], device="cpu")
    assert loaded.regressors is not None and loaded.regressors[0].ridge_lambda == LAMBDA
    plain = Detector.load(s["run"], device="cpu", box_regression=False)
    regs = fit_members(training_pairs(plain, s["train"], s["cache"], 0.6), 3, LAMBDA, 0.6)
    rec = s["test"].images[0]
    boxes = s["cache"].get(rec.key)[0]
    scores, feats = plain.score_with_features(rec.path, boxes)
    want_boxes = ensemble_boxes(regs, feats, boxes, (96, 96))
    torch.testing.assert_close(loaded.regress_boxes(rec.path, boxes), want_boxes)
    # detect() with regression: the scores as before, each region's box of its class moved
    inf = loaded.config.inference
    want = select_detections(want_boxes, scores, inf.nms_iou,
                             inf.score_threshold, inf.max_detections)
    got = loaded.detect(rec.path, boxes)
    for key in ("boxes", "scores", "labels"):
        torch.testing.assert_close(got[key], want[key])
    # regression off: exactly the old score-then-NMS, boxes as proposed
    old = select_detections(boxes, plain.score_regions(rec.path, boxes), inf.nms_iou, inf.score_threshold,
                            inf.max_detections)
    off = plain.detect(rec.path, boxes)
    for key in ("boxes", "scores", "labels"):
        assert torch.equal(off[key], old[key])
    assert not torch.equal(got["boxes"], off["boxes"])


def test_mirrored_views_average_deltas_with_tx_negated(setup):
    s = setup
    det = Detector.load(s["run"], device="cpu", mirror=True)
    rec = s["test"].images[1]
    boxes = s["cache"].get(rec.key)[0][:10]
    scores, feats = det.score_with_features(rec.path, boxes)
    assert feats[0].shape[0] == 2  # two views
    by_hand = []
    for reg, f in zip(det.regressors, feats):
        by_hand += [reg.predict_deltas(f[0]), reg.predict_deltas(f[1]) * torch.tensor([-1.0, 1, 1, 1])]
    want = clip_boxes_to_image(decode_boxes(boxes, torch.stack(by_hand).mean(0)), (96, 96))
    torch.testing.assert_close(det.regress_boxes(rec.path, boxes), want)


def test_an_image_without_cached_proposals_is_skipped_and_named(setup, capsys, tmp_path):
    """`detect proposals` leaves an undecodable image out of the cache: fitting skips it."""
    import shutil

    s = setup
    run_dir, cache_dir = tmp_path / "run", tmp_path / "cache"
    shutil.copytree(s["run"], run_dir)
    shutil.copytree(s["cache"].root, cache_dir)
    gone = s["train"].images[1].key
    ProposalCache(cache_dir).path(gone).unlink()
    code, _, err = run(capsys, "fit-boxes", "--model", str(run_dir), "--data", str(s["data"]), "--split", "train",
                       "--proposals", str(cache_dir), "--device", "cpu")
    assert code == 0, err
    assert f"skipped 1 images without cached proposals: {gone}" in err
    assert (run_dir / "members/0" / REGRESSOR_FILE).is_file()


def test_cli_fits_and_a_partial_run_is_refused(setup, capsys, tmp_path):
    import shutil

    s = setup
    run_dir = tmp_path / "run"
    shutil.copytree(s["run"], run_dir)
    code, out, err = run(capsys, "fit-boxes", "--model", str(run_dir), "--data", str(s["data"]), "--split", "train",
                         "--proposals", str(s["cache"].root), "--val-split", "test", "--lambdas", "0.01,1",
                         "--device", "cpu")
    assert code == 0, err
    assert "lambda     none" in out and "lambda     0.01" in out
    assert (run_dir / "members/1" / REGRESSOR_FILE).is_file()
    (run_dir / "members/1" / REGRESSOR_FILE).unlink()
    code, _, err = run(capsys, "run", "--model", str(run_dir), "--image", str(s["test"].images[0].path),
                       "--out", str(tmp_path / "out"))
    assert code == 2 and err.strip().startswith("error: ") and REGRESSOR_FILE in err
    assert len(err.strip().splitlines()) == 1
    code, _, err = run(capsys, "fit-boxes", "--model", str(s["data"]), "--data", str(s["data"]),
                       "--proposals", str(s["cache"].root))
    assert code == 2 and "not a detector run" in err
