#!/usr/bin/env python
"""Build the real-media demo shards (photos and clips from PyPI wheels; nothing is downloaded).

    python tools/make_demo_data.py --out data/demo
"""

from __future__ import annotations

import argparse
import json

import grn_lightning  # noqa: F401  (torchvision compatibility before anything else)
from grn_lightning.data.demo import build_demo_data, default_demo_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=default_demo_dir(), help="output folder (default: $GRN_DEMO_DATA or data/demo)")
    parser.add_argument("--force", action="store_true", help="rebuild even if the shards exist")
    args = parser.parse_args(argv)
    patterns = build_demo_data(args.out, force=args.force, progress=True)
    print(json.dumps(patterns, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
