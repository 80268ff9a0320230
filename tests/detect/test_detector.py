"""Detector: region scoring, the ensemble mean, per-class NMS, save/load, precision agreement."""
import math

import numpy as np
import pytest
import torch
from PIL import Image

from backbone.errors import InputError
from detect.dataset_detections import detect_dataset
from detect.detector import Detector, save_detector_run, select_detections
from detect.regions import to_tensor, warp_regions
from tiny_detector import CLASSES, CROP, make_config, tiny_member

@pytest.fixture(scope="module")
def image() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (90, 120, 3), dtype=np.uint8)


BOXES = torch.tensor([[0.0, 0.0, 60.0, 50.0], [30.0, 20.0, 119.0, 89.0], [10.0, 40.0, 40.0, 70.0],
                      [-10.0, -5.0, 20.0, 30.0], [50.0, 10.0, 90.0, 30.0]])


def reference_probs(member, image: np.ndarray, boxes: torch.Tensor) -> torch.Tensor:
    model, meta = member
    crops = warp_regions(to_tensor(image, meta.mean, meta.std), boxes, CROP, 16)
    with torch.no_grad():
        return model(crops).softmax(1)


def test_score_regions_shape_and_normalisation(image):
    det = Detector([tiny_member(0)], CLASSES, make_config())
    probs = det.score_regions(image, BOXES)
    assert probs.shape == (5, 4) and probs.dtype == torch.float32
    torch.testing.assert_close(probs.sum(1), torch.ones(5))
    assert (probs >= 0).all()
    assert det.score_regions(image, torch.zeros(0, 4)).shape == (0, 4)


def test_ensemble_is_mean_of_members_and_batching_is_invisible(image):
    members = [tiny_member(s, spread=20.0) for s in (1, 2, 3)]
    expected = torch.stack([reference_probs(m, image, BOXES) for m in members]).mean(0)
    det = Detector(members, CLASSES, make_config(batch_size=2, channels_last=False))
    torch.testing.assert_close(det.score_regions(image, BOXES), expected, atol=1e-5, rtol=0)
    det_cl = Detector(members, CLASSES, make_config(batch_size=64, channels_last=True))
    torch.testing.assert_close(det_cl.score_regions(image, BOXES), expected, atol=1e-5, rtol=0)


def test_mirror_averages_each_region_with_its_mirror(image):
    members = [tiny_member(s, spread=20.0) for s in (1, 2)]
    flipped = np.ascontiguousarray(image[:, ::-1])
    width = image.shape[1]
    mirrored = torch.stack([width - BOXES[:, 2], BOXES[:, 1], width - BOXES[:, 0], BOXES[:, 3]], 1)
    plain = torch.stack([reference_probs(m, image, BOXES) for m in members])
    # a region's mirror = the same region of the mirrored image
    mirror = torch.stack([reference_probs(m, flipped, mirrored) for m in members])
    expected = torch.cat([plain, mirror]).mean(0)
    assert (plain.mean(0) - expected).abs().max() > 1e-3  # the mirror changes the scores
    det = Detector(members, CLASSES, make_config(batch_size=3, mirror=True))
    torch.testing.assert_close(det.score_regions(image, BOXES), expected, atol=1e-5, rtol=0)


def test_image_forms_agree(image, tmp_path):
    det = Detector([tiny_member(0)], CLASSES, make_config())
    path = tmp_path / "im.png"
    Image.fromarray(image).save(path)
    a = det.score_regions(image, BOXES)
    torch.testing.assert_close(det.score_regions(path, BOXES.tolist()), a)
    torch.testing.assert_close(det.score_regions(Image.fromarray(image), BOXES.numpy()), a)


def test_bad_boxes_and_images_raise(image, tmp_path):
    det = Detector([tiny_member(0)], CLASSES, make_config())
    with pytest.raises(InputError, match=r"\[R, 4\]"):
        det.score_regions(image, torch.zeros(3, 5))
    with pytest.raises(InputError, match="x2 >= x1"):
        det.score_regions(image, torch.tensor([[10.0, 0.0, 5.0, 5.0]]))
    with pytest.raises(InputError, match="NaN"):
        det.score_regions(image, torch.tensor([[0.0, 0.0, float("nan"), 5.0]]))
    with pytest.raises(InputError, match="not found"):
        det.score_regions(tmp_path / "missing.jpg", BOXES)
    with pytest.raises(ValueError, match="outputs"):
        Detector([tiny_member(0)], CLASSES[:2], make_config())


