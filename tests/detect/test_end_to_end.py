"""End to end on generated scenes: proposals -> train-detector -> detect held-out images -> mAP.

Distinct high-contrast objects (red discs, blue squares, yellow triangles) on textured grey
backgrounds, 112 px images. The members start from a randomly initialised narrow GoogLeNet
classifier run (width 0.125, input 32; `shapes_data.make_init_classifier`, He initialisation)
rather than from `train-classifier`, to keep the test under two minutes: fine-tuning then
trains the whole network. Proposals and training go through the `detect` commands; the
held-out images are detected by `Detector.load(run)`, which proposes for itself with the
proposal settings saved in the run.
"""
import json

import torch

from backbone.config import save_config
from detect.cli import main
from detect.data import load_dataset
from detect.detector import Detector
from detect.metrics import evaluate_map
from shapes_data import make_init_classifier, make_shapes_dataset, small_image_proposals

FINETUNE = ["finetune.workers=0", "finetune.threads=1", "finetune.epochs=4", "finetune.lr=0.003",
            "finetune.lr_step_epochs=3", "finetune.batch_regions=64", "finetune.fg_per_batch=16",
            "finetune.dropout=0.0"]


def test_generated_scenes_map_at_least_0_8(tmp_path):
    torch.set_num_threads(1)  # a busy 2-core machine: more threads only fight
    data = make_shapes_dataset(tmp_path / "data", {"train": 60, "test": 24}, size=112, seed=11)
    save_config(small_image_proposals(), tmp_path / "proposals.yaml")
    main(["proposals", "--data", str(data), "--split", "train", "--config", str(tmp_path / "proposals.yaml"),
          "--out", str(tmp_path / "cache"), "--workers", "1", "--quiet"])
    init = make_init_classifier(tmp_path / "init", width=0.125, input_size=32)
    run = tmp_path / "detector"
    main(["train-detector", "--data", str(data), "--split", "train", "--proposals", str(tmp_path / "cache"),
          "--init", str(init), "--out", str(run), "--members", "3", "--device", "cpu", *FINETUNE])

    log = [json.loads(line) for line in (run / "train" / "metrics.jsonl").read_text().splitlines()]
    for m in range(3):  # every member's loss falls
        losses = [r["loss"] for r in log if r["member"] == m]
        assert len(losses) == 4 and losses[-1] < 0.7 * losses[0]

    test = load_dataset(data, "test")
    detector = Detector.load(run, device="cpu")
    assert detector.classes == ["disc", "square", "triangle"] and len(detector.members) == 3
    detections = {rec.image_id: detector.detect(rec.path) for rec in test.images}
    report = evaluate_map(test, detections, "voc12")
    assert report["mAP"] >= 0.8, report["per_class"]
