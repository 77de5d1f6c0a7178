#!/usr/bin/env python
"""Media shards → HBQ token shards for C2I training (docs/CONTRACTS.md "Token shard records").

    python tools/tokenize_shards.py --input "data/imagenet-train-{000000..001023}.tar" --output data/tokens \
        --tokenizer-config configs/c2i_tokenizer.yaml --tokenizer-ckpt weights/hbq_tokenizer_16ch.pt \
        --resolution 256 --batch-size 64
    torchrun --nproc_per_node 8 tools/tokenize_shards.py ... --bf16     # 8 GPUs, input shards split over ranks

Every image is ADM-centre-cropped exactly as in training (the data layer's own decoder), encoded by the frozen
tokenizer together with its horizontal flip (training picks one of the two, SPEC §8 "random horizontal flip"),
and written with `encode_token_record` (packed bit planes) under the same key, class and caption.
One output shard per input shard, same file name. A shard is written to `<name>.tmp` and renamed when complete,
so a rerun skips finished shards and redoes an interrupted one (resumable). Records that fail to decode are
skipped and counted, as in training.

The tokenizer is given as a YAML/JSON file `{class_path: ..., init_args: {...}}` (the `model.tokenizer` block of
a C2I config works as is; a file with a top-level `model.tokenizer` is also accepted).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from pathlib import Path

import grn_lightning  # noqa: F401  (torchvision compatibility first)
import torch
import yaml

from grn_lightning.data.media import MediaDecodeError
from grn_lightning.data.records import SampleSpec, decode_record
from grn_lightning.data.splits import expand_shards
from grn_lightning.data.tokens import encode_token_record
from grn_lightning.generator.frozen_tokenizer import load_frozen_tokenizer


def build_tokenizer(config_path: str, ckpt: str | None) -> torch.nn.Module:
    """Instantiate `{class_path, init_args}` from a YAML/JSON file and load frozen weights from `ckpt`."""
    with open(config_path) as handle:
        spec = yaml.safe_load(handle)
    if isinstance(spec, dict) and "model" in spec and isinstance(spec["model"], dict):
        spec = spec["model"].get("init_args", spec["model"]).get("tokenizer", spec)
    if not isinstance(spec, dict) or "class_path" not in spec:
        raise ValueError(f"{config_path}: expected {{class_path: ..., init_args: {{...}}}} for the tokenizer")
    module_name, _, class_name = spec["class_path"].rpartition(".")
    cls = getattr(importlib.import_module(module_name), class_name)
    return load_frozen_tokenizer(cls(**(spec.get("init_args") or {})), ckpt)


def _records(url: str, skipped: list[int]):
    import webdataset as wds

    def handler(err: Exception) -> bool:
        skipped[0] += 1
        print(f"warning: {url}: {err}", file=sys.stderr)
        return True

    yield from wds.tarfile_to_samples(handler=handler)(iter([{"url": url}]))


@torch.no_grad()
def _encode(tokenizer, pixels: list[torch.Tensor], device: torch.device, autocast: bool):
    x = torch.stack(pixels).to(device).float().div_(127.5).sub_(1.0)  # uint8 [B,3,1,H,W] → [-1, 1]
    both = torch.cat([x, x.flip(-1)])
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
        labels = tokenizer.tokenize(both)
    labels = labels.long().cpu().numpy()
    return labels[: len(pixels)], labels[len(pixels) :]


def tokenize_shard(
    url: str, out_path: Path, tokenizer, spec: SampleSpec, batch_size: int, num_rounds: int, device, autocast: bool,
    progress=None,
) -> dict:  # fmt: skip
    """Tokenize one media shard into `out_path` (written as .tmp, renamed at the end). Returns counts."""
    import webdataset as wds

    tmp = out_path.with_name(out_path.name + ".tmp")
    skipped = [0]
    written = 0
    pending: list[dict] = []

    def flush(writer) -> None:
        nonlocal written
        if not pending:
            return
        labels, flipped = _encode(tokenizer, [s["pixels"] for s in pending], device, autocast)
        for sample, lab, flab in zip(pending, labels, flipped):
            record = {"__key__": sample["key"], **encode_token_record(lab, num_rounds, flipped=flab)}
            if sample["cls"] >= 0:
                record["cls"] = str(sample["cls"])
            if sample["caption"]:
                record["json"] = {"caption": sample["caption"]}
            writer.write(record)
        written += len(pending)
        if progress is not None:
            progress.update(len(pending))
        pending.clear()

    with wds.TarWriter(str(tmp)) as writer:
        for record in _records(url, skipped):
            try:
                pending.append(decode_record(record, spec, rng=None))
            except (MediaDecodeError, OSError, ValueError) as err:
                skipped[0] += 1
                print(f"warning: skipping {record.get('__key__')}: {err}", file=sys.stderr)
            if len(pending) >= batch_size:
                flush(writer)
        flush(writer)
    os.replace(tmp, out_path)
    return {"shard": str(out_path), "records": written, "skipped": skipped[0]}


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--input", required=True, help="media shards: brace pattern or comma-separated list")
    parser.add_argument("--output", required=True, help="output directory (one token shard per input shard)")
    parser.add_argument("--tokenizer-config", required=True, help="YAML/JSON {class_path, init_args} of the tokenizer")
    parser.add_argument("--tokenizer-ckpt", default=None, help="tokenizer weights (EMA preferred); omit only in tests")
    parser.add_argument("--resolution", type=int, default=256, help="ADM centre-crop side (as in training)")
    parser.add_argument("--num-rounds", type=int, default=None, help="HBQ rounds M (default: tokenizer.num_rounds)")
    parser.add_argument("--batch-size", type=int, default=64, help="images per tokenizer call (flips double it)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--bf16", action="store_true", help="encode under bf16 autocast (GPU)")
    parser.add_argument("--no-progress", action="store_true", help="no tqdm progress bar")
    parser.add_argument("--num-parts", type=int, default=int(os.environ.get("WORLD_SIZE", 1)),
                        help="split the input shards over this many processes (default: $WORLD_SIZE, torchrun)")
    parser.add_argument("--part", type=int, default=int(os.environ.get("RANK", 0)),
                        help="this process's part: input shard i goes to part i mod num-parts (default: $RANK)")
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        parser.error("--batch-size must be >= 1")
    if not 0 <= args.part < args.num_parts:
        parser.error(f"--part must lie in [0, --num-parts={args.num_parts}), got {args.part}")
    if args.device == "cuda" and "LOCAL_RANK" in os.environ:
        args.device = f"cuda:{os.environ['LOCAL_RANK']}"  # torchrun: one GPU per process

    urls = expand_shards(args.input if "," not in args.input else args.input.split(","))
    missing = [u for u in urls if not os.path.exists(u)]
    if missing:
        parser.error(f"input shards not found: {missing[:5]}")
    urls = urls[args.part :: args.num_parts]
    out_dir = Path(args.output)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = torch.device(args.device)
    tokenizer = build_tokenizer(args.tokenizer_config, args.tokenizer_ckpt).to(device)
    num_rounds = args.num_rounds or int(getattr(tokenizer, "num_rounds", 0) or 0)
    if num_rounds < 1:
        parser.error("--num-rounds is required: the tokenizer does not report num_rounds")
    spec = SampleSpec(kind="image", resolution=args.resolution, random_flip=False)

    todo = [u for u in urls if not (out_dir / Path(u).name).exists()]
    print(f"{len(urls)} shards, {len(urls) - len(todo)} already complete, {len(todo)} to tokenize", file=sys.stderr)
    from tqdm.auto import tqdm

    results = []
    with tqdm(desc="tokenizing", unit="img", disable=args.no_progress) as bar:
        for url in todo:
            result = tokenize_shard(
                url, out_dir / Path(url).name, tokenizer, spec, args.batch_size, num_rounds, device, args.bf16, bar
            )
            results.append(result)
            print(json.dumps(result), file=sys.stderr)
    total = sum(r["records"] for r in results)
    print(json.dumps({"shards_done": len(results), "records": total, "skipped": sum(r["skipped"] for r in results)}))
    return results


if __name__ == "__main__":
    main()
