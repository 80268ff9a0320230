"""How well a classifier or a detector member names the objects of a detection split, given
their ground-truth boxes: the region classifier's accuracy with the box question taken away.

    python tools/box_accuracy.py --data runs/demo_build/scenes --split test \
        --model runs/demo_build/classifier --model runs/demo_build/detector/members/0

Every ground-truth box is warped as the detector warps a region (`detect.regions.warp_regions`,
16 px of context at 224, the model's input size) and classified. Classes are matched by name
(`detect.finetune.class_key`: a classifier's folder names such as `0_T-shirt_top` match the
data's `tshirt_top`); a detector member's background output is left out of the arg-max. Prints
top-1 accuracy over the boxes whose class the model knows, and per true class.
"""
from __future__ import annotations

import argparse

import torch

from backbone.io import load_image
from backbone.models import load_classifier
from detect.data import load_dataset
from detect.detector import BACKGROUND
from detect.finetune import class_key
from detect.regions import to_tensor, warp_regions


@torch.no_grad()
def box_accuracy(model_dir: str, dataset, context_pad: int = 16) -> dict:
    """{"boxes": n, "accuracy": top-1, "per_class": {name: accuracy}} of one model on `dataset`."""
    model, meta = load_classifier(model_dir)
    model.eval()
    keys = [class_key(c) for c in meta.classes]
    background = torch.tensor([c == BACKGROUND for c in meta.classes])  # left out of the arg-max
    # data label (0 = background, 1..K) -> the model's output index, or -1 where the model lacks the class
    to_model = torch.tensor([-1] + [keys.index(class_key(c)) if class_key(c) in keys else -1
                                    for c in dataset.classes])
    hits, counts = torch.zeros(len(dataset.classes) + 1), torch.zeros(len(dataset.classes) + 1)
    for rec in dataset.images:
        if len(rec.boxes) == 0:
            continue
        crops = warp_regions(to_tensor(load_image(rec.path), meta.mean, meta.std), rec.boxes,
                             meta.input_size, context_pad)
        pred = model(crops).float().masked_fill(background, float("-inf")).argmax(1)
        want = to_model[rec.labels.long()]
        known = want >= 0
        labels = rec.labels.long()[known]
        counts.index_add_(0, labels, torch.ones(len(labels)))
        hits.index_add_(0, labels, (pred[known] == want[known]).float())
    per_class = {c: hits[k + 1].item() / counts[k + 1].item()
                 for k, c in enumerate(dataset.classes) if counts[k + 1] > 0}
    return {"boxes": int(counts.sum().item()), "accuracy": hits.sum().item() / max(counts.sum().item(), 1.0),
            "per_class": per_class}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="a detection data set (VOC folder, COCO JSON, ...)")
    p.add_argument("--split", default="test", help="its split")
    p.add_argument("--model", action="append", required=True, help="a classifier run or a detector member (repeatable)")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    dataset = load_dataset(args.data, split=args.split)
    for model_dir in args.model:
        r = box_accuracy(model_dir, dataset)
        per_class = ", ".join(f"{c} {a:.2f}" for c, a in r["per_class"].items())
        print(f"{model_dir}: {r['accuracy']:.3f} top-1 on {r['boxes']} ground-truth boxes ({per_class})")


if __name__ == "__main__":
    main()
