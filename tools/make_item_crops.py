"""Garments on photographs, one per image: a classification folder in the demo scenes' domain.

    python tools/make_item_crops.py --out data/item_crops --train 30000 --val 2000 --size 56

Writes `OUT/train/<class>/<n>.png` and `OUT/val/<class>/<n>.png` (ImageNet's layout) that
`detect train-classifier` reads: each image one Fashion-MNIST item pasted on a photograph as
tools/make_scenes.py pastes it, cut out as the detector cuts a region. The crops are made by
`detect.item_crops` (why, and how they stay disjoint from the test scenes, is written there);
this is its command line.
"""
from __future__ import annotations

import argparse

from detect.item_crops import FASHION_MNIST_DIR, make_item_crops


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="output folder (train/ and val/ of class folders)")
    parser.add_argument("--train", type=int, default=30000, help="number of training crops")
    parser.add_argument("--val", type=int, default=2000, help="number of validation crops")
    parser.add_argument("--size", type=int, default=56, help="side of each square crop, pixels")
    parser.add_argument("--seed", type=int, default=0, help="the scenes' seed (same item order)")
    parser.add_argument("--fashion-mnist", default=str(FASHION_MNIST_DIR),
                        help="folder with the Fashion-MNIST IDX .gz files")
    parser.add_argument("--workers", type=int, default=1, help="processes writing crops (same output)")
    parser.add_argument("--background", type=float, default=0.0,
                        help="also this many background crops per item crop (class __background__; 0: none)")
    args = parser.parse_args(argv)
    counts = make_item_crops(args.out, {"train": args.train, "val": args.val}, args.size, args.seed,
                             args.fashion_mnist, args.workers, args.background)
    print(f"wrote {sum(counts.values())} crops to {args.out}: " + ", ".join(f"{s} {c}" for s, c in counts.items()))


if __name__ == "__main__":
    main()
