#!/usr/bin/env python
"""Download registered weights (grn_lightning/weights.py) on a machine WITH internet, verifying checksums.

Training, evaluation and tests never call this: they only resolve local files. Copy the destination folder
to the offline machines and point ``$GRN_WEIGHTS`` at it (or use the torch hub cache).

    python tools/fetch_weights.py --list
    python tools/fetch_weights.py fid_inception i3d_kinetics400 lpips_alex_backbone --dest /data/weights
    python tools/fetch_weights.py --all --dest /data/weights
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import urllib.request
from pathlib import Path

import grn_lightning  # noqa: F401
from grn_lightning.weights import WEIGHTS, ENV_VAR, WeightSpec, resolve_weight, verify_weight


def _download_file(url: str, target: Path) -> None:
    with urllib.request.urlopen(url) as response, open(target, "wb") as out:  # offline-ok: explicit fetch tool
        total = int(response.headers.get("Content-Length") or 0)
        done = 0
        while block := response.read(1 << 20):
            out.write(block)
            done += len(block)
            if total:
                print(f"\r  {done / 2**20:8.1f} / {total / 2**20:.1f} MiB", end="", file=sys.stderr)
    print(file=sys.stderr)


def _download_dir(spec: WeightSpec, target: Path) -> None:
    repo_id = spec.url.removeprefix("https://huggingface.co/").strip("/")
    try:
        from huggingface_hub import snapshot_download  # offline-ok: explicit fetch tool
    except ImportError as err:
        raise SystemExit(
            f"{spec.name} is a Hugging Face folder; install huggingface_hub or run "
            f"`huggingface-cli download {repo_id} --local-dir {target}`"
        ) from err
    snapshot_download(repo_id=repo_id, local_dir=str(target))  # offline-ok: explicit fetch tool


def fetch_weight(spec: WeightSpec, dest: str | os.PathLike, force: bool = False) -> Path:
    """Download ``spec`` into ``dest`` (atomically, after the checksum matched) and return its path."""
    dest = Path(dest).expanduser()
    dest.mkdir(parents=True, exist_ok=True)
    final = dest / spec.filename
    if final.exists() and not force:
        verify_weight(spec, final)
        print(f"{spec.name}: already present and verified at {final}", file=sys.stderr)
        return final
    print(f"{spec.name}: downloading {spec.url}", file=sys.stderr)
    if spec.is_dir:
        _download_dir(spec, final)
        verify_weight(spec, final)
        return final
    with tempfile.TemporaryDirectory(dir=dest) as tmp:
        partial = Path(tmp) / spec.filename
        _download_file(spec.url, partial)
        digest = verify_weight(spec, partial)  # raises before anything lands under the final name
        shutil.move(partial, final)
    print(f"{spec.name}: {final} sha256 {digest}", file=sys.stderr)
    return final


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", help=f"registered weights: {', '.join(sorted(WEIGHTS))}")
    parser.add_argument("--dest", default=os.environ.get(ENV_VAR, "~/.cache/torch/hub/checkpoints").split(os.pathsep)[0])
    parser.add_argument("--all", action="store_true", help="fetch every registered weight")
    parser.add_argument("--list", action="store_true", help="list the registry and what is present locally")
    parser.add_argument("--force", action="store_true", help="download again even if present")
    args = parser.parse_args(argv)
    if args.list:
        for name, spec in sorted(WEIGHTS.items()):
            try:
                where = str(resolve_weight(name, verify=False))
            except FileNotFoundError:
                where = "missing"
            print(f"{name:22s} {spec.filename:42s} {spec.checksum_text():40s} {where}\n{'':22s} {spec.url}")
        return 0
    names = sorted(WEIGHTS) if args.all else args.names
    if not names:
        parser.error("name at least one weight, or use --all / --list")
    unknown = [n for n in names if n not in WEIGHTS]
    if unknown:
        parser.error(f"unknown weights {unknown}; registered: {', '.join(sorted(WEIGHTS))}")
    for name in names:
        fetch_weight(WEIGHTS[name], args.dest, force=args.force)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
