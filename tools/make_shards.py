#!/usr/bin/env python
"""Write WebDataset shards from an ImageNet-style class folder, a plain image folder or a jsonl manifest.

    python tools/make_shards.py --class-folder /data/imagenet/train --out data/in1k --prefix train
    python tools/make_shards.py --image-folder photos/ --out data/photos --prefix photos
    python tools/make_shards.py --manifest media.jsonl --out data/t2v --prefix t2v --samples-per-shard 500

Every file is decoded before it is written; bad files are listed in <out>/<prefix>.summary.json and on
stderr, never written. Same input -> byte-identical shards.
"""

from __future__ import annotations

import argparse
import sys

import grn_lightning  # noqa: F401  (torchvision compatibility before anything else)
from grn_lightning.data.shards import (
    items_from_class_folder,
    items_from_image_folder,
    items_from_manifest,
    write_shards,
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--class-folder", help="root/<class_name>/<images>; classes sorted by name -> ids")
    source.add_argument("--image-folder", help="images below this folder; <stem>.txt sidecars become captions")
    source.add_argument("--manifest", help='jsonl: {"path": ..., "caption": ..., "cls": ..., ...} per line')
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--prefix", default="shard", help="shard name prefix: <prefix>-000000.tar")
    parser.add_argument("--samples-per-shard", type=int, default=1000)
    parser.add_argument("--max-shard-mb", type=float, default=1024.0)
    parser.add_argument("--workers", type=int, default=0, help="processes validating files (0: in-process)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)

    classes = None
    if args.class_folder:
        items, classes = items_from_class_folder(args.class_folder)
    elif args.image_folder:
        items = items_from_image_folder(args.image_folder)
    else:
        items = items_from_manifest(args.manifest)
    summary = write_shards(
        items, args.out, args.prefix, args.samples_per_shard, int(args.max_shard_mb * 2**20), args.workers,
        classes, progress=not args.quiet,
    )
    for entry in summary["bad_files"]:
        print(f"bad file (not written): {entry['path']}: {entry['error']}", file=sys.stderr)
    print(
        f"wrote {summary['records']} records in {len(summary['shards'])} shards to {args.out} "
        f"({len(summary['bad_files'])} bad files skipped)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
