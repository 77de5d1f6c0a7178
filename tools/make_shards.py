#!/usr/bin/env python
"""Write WebDataset shards from an ImageNet-style class folder, a plain image folder or a jsonl manifest.

    python tools/make_shards.py --class-folder /data/imagenet/train --out data/in1k --prefix train
    python tools/make_shards.py --image-folder photos/ --out data/photos --prefix photos --split train=0.9,val=0.1
    python tools/make_shards.py --manifest media.jsonl --out data/t2v --prefix t2v --clip-seconds 5

Inputs: images in any format PIL reads (jpg, png, webp, gif, bmp, tiff, ...; 16-bit, palette, CMYK and
transparent images are converted correctly when read) and videos in mp4, avi, mov, mkv or webm containers.
Every file is decoded before it is written; bad files and images whose shorter side is below --min-size are
listed in <out>/<prefix>.summary.json and counted on the console, never written. Same input -> byte-identical
shards. --split assigns each file to a split by a hash of its key (path below the input folder, or the
manifest's "key"/"path"), stable across runs; the brace patterns to put in a config are printed at the end.
"""

from __future__ import annotations

import argparse
import sys

import grn_lightning  # noqa: F401  (torchvision compatibility before anything else)
from grn_lightning.data.shards import (
    items_from_class_folder,
    items_from_image_folder,
    items_from_manifest,
    parse_split,
    write_shards,
    write_split_shards,
)


def _report(name: str, summary: dict) -> None:
    for entry in summary["bad_files"]:
        print(f"bad file (not written): {entry['path']}: {entry['error']}", file=sys.stderr)
    small = summary["too_small"]
    print(
        f"{name}: wrote {summary['records']} records in {len(summary['shards'])} shards "
        f"({len(summary['bad_files'])} bad files skipped, {small['count']} below {small['min_size']} px refused)"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--class-folder", help="root/<class_name>/<images>; classes sorted by name -> ids")
    source.add_argument("--image-folder", help="images/videos below this folder; <stem>.txt sidecars become captions")
    source.add_argument("--manifest", help='jsonl: {"path": ..., "caption": ..., "cls": ..., "key": ...} per line')
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--prefix", default="shard", help="shard name prefix: <prefix>-000000.tar")
    parser.add_argument("--split", help="train=0.9,val=0.05,test=0.05: <prefix>-<split>-000000.tar per split")
    parser.add_argument("--samples-per-shard", type=int, default=1000)
    parser.add_argument("--max-shard-mb", type=float, default=1024.0)
    parser.add_argument("--min-size", type=int, default=32, help="refuse media whose shorter side is below this (px)")
    parser.add_argument("--clip-seconds", type=float, help="cut longer videos into consecutive clips of this length")
    parser.add_argument("--workers", type=int, default=0, help="processes validating files (0: in-process)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    if args.clip_seconds is not None and args.clip_seconds <= 0:
        parser.error(f"--clip-seconds must be positive, got {args.clip_seconds}")

    classes = None
    if args.class_folder:
        items, classes = items_from_class_folder(args.class_folder)
    elif args.image_folder:
        items = items_from_image_folder(args.image_folder)
    else:
        items = items_from_manifest(args.manifest)
    common = dict(samples_per_shard=args.samples_per_shard, max_shard_bytes=int(args.max_shard_mb * 2**20),
                  workers=args.workers, classes=classes, progress=not args.quiet, min_size=args.min_size,
                  clip_seconds=args.clip_seconds)  # fmt: skip
    if args.split:
        try:
            shares = parse_split(args.split)
        except ValueError as err:
            parser.error(str(err))
        summaries = write_split_shards(items, args.out, args.prefix, shares, **common)
    else:
        summaries = {args.prefix: write_shards(items, args.out, args.prefix, **common)}
    for name, summary in summaries.items():
        _report(name, summary)
    print("shard patterns for configs:")
    for name, summary in summaries.items():
        option = {"train": "train_shards", "val": "val_shards", "test": "test_shards"}.get(name.rsplit("-", 1)[-1])
        print(f"  {option or name}: {summary['pattern']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
