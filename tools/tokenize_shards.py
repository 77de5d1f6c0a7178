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

T2I shards (cached text, aspect-ratio buckets): `--pixel-budget 0.25M` resizes each image to its nearest bucket
(SPEC §8, as training does) and records the bucket's template ratio; `--text-encoder-config` (a
`{class_path, init_args}` of `UMT5TextEncoder`, or a T2X config's `model.text_encoder`) adds the umT5 last hidden
states of the `--text-task`-tagged caption and of the empty caption, bf16, trimmed to length
(grn_lightning/data/text_states.py). T2X training on such shards runs no text encoder.

    python tools/tokenize_shards.py --input "data/t2i-{000000..000999}.tar" --output data/t2i-tokens \
        --tokenizer-config configs/t2i.yaml --tokenizer-ckpt weights/hbq_tokenizer_64ch.pt --pixel-budget 0.25M \
        --text-encoder-config configs/t2i.yaml --bf16
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
from grn_lightning.data.buckets import PIXEL_BUDGETS
from grn_lightning.data.records import SampleSpec, decode_record
from grn_lightning.data.splits import expand_shards
from grn_lightning.data.text_states import encode_text_fields
from grn_lightning.data.tokens import encode_token_record
from grn_lightning.generator.frozen_tokenizer import load_frozen_tokenizer


def build_part(config_path: str, part: str) -> torch.nn.Module:
    """Instantiate `{class_path, init_args}` from a YAML/JSON file, or the `model.<part>` block of a config."""
    with open(config_path) as handle:
        spec = yaml.safe_load(handle)
    if isinstance(spec, dict) and "model" in spec and isinstance(spec["model"], dict):
        spec = spec["model"].get("init_args", spec["model"]).get(part, spec)
    if not isinstance(spec, dict) or "class_path" not in spec:
        raise ValueError(f"{config_path}: expected {{class_path: ..., init_args: {{...}}}} for the {part}")
    module_name, _, class_name = spec["class_path"].rpartition(".")
    cls = getattr(importlib.import_module(module_name), class_name)
    return cls(**(spec.get("init_args") or {}))


def build_tokenizer(config_path: str, ckpt: str | None) -> torch.nn.Module:
    """The tokenizer of `config_path` (see `build_part`) with frozen weights from `ckpt`."""
    return load_frozen_tokenizer(build_part(config_path, "tokenizer"), ckpt)


class TextStates:
    """Task-tagged caption states for the records: the encoder's, plus the empty caption's (encoded once)."""

    def __init__(self, encoder: torch.nn.Module, task: str) -> None:
        self.encoder, self.task = encoder, task
        self.null = encoder.encode([""], task)[0]

    def fields(self, captions: list[str]) -> list[dict]:
        states = self.encoder.encode(captions, self.task)
        return [encode_text_fields(s, self.null, self.task) for s in states]


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
    progress=None, text: TextStates | None = None,
) -> dict:  # fmt: skip
    """Tokenize one media shard into `out_path` (written as .tmp, renamed at the end). Returns counts.

    With aspect-ratio buckets images of one bucket are encoded together (one tensor shape per tokenizer call)."""
    import webdataset as wds

    tmp = out_path.with_name(out_path.name + ".tmp")
    skipped = [0]
    written = 0
    pending: dict[tuple, list[dict]] = {}  # by pixel shape (one bucket each)

    def flush(writer, group: list[dict]) -> None:
        nonlocal written
        if not group:
            return
        labels, flipped = _encode(tokenizer, [s["pixels"] for s in group], device, autocast)
        states = text.fields([s["caption"] for s in group]) if text is not None else [{}] * len(group)
        # C, M, the stride and the square size are recorded, so a generator built for others refuses the shard
        stride = getattr(getattr(tokenizer, "vae", None), "spatial_stride", None)
        square = spec.resolution if spec.pixel_budget is None else None
        for sample, lab, flab, text_fields in zip(group, labels, flipped, states):
            fields = encode_token_record(lab, num_rounds, flipped=flab, spatial_stride=stride, resolution=square)
            record = {"__key__": sample["key"], **fields, **text_fields}
            if spec.pixel_budget is not None:
                record["tokens.json"]["aspect_ratio"] = sample["aspect_ratio"]  # the bucket's template h/w
            if sample["cls"] >= 0:
                record["cls"] = str(sample["cls"])
            if sample["caption"]:
                record["json"] = {"caption": sample["caption"]}
            writer.write(record)
        written += len(group)
        if progress is not None:
            progress.update(len(group))
        group.clear()

    with wds.TarWriter(str(tmp)) as writer:
        for record in _records(url, skipped):
            try:
                sample = decode_record(record, spec, rng=None)
            except (MediaDecodeError, OSError, ValueError) as err:
                skipped[0] += 1
                print(f"warning: skipping {record.get('__key__')}: {err}", file=sys.stderr)
                continue
            group = pending.setdefault(tuple(sample["pixels"].shape), [])
            group.append(sample)
            if len(group) >= batch_size:
                flush(writer, group)
        for group in pending.values():
            flush(writer, group)
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
    parser.add_argument("--pixel-budget", default=None, choices=sorted(PIXEL_BUDGETS),
                        help="aspect-ratio buckets under this budget instead of the square crop (T2I shards)")
    parser.add_argument("--text-encoder-config", default=None,
                        help="YAML/JSON {class_path, init_args} of the text encoder (or a T2X config): cache its states")
    parser.add_argument("--text-task", default="t2i", choices=["t2i", "t2v", "i2v"], help="task tag of the cached states")
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
    spec = SampleSpec(kind="image", resolution=args.resolution, pixel_budget=args.pixel_budget, random_flip=False)
    text = None
    if args.text_encoder_config is not None:
        text = TextStates(build_part(args.text_encoder_config, "text_encoder").to(device), args.text_task)

    todo = [u for u in urls if not (out_dir / Path(u).name).exists()]
    print(f"{len(urls)} shards, {len(urls) - len(todo)} already complete, {len(todo)} to tokenize", file=sys.stderr)
    from tqdm.auto import tqdm

    results = []
    with tqdm(desc="tokenizing", unit="img", disable=args.no_progress) as bar:
        for url in todo:
            result = tokenize_shard(
                url, out_dir / Path(url).name, tokenizer, spec, args.batch_size, num_rounds, device, args.bf16, bar,
                text=text,
            )
            results.append(result)
            print(json.dumps(result), file=sys.stderr)
    total = sum(r["records"] for r in results)
    print(json.dumps({"shards_done": len(results), "records": total, "skipped": sum(r["skipped"] for r in results)}))
    return results


if __name__ == "__main__":
    main()
