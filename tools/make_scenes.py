"""Compose the demo detection scenes: Fashion-MNIST items pasted on real photographs.

    python tools/make_scenes.py --out data/scenes --train 600 --val 60 --test 300 --seed 0

Writes a Pascal VOC folder (JPEGImages/, Annotations/, ImageSets/Main/{train,val,test}.txt,
classes.txt) that `detect.data.load_dataset` reads. The scenes are made by `detect.scenes`
(every choice is documented there and in docs/demo.md); this is its command line.
"""
from __future__ import annotations

import argparse

from detect.scenes import FASHION_MNIST_DIR, make_scenes


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="output folder (Pascal VOC layout)")
    parser.add_argument("--train", type=int, default=600, help="number of train scenes")
    parser.add_argument("--val", type=int, default=60, help="number of val scenes")
    parser.add_argument("--test", type=int, default=300, help="number of test scenes")
    parser.add_argument("--seed", type=int, default=0, help="everything is drawn from this seed")
    parser.add_argument("--first", type=int, default=0,
                        help="index of the first scene of each split (scenes of other indices "
                             "use other items: e.g. --first 1000 for a sample disjoint from 0..999)")
    parser.add_argument("--quality", type=int, default=90, help="JPEG quality")
    parser.add_argument("--fashion-mnist", default=str(FASHION_MNIST_DIR),
                        help="folder with the Fashion-MNIST IDX .gz files")
    args = parser.parse_args(argv)
    keys = make_scenes(args.out, {"train": args.train, "val": args.val, "test": args.test},
                       seed=args.seed, first=args.first, quality=args.quality,
                       fashion_mnist=args.fashion_mnist)
    print(f"wrote {sum(len(k) for k in keys.values())} scenes to {args.out}: "
          + ", ".join(f"{s} {len(k)}" for s, k in keys.items()))


if __name__ == "__main__":
    main()
