#!/usr/bin/env python
"""Fashion-MNIST → WebDataset shards: 32×32 RGB images (class + caption) and Moving Fashion-MNIST clips.

    python tools/make_fashion_mnist.py --out data/fashion_mnist          (IDX files from the Debian package)
    python tools/make_fashion_mnist.py --idx-dir ~/fmnist --out data/fashion_mnist --train-clips 2000

Reads the four gzipped IDX files from --idx-dir (default $FASHION_MNIST_DIR, else the folder of
`apt-get install dataset-fashion-mnist`); downloads nothing. Prints the shard patterns as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import grn_lightning  # noqa: F401  (torchvision compatibility before anything else)
from grn_lightning.data.fashion_mnist import DEBIAN_DIR, build_fashion_mnist


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--idx-dir", default=os.environ.get("FASHION_MNIST_DIR", DEBIAN_DIR),
                        help=f"folder with the four IDX .gz files (default $FASHION_MNIST_DIR or {DEBIAN_DIR})")
    parser.add_argument("--out", default="data/fashion_mnist", help="output folder (shards/ and raw-<seed>/ inside)")
    parser.add_argument("--train-clips", type=int, default=6000, help="moving clips made from train-split items")
    parser.add_argument("--test-clips", type=int, default=1000, help="moving clips made from test-split items")
    parser.add_argument("--val-images", type=int, default=5000, help="last train-split items held out for validation")
    parser.add_argument("--max-train-images", type=int, default=None, help="use only the first N training images")
    parser.add_argument("--seed", type=int, default=0, help="seed of captions phrasing, clip items and motions")
    parser.add_argument("--force", action="store_true", help="rebuild even if shards with these settings exist")
    args = parser.parse_args(argv)
    try:
        patterns = build_fashion_mnist(
            args.idx_dir, args.out, train_clips=args.train_clips, test_clips=args.test_clips, val_images=args.val_images,
            max_train_images=args.max_train_images, seed=args.seed, force=args.force, progress=True,
        )  # fmt: skip
    except FileNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(patterns, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
