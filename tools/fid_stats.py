#!/usr/bin/env python
"""Reference statistics (``mu``, ``sigma`` of Inception pool3 features) for FID, as a pytorch-fid/ADM-style
``.npz``, from an image folder or WebDataset shards.

    python tools/fid_stats.py /data/imagenet/train --out imagenet256_train.npz --size 256
    python tools/fid_stats.py "/data/shards/val-{000000..000049}.tar" --out val256.npz
    python tools/fid_stats.py samples_png/ --out samples.npz --size 0        # images used as they are

Images are ADM centre-cropped to ``--size`` (SPEC section 8), quantised to 8 bits and passed through the FID
Inception-V3 (``pt_inception-2015-12-05``, resolved offline). The file also stores ``n`` (image count).
"""

from __future__ import annotations

import argparse
import json
import sys

import grn_lightning  # noqa: F401  (torchvision compatibility first)
import torch


def compute_stats(args: argparse.Namespace) -> dict:
    from tqdm.auto import tqdm

    from grn_lightning.eval.features import InceptionFeatureExtractor
    from grn_lightning.eval.image_sources import image_loader
    from grn_lightning.eval.metrics import FrechetDistance, save_reference_stats
    from grn_lightning.eval.protocol import file_record, software_versions

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    inception = InceptionFeatureExtractor(args.inception_weights, random_init=args.random_init).to(device)
    accumulator = FrechetDistance(2048).to(device)
    loader, total = image_loader(args.source, args.size or None, args.batch_size, args.workers, args.limit)
    with tqdm(total=total, unit="img", desc="fid_stats", disable=args.quiet) as progress:
        for images, _ in loader:
            accumulator.update(inception(images.to(device)).pool)
            progress.update(images.shape[0])
    mu, sigma = accumulator.statistics()
    n = int(accumulator.fake_n)
    save_reference_stats(args.out, mu, sigma, n=n)
    return {
        "out": args.out, "source": args.source, "num_images": n, "size": args.size,
        "crop": "ADM centre crop" if args.size else "none", "weights": file_record(inception.weights_file),
        "versions": software_versions(),
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", help="image folder, or WebDataset shard pattern (brace expansion allowed)")
    parser.add_argument("--out", required=True, help="output .npz (keys mu, sigma, n)")
    parser.add_argument("--size", type=int, default=256, help="ADM centre-crop size; 0 keeps images as they are")
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--workers", type=int, default=4, help="decoding workers (image folders)")
    parser.add_argument("--limit", type=int, default=None, help="use only the first N images")
    parser.add_argument("--device", default=None, help="default: cuda if available")
    parser.add_argument("--inception-weights", default=None, help="explicit pt_inception-2015-12-05 path")
    parser.add_argument("--random-init", action="store_true", help="random Inception (tests only)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        parser.error("--batch-size must be >= 1")
    record = compute_stats(args)
    with open(str(args.out) + ".json", "w") as handle:  # the protocol next to the numbers
        json.dump(record, handle, indent=2)
    print(json.dumps({k: record[k] for k in ("out", "num_images", "size")}), file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
