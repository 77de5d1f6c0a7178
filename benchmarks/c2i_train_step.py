#!/usr/bin/env python
"""C2I training throughput and MFU through the real `C2IModule.training_step` (Lightning Trainer, bf16-mixed).

    python benchmarks/c2i_train_step.py                       # GRN-B batch 256 and GRN-L batch 128, compile=block
    python benchmarks/c2i_train_step.py --sizes B --batch 256 --compile none --steps 30

Token batches are synthetic index labels of the real geometry (16×16 tokens, C = 16, M = 4); the step is the
module's own: corruption, class dropout, forward, CE, backward, clip 0.1, AdamW, EMA update (two tracks).
MFU with the one FLOP counter (grn_lightning/training/flops.py, SPEC §11): blocks on 288 tokens (256 image + 32
in-context), embedding and head on 256, adaLN and the ratio MLP once per image, attention 12·depth·width·288² per
image; peak `--peak-tflops` (default 790: the H200's measured dense bf16 matmul rate), stated in the output.
Before 2026-12-05 this script counted 6·(all parameters)·288 per image with a 760 peak, which overstated
GRN-B's FLOPs 1.5× (BENCHMARKS.md). `--data shards` reads synthetic token shards of the real geometry through
GRNDataModule (loader workers, random flips, pinned copies) instead of repeating one batch on the device.
One JSON line per size on stdout.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import grn_lightning  # noqa: F401  (torchvision compatibility before lightning)
import lightning as L
import torch

PEAK_TFLOPS = 790.0  # H200 dense bf16, measured on an 8192³ product (SPEC §11)


class RepeatedTokens(torch.utils.data.IterableDataset):
    """The same random token batch forever (no data-loading cost in the measurement)."""

    def __init__(self, batch: int, channels: int, rounds: int, grid: int, num_classes: int, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.item = {
            "tokens": torch.randint(0, 2**rounds, (batch, channels, 1, grid, grid), generator=g),
            "cls": torch.randint(0, num_classes, (batch,), generator=g),
            "valid": torch.ones(batch, dtype=torch.bool),
        }

    def __iter__(self):
        while True:
            yield self.item


class StepTimer(L.Callback):
    """Wall time of optimiser steps after `warmup` steps (compile, autotuning) with CUDA synchronisation."""

    def __init__(self, warmup: int) -> None:
        self.warmup, self.times, self._start = warmup, [], None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx == self.warmup:
            if torch.cuda.is_available():
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            self._start = time.perf_counter()

    def on_train_end(self, trainer, pl_module) -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.elapsed = time.perf_counter() - self._start


class KernelProfile(L.Callback):
    """--profile: torch.profiler over 3 steps after warm-up; the top kernels by GPU time go to stderr."""

    def __init__(self, warmup: int) -> None:
        self.warmup, self.prof = warmup, None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx == self.warmup:
            from torch.profiler import ProfilerActivity, profile

            self.prof = profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA])
            self.prof.__enter__()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.prof is not None and batch_idx == self.warmup + 2:
            torch.cuda.synchronize()
            self.prof.__exit__(None, None, None)
            table = self.prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=30, max_name_column_width=70)
            print(table, file=sys.stderr, flush=True)
            self.prof = None


def _shard_data(module, batch: int, workers: int, work: str | None):
    """GRNDataModule over synthetic token shards of the real geometry (benchmarks/synthetic_shards.py)."""
    import os
    import tempfile

    from synthetic_shards import write_token_shards

    from grn_lightning.data.datamodule import GRNDataModule

    net = module.model
    folder = os.path.join(work or tempfile.mkdtemp(prefix="c2i_bench_"), "tokens")
    pattern = write_token_shards(folder, max(8 * batch, 512), 8, net.channels, net.rounds, net.grid, num_classes=1000)
    return GRNDataModule(kind="tokens", train_shards=pattern, batch_size=batch, num_workers=workers,
                         shuffle_buffer=256, random_flip=True)  # fmt: skip


def run(size: str, batch: int, variant: str, compile_mode: str, steps: int, warmup: int, ac: bool, device: str,
        profile: bool = False, peak_tflops: float = PEAK_TFLOPS, data: str = "repeat", workers: int = 8,
        work: str | None = None) -> dict:
    from grn_lightning.generator.c2i.model import GRNC2ITransformer
    from grn_lightning.generator.c2i.module import C2IModule
    from grn_lightning.generator.options import EMATracks, Optimization, Parallelism
    from grn_lightning.training.flops import c2i_step_flops

    torch.set_float32_matmul_precision("high")
    module = C2IModule(
        GRNC2ITransformer(size=size, variant=variant), optimization=Optimization(lr=2e-4),
        ema=EMATracks(decay=0.9999, decay_2=0.9996),
        parallelism=Parallelism(compile=compile_mode, activation_checkpointing=ac),
    )  # fmt: skip
    model = module.model
    params = sum(p.numel() for p in model.parameters())
    seq = model.num_tokens + model.in_context_tokens
    if data == "shards":
        loader, datamodule = None, _shard_data(module, batch, workers, work)
    else:
        datamodule = None
        loader = torch.utils.data.DataLoader(
            RepeatedTokens(batch, model.channels, model.rounds, model.grid[0], 1000),
            batch_size=None, pin_memory=True,
        )  # fmt: skip
    timer = StepTimer(warmup)
    trainer = L.Trainer(
        accelerator=device, devices=1, precision="bf16-mixed", max_steps=warmup + steps, gradient_clip_val=0.1,
        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        callbacks=[timer] + ([KernelProfile(warmup)] if profile else []), log_every_n_steps=50,
    )  # fmt: skip
    trainer.fit(module, loader, datamodule=datamodule)
    step_s = timer.elapsed / steps
    flops = c2i_step_flops(model, batch).total
    return {
        "benchmark": "c2i_train_step", "data": data, "workers": workers if data == "shards" else None, "size": size, "variant": variant, "batch": batch, "compile": compile_mode,
        "activation_checkpointing": ac, "precision": "bf16-mixed", "params": params, "seq_len": seq,
        "step_ms": round(step_s * 1e3, 2), "images_per_s": round(batch / step_s, 1),
        "tflops_per_s": round(flops / step_s / 1e12, 1), "mfu": round(flops / step_s / (peak_tflops * 1e12), 4),
        "peak_tflops": peak_tflops, "flop_counter": "grn_lightning.training.flops (SPEC §11)", "torch": torch.__version__,
        "peak_mem_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if device == "gpu" else None,
        "device": torch.cuda.get_device_name() if device == "gpu" else "cpu (smoke run: timings not meaningful)",
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", nargs="+", default=["B", "L"], help="GRN_C2I sizes")
    parser.add_argument("--batch", nargs="+", type=int, default=None, help="batch per size (default B 256, L 128)")
    parser.add_argument("--variant", default="ind", choices=["ind", "bit"])
    parser.add_argument("--compile", default="block", choices=["none", "block", "model"])
    parser.add_argument("--activation-checkpointing", action="store_true")
    parser.add_argument("--steps", type=int, default=30, help="timed steps")
    parser.add_argument("--warmup", type=int, default=10, help="untimed steps first (compilation)")
    parser.add_argument("--profile", action="store_true", help="top GPU kernels of 3 steps to stderr (slows them)")
    parser.add_argument("--device", default="gpu", choices=["gpu", "cpu"], help="cpu: a smoke run of the script")
    parser.add_argument("--peak-tflops", type=float, default=PEAK_TFLOPS, help="dense bf16 peak of the device")
    parser.add_argument("--data", default="repeat", choices=["repeat", "shards"],
                        help="one batch repeated, or synthetic token shards through GRNDataModule (loader workers)")
    parser.add_argument("--workers", type=int, default=8, help="DataLoader workers with --data shards")
    parser.add_argument("--work", default=None, help="folder for the synthetic shards (default: a temporary one)")
    args = parser.parse_args()
    if args.device == "gpu" and not torch.cuda.is_available():
        raise SystemExit("this benchmark needs a CUDA GPU (or --device cpu for a smoke run)")
    defaults = {"B": 256, "L": 128, "H": 64, "G": 32, "tiny": 256}
    batches = args.batch or [defaults.get(s, 64) for s in args.sizes]
    if len(batches) != len(args.sizes):
        parser.error("--batch needs one value per --sizes entry")
    for size, batch in zip(args.sizes, batches):
        print(json.dumps(run(size, batch, args.variant, args.compile, args.steps, args.warmup,
                             args.activation_checkpointing, args.device, args.profile, args.peak_tflops, args.data,
                             args.workers, args.work)), flush=True)  # fmt: skip
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
