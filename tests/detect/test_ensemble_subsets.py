"""tools/ensemble_subsets.py: a subset's scores and mAP are those of a Detector of its members."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from backbone.models import ModelMeta, build_model
from detect.data import load_dataset
from detect.detector import Detector, save_detector_run, select_detections
from detect.metrics import evaluate_map
from proposals import compute_proposals
from shapes_data import make_shapes_dataset, small_image_proposals
from tiny_detector import make_config

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("ensemble_subsets", ROOT / "tools" / "ensemble_subsets.py")
tool = importlib.util.module_from_spec(spec)
spec.loader.exec_module(tool)


def _run(path: Path, seeds: list[int], classes: list[str]) -> Path:
    members = []
    for seed in seeds:
        torch.manual_seed(seed)
        model = build_model("googlenet", len(classes) + 1, width=0.125, aux_logits=False, dropout=0.0)
        with torch.no_grad():
            model.fc.weight.mul_(30.0)  # a random net is near uniform: spread its classes apart
        members.append((model.eval(), ModelMeta("googlenet", len(classes) + 1, ["__background__", *classes],
                                                width=0.125, input_size=32)))
    save_detector_run(path, members, make_config(mirror=True, score_threshold=0.0), classes)
    return path


def test_subsets_equal_detectors_of_their_members(tmp_path, capsys):
    torch.set_num_threads(1)
    data = make_shapes_dataset(tmp_path / "data", {"val": 3}, size=96, seed=2)
    dataset = load_dataset(data, "val")
    compute_proposals([(r.key, r.path) for r in dataset.images], small_image_proposals(), tmp_path / "cache",
                      workers=1, progress=False)
    runs = [_run(tmp_path / "a", [0, 1], dataset.classes), _run(tmp_path / "b", [2], dataset.classes)]
    scores, first = tool.member_scores([str(r) for r in runs], dataset, str(tmp_path / "cache"))
    members = Detector.load(runs[0], device="cpu").members + Detector.load(runs[1], device="cpu").members
    inf = first.config.inference
    maps = set()
    for subset in [(0,), (2,), (0, 2), (0, 1, 2)]:
        ensemble = Detector([members[i] for i in subset], dataset.classes, first.config)
        detections = {}
        for rec in dataset.images:
            boxes, probs = scores[rec.image_id]
            expected = ensemble.score_regions(rec.path, boxes)
            assert torch.allclose(probs[list(subset)].mean(0), expected, atol=1e-6)
            detections[rec.image_id] = select_detections(boxes, expected, inf.nms_iou, inf.score_threshold,
                                                         inf.max_detections)
        expected_map = evaluate_map(dataset, detections, "voc12")["mAP"]
        assert tool.subset_map(scores, subset, dataset, first, "voc12") == pytest.approx(expected_map, abs=1e-9)
        maps.add(round(expected_map, 6))
    assert len(maps) > 1  # the members differ, so the subsets are told apart

    out = tmp_path / "subsets.json"
    tool.main(["--data", str(data), "--split", "val", "--proposals", str(tmp_path / "cache"),
               "--model", str(runs[0]), "--model", str(runs[1]), "--subset", "0,2", "--json", str(out)])
    assert list(json.loads(out.read_text())) == ["0,2"] and capsys.readouterr().out.startswith("0,2")
    with pytest.raises(SystemExit):  # member 3 does not exist
        tool.main(["--data", str(data), "--split", "val", "--proposals", str(tmp_path / "cache"),
                   "--model", str(runs[1]), "--subset", "0,3"])