def test_nms_is_per_class():
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [1.0, 0.0, 11.0, 10.0], [50.0, 50.0, 60.0, 60.0]])
    # IoU(box0, box1) = 90 / 110 = 0.82 > 0.3.
    scores = torch.tensor([[0.1, 0.9, 0.0], [0.2, 0.7, 0.1], [0.5, 0.0, 0.5]])
    d = select_detections(boxes, scores, nms_iou=0.3, score_threshold=0.05, max_detections=100)
    # class 1: box 0 suppresses box 1; class 2: box 1 (0.1) and box 2 (0.5) both survive.
    assert d["labels"].tolist() == [1, 2, 2]
    torch.testing.assert_close(d["scores"], torch.tensor([0.9, 0.5, 0.1]))
    torch.testing.assert_close(d["boxes"], boxes[[0, 2, 1]])
    d = select_detections(boxes, scores, 0.3, score_threshold=0.2, max_detections=100)
    assert d["labels"].tolist() == [1, 2]
    d = select_detections(boxes, scores, 0.3, 0.05, max_detections=1)
    assert d["labels"].tolist() == [1] and d["labels"].dtype == torch.int64
    d = select_detections(boxes, scores, nms_iou=0.9, score_threshold=0.05, max_detections=0)
    assert d["labels"].tolist() == [1, 1, 2, 2]  # 0.82 < 0.9: nothing suppressed


def test_detect_uses_proposer_and_settings(image):
    calls = []

    def proposer(pixels):
        calls.append(pixels.shape)
        return BOXES.clone(), torch.zeros(len(BOXES), dtype=torch.uint8)

    det = Detector([tiny_member(0, spread=20.0)], CLASSES, make_config(score_threshold=0.0, nms_iou=1.0),
                   proposer=proposer)
    d = det.detect(image)
    assert calls == [(90, 120, 3)]
    assert len(d["scores"]) == 5 * 3  # every region, every class, nothing suppressed at IoU 1
    assert (d["scores"][:-1] >= d["scores"][1:]).all()
    probs = det.score_regions(image, BOXES)
    assert d["scores"][0] == probs[:, 1:].max()
    assert set(det.timings) == {"proposals", "crops", "network", "nms"}


def test_save_load_round_trip(image, tmp_path):
    members = [tiny_member(1), tiny_member(2)]
    cfg = make_config(nms_iou=0.4)
    cfg.regions.context_pad = 8
    original = Detector(members, CLASSES, cfg).score_regions(image, BOXES)
    mb = tmp_path / "mb"
    mb.mkdir()
    (mb / "marker.txt").write_text("multibox run")
    save_detector_run(tmp_path / "run", members, cfg, CLASSES, multibox_dir=mb)
    assert (tmp_path / "run/multibox/marker.txt").is_file()
    det = Detector.load(tmp_path / "run", device="cpu")
    assert det.classes == CLASSES and len(det.members) == 2
    assert det.members[0][1].classes == ["__background__", *CLASSES]
    assert det.members[0][1].extra["task"] == "region_classifier"
    assert det.config.inference.nms_iou == 0.4 and det.config.regions.context_pad == 8
    assert det.config.proposals.multibox.model == str(tmp_path / "run" / "multibox")
    torch.testing.assert_close(det.score_regions(image, BOXES), original, atol=1e-6, rtol=0)
    det = Detector.load(tmp_path / "run", "cpu", ["inference.max_detections=7"],
                        score_threshold=0.5, regions__crop_size=32)
    assert det.config.inference.max_detections == 7 and det.config.inference.score_threshold == 0.5
    assert det.config.regions.crop_size == 32 and det.config.inference.nms_iou == 0.4
    with pytest.raises(InputError, match="unknown key"):
        Detector.load(tmp_path / "run", "cpu", ["inference.nms=0.4"])
    with pytest.raises(InputError, match="not a detector run"):
        Detector.load(tmp_path, "cpu")
    with pytest.raises(ValueError, match="outputs"):
        save_detector_run(tmp_path / "bad", members, cfg, CLASSES[:2])


def test_default_model_missing_is_an_input_error(monkeypatch, tmp_path):
    import detect.detector as mod

    monkeypatch.setattr(mod, "DEFAULT_MODEL_DIR", tmp_path / "none")
    with pytest.raises(InputError, match="built-in"):
        Detector.load()


