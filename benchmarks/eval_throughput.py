#!/usr/bin/env python
"""Throughput of the evaluation feature networks (random-init weights: speed does not depend on the values).

One JSON line per measurement:
    python benchmarks/eval_throughput.py                       # Inception batch 256 (256x256), I3D batch 16 (16x224x224)
    python benchmarks/eval_throughput.py --only inception --inception-batch 512 --steps 20

Inception: images/s of ``InceptionFeatureExtractor`` (uint8 quantise + resize to 299 + pool3/logits).
I3D: clips/s of ``I3DFeatureExtractor`` (resize/crop to 224 + logits). Both in fp32, as the metrics run.
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import grn_lightning  # noqa: F401  (torchvision compatibility)
import torch


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _measure(fn, batch: torch.Tensor, warmup: int, steps: int, device: torch.device) -> float:
    for _ in range(warmup):
        fn(batch)
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        fn(batch)
    _sync(device)
    return (time.perf_counter() - start) / steps


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=("inception", "i3d"), default=None)
    parser.add_argument("--inception-batch", type=int, default=256)
    parser.add_argument("--image-size", type=int, default=256, help="input image side (resized to 299 inside)")
    parser.add_argument("--i3d-batch", type=int, default=16)
    parser.add_argument("--frames", type=int, default=16, help="frames per clip (>= 9)")
    parser.add_argument("--clip-size", type=int, default=224, help="input clip side (resized/cropped to 224 inside)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--device", default=None, help="default: cuda if available")
    args = parser.parse_args(argv)

    from grn_lightning.eval.features import InceptionFeatureExtractor
    from grn_lightning.eval.i3d import I3DFeatureExtractor

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    base = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__, "dtype": "float32", "warmup": args.warmup, "steps": args.steps,
    }  # fmt: skip
    generator = torch.Generator().manual_seed(0)
    if args.only in (None, "inception"):
        net = InceptionFeatureExtractor(random_init=True).to(device)
        batch = (torch.rand(args.inception_batch, 3, args.image_size, args.image_size, generator=generator) * 2 - 1)
        seconds = _measure(net, batch.to(device), args.warmup, args.steps, device)
        print(json.dumps({
            **base, "benchmark": "inception_features", "batch": args.inception_batch,
            "input": [3, args.image_size, args.image_size], "seconds_per_batch": round(seconds, 5),
            "images_per_s": round(args.inception_batch / seconds, 1),
        }), flush=True)  # fmt: skip
        del net, batch
    if args.only in (None, "i3d"):
        net = I3DFeatureExtractor(random_init=True).to(device)
        shape = (args.i3d_batch, 3, args.frames, args.clip_size, args.clip_size)
        batch = torch.rand(shape, generator=generator) * 2 - 1
        seconds = _measure(net, batch.to(device), args.warmup, args.steps, device)
        print(json.dumps({
            **base, "benchmark": "i3d_logits", "batch": args.i3d_batch, "input": list(shape[1:]),
            "seconds_per_batch": round(seconds, 5), "clips_per_s": round(args.i3d_batch / seconds, 2),
        }), flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
