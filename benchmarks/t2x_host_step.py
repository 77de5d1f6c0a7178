#!/usr/bin/env python
"""Host time of one T2X step's data preparation (corruption + packing) at the GRN2b geometry, on the CPU.

    python benchmarks/t2x_host_step.py                 # 32 images of 32×32 tokens × 256 bits, one 40,960-token row

What is timed is `T2XModule.packed_batch` (everything between the batch on the device and the transformer's inputs)
with the text states given (cached text, as from token shards with text states; the umT5 forward is not part of
it). The module sits on the CPU, so "device" work runs on the CPU too: `total_ms` is everything. `host_ms`
is the part that stays on the host when the module is on a GPU: the packing plan from integer lengths
(`bucket_packing.plan_bucket`) plus the host draws (tasks, caption dropout); the corruption, placement and loss
inputs are device kernels then. The old path (before the device-resident step) did all of it on the host, so its
host time is its CPU total. With `--device cuda` the module and the batch sit on the GPU: `host_ms` is then the
wall time of the call itself (kernel launches are asynchronous: what the host spends, dispatch included) and
`total_ms` the time until the GPU finished. One JSON line on stdout; median of `--repeats`
runs after one warm-up.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import grn_lightning  # noqa: F401  (torchvision compatibility before lightning)
import torch
from torch import nn


class GivenTextStates(nn.Module):
    """A text encoder whose states are precomputed (the cached-text path): `encode` only looks them up."""

    def __init__(self, captions: list[str], width: int = 4096, seed: int = 0, device: str = "cpu") -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.width = width
        self.states = {c: torch.randn(len(c) // 4 + 2, width, generator=g).bfloat16().to(device) for c in captions}
        self.states[""] = torch.randn(2, width, generator=g).bfloat16().to(device)

    def encode(self, captions, task="t2i"):
        return [self.states[c] for c in captions]


def _batch(images: int, grid: int, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    captions = [f"caption {i} " + "x" * int(torch.randint(40, 400, (1,), generator=g)) for i in range(images)]
    return {
        "tokens": torch.randint(0, 16, (images, 64, 1, grid, grid), generator=g, dtype=torch.uint8),
        "caption": captions,
        "aspect_ratio": [1.0] * images,
    }


def run(args: argparse.Namespace) -> dict:
    from grn_lightning.generator.t2x.model import GRNT2XTransformer
    from grn_lightning.generator.t2x.module import Packing, T2XModule

    torch.set_num_threads(args.threads)
    cuda = args.device == "cuda"
    batch = _batch(args.images, args.grid)
    text = GivenTextStates(batch["caption"], device=args.device)
    module = T2XModule(GRNT2XTransformer(size="tiny", variant="bit", channels=64, rounds=4, text_dim=4096),
                       text_encoder=text,
                       packing=Packing(token_budget=args.budget, pad_to_budget=True, max_rows=1)).to(args.device)  # fmt: skip
    batch["tokens"] = batch["tokens"].to(args.device)
    totals, hosts = [], []
    for i in range(args.repeats + 1):
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        packed = module.packed_batch(batch)
        returned = time.perf_counter() - start
        if cuda:
            torch.cuda.synchronize()
        total = time.perf_counter() - start
        host = returned if cuda else getattr(module, "last_host_seconds", total)
        if i:
            totals.append(total)
            hosts.append(host)
    real = int((packed.segment_ids >= 0).sum())
    return {
        "benchmark": "t2x_host_step", "images": args.images, "grid": args.grid, "bits": 256, "budget": args.budget,
        "rows": packed.segment_ids.shape[0], "real_tokens": real, "threads": args.threads, "device": args.device,
        "total_ms": round(statistics.median(totals) * 1e3, 1), "host_ms": round(statistics.median(hosts) * 1e3, 2),
        "state_dtype": str(packed.state.dtype), "torch": torch.__version__,
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--grid", type=int, default=32, help="latent side (32 = a 1:1 0.25M-pixel image)")
    parser.add_argument("--budget", type=int, default=40960)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (the 2-core machine is shared)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where the module and batch sit")
    print(json.dumps(run(parser.parse_args())), flush=True)


if __name__ == "__main__":
    main()