def test_detect_dataset_uses_cache(image):
    class Rec:
        def __init__(self, image_id, key):
            self.image_id, self.key, self.path = image_id, key, image

    class Dataset:
        images = [Rec(3, "a"), Rec(8, "b")]

    class Cache:
        def get(self, key):
            return (BOXES[:2], torch.zeros(2, dtype=torch.uint8)) if key == "a" else None

    det = Detector([tiny_member(0, spread=20.0)], CLASSES, make_config(score_threshold=0.0, nms_iou=1.0),
                   proposer=lambda px: (BOXES[:4], torch.zeros(4, dtype=torch.uint8)))
    assert det.config.inference.batch_size == 0 and det.batch_size() == 16  # auto on the CPU
    out = detect_dataset(det, Dataset(), batch_size=3, proposals_cache=Cache(), progress=False)
    assert sorted(out) == [3, 8]
    assert len(out[3]["scores"]) == 2 * 3 and len(out[8]["scores"]) == 4 * 3
    assert det.config.inference.batch_size == 0  # restored


def test_fast_precision_agrees_with_float32(image):
    """bfloat16 (the CPU's fast setting) vs float32: softmax within 0.02, same top class."""
    rng = np.random.default_rng(1)
    xy = rng.uniform(0, 80, (100, 2))
    wh = rng.uniform(10, 60, (100, 2))
    boxes = torch.tensor(np.concatenate([xy, xy + wh], 1), dtype=torch.float32)
    member = tiny_member(4, spread=20.0)
    exact = Detector([member], CLASSES, make_config(precision="float32")).score_regions(image, boxes)
    fast_det = Detector([member], CLASSES, make_config(precision="bfloat16", channels_last=True))
    assert fast_det.dtype == torch.bfloat16
    fast = fast_det.score_regions(image, boxes)
    assert (fast - exact).abs().max() <= 0.02
    assert (fast.argmax(1) == exact.argmax(1)).float().mean() >= 0.99
    assert exact.max(1).values.mean() > 0.4  # the check is not on near-uniform outputs


def test_fast_precision_keeps_the_head_in_float32(image):
    """Only the trunk runs in bfloat16: logits 40.1 and 40.0 (equal once rounded to bfloat16,
    whose step is 0.25 there) keep their float32 softmax ratio e^0.1."""
    model, meta = tiny_member(0)
    with torch.no_grad():
        model.fc.weight.zero_()
        model.fc.bias.zero_()
        model.fc.bias[:2] = torch.tensor([40.1, 40.0])
    exact = Detector([(model, meta)], CLASSES, make_config()).score_regions(image, BOXES)
    fast = Detector([(model, meta)], CLASSES, make_config(precision="bfloat16")).score_regions(image, BOXES)
    assert torch.allclose(fast[:, 0] / fast[:, 1], torch.full((len(BOXES),), math.exp(0.1)), rtol=1e-4)
    torch.testing.assert_close(fast, exact, atol=1e-6, rtol=0)


def test_auto_precision_checked_on_first_regions(image, monkeypatch):
    """"auto" keeps its fast dtype only when the first regions agree with float32."""
    import detect.detector as mod

    exact = Detector([tiny_member(0)], CLASSES, make_config()).score_regions(image, BOXES)
    det = Detector([tiny_member(0)], CLASSES, make_config(precision="auto"))
    det.dtype, det._check_fast = torch.bfloat16, True  # as on a CPU with native bfloat16
    torch.testing.assert_close(det.score_regions(image, BOXES), exact, atol=0.02, rtol=0)
    assert det.dtype == torch.bfloat16 and det.fast_check["regions"] == 5
    assert det.fast_check["max_abs_diff"] <= 0.02 and det.fast_check["same_top_class"]
    monkeypatch.setattr(mod, "FAST_MAX_DIFF", -1.0)  # nothing agrees: must fall back
    det = Detector([tiny_member(0)], CLASSES, make_config(precision="auto"))
    det.dtype, det._check_fast = torch.bfloat16, True
    with pytest.warns(UserWarning, match="float32"):
        probs = det.score_regions(image, BOXES)
    assert det.dtype is None
    torch.testing.assert_close(probs, exact, atol=1e-6, rtol=0)
