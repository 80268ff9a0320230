"""Fashion-MNIST (IDX files) -> an ImageNet-style folder of RGB PNG images.

    python tools/prepare_fashion_mnist.py --out data/fashion-mnist \
        [--src /usr/share/datasets/fashion-mnist] [--limit N] [--pad P]

Writes OUT/train/<class>/<index>.png (60,000 images), OUT/val/<class>/<index>.png (the 10,000
test images) and OUT/classes.txt with `backbone.fashion_mnist.prepare` (what --pad is for is
written there); this is its command line.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from backbone.fashion_mnist import DEFAULT_SRC, prepare


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--src", type=Path, default=DEFAULT_SRC, help="folder with the IDX files")
    parser.add_argument("--out", type=Path, required=True, help="output folder (train/, val/)")
    parser.add_argument("--limit", type=int, default=None, help="at most this many images per split")
    parser.add_argument("--pad", type=int, default=0,
                        help="black pixels framing each image on every side (2: 32 x 32 images)")
    args = parser.parse_args()
    if args.pad < 0:
        parser.error("--pad must be 0 or more")
    counts = prepare(args.src, args.out, args.limit, args.pad)
    print(f"wrote {counts['train']} training and {counts['val']} validation images to {args.out}")


if __name__ == "__main__":
    main()
