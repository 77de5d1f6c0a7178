#!/usr/bin/env python
"""T2I training throughput and MFU through the real `T2XModule.training_step` (Lightning Trainer, bf16-mixed).

    python benchmarks/t2x_train_step.py                          # GRN2b, one 40,960-token row of 512² images
    python benchmarks/t2x_train_step.py --size GRN0b --batch 8 --budget 8192 --device cpu --steps 2 --warmup 1

Token batches are synthetic bit labels of the release geometry (C = 64, M = 4, 32×32 tokens = a 1:1 0.25M-pixel
image) with captions of 60–400 bytes; the step is the module's own: host-side corruption and packing into one row
padded to the budget, forward with flex_attention over the block-diagonal mask, packed loss, backward, clip 0.1,
AdamW, EMA. The text encoder is a one-layer random umT5 of the XXL width (4096): its cost is NOT the umT5-XXL's and
is not counted. MFU with the one FLOP counter (grn_lightning/training/flops.py, SPEC §11) over the real tokens:
blocks, state embedding and head per token, text projection per text token, ratio MLP per sample, attention
12·depth·width·Σ n_s² inside each sample; peak `--peak-tflops` (790, H200). One JSON line on stdout.
"""

from __future__ import annotations

import argparse
import json
import random

import grn_lightning  # noqa: F401  (torchvision compatibility before lightning)
import lightning as L
import torch
from c2i_train_step import PEAK_TFLOPS, RepeatedTokens, StepTimer


class CaptionedTokens(RepeatedTokens):
    """RepeatedTokens plus fixed random captions of 60-400 characters (ByT5 bytes: as many text tokens)."""

    def __init__(self, batch: int, channels: int, rounds: int, grid: int, seed: int = 0) -> None:
        super().__init__(batch, channels, rounds, grid, num_classes=1, seed=seed)
        rng = random.Random(seed)
        self.item["caption"] = ["".join(rng.choice("abcdefgh ") for _ in range(rng.randint(60, 400))) for _ in range(batch)]


def run(args: argparse.Namespace) -> dict:
    from grn_lightning.generator.t2x.module import T2XModule
    from grn_lightning.generator.t2x.text import UMT5TextEncoder
    from grn_lightning.training.flops import t2x_step_flops

    torch.set_float32_matmul_precision("high")
    text = UMT5TextEncoder(random_init={"d_model": 4096, "d_kv": 64, "d_ff": 256, "num_layers": 1, "num_heads": 4,
                                        "vocab_size": 384}, max_length=512, dtype="bfloat16")  # fmt: skip
    module = T2XModule(size=args.size, variant="bit", channels=64, rounds=4, text_encoder=text, text_dim=4096,
                       attention=args.attention, token_budget=args.budget, pad_to_budget=True, caption_dropout=0.0,
                       compile=args.compile, activation_checkpointing=args.activation_checkpointing)  # fmt: skip
    data = CaptionedTokens(args.batch, 64, 4, args.grid)
    seen = {}

    class Tokens(L.Callback):  # real (unpadded) tokens per sample and text tokens, from the module's own packing
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if not seen:
                packed = pl_module.packed_batch(batch, dropout=False)
                n = torch.bincount(packed.segment_ids[packed.segment_ids >= 0].flatten().cpu())
                seen.update(lengths=n.tolist(), text=int(packed.text.shape[0]), rows=packed.segment_ids.shape[0],
                            dropped=packed.num_dropped)  # fmt: skip

    timer = StepTimer(args.warmup)
    trainer = L.Trainer(
        accelerator=args.device, devices=1, precision="bf16-mixed", max_steps=args.warmup + args.steps,
        gradient_clip_val=0.1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, callbacks=[Tokens(), timer],
    )  # fmt: skip
    trainer.fit(module, torch.utils.data.DataLoader(data, batch_size=None))
    step_s = timer.elapsed / args.steps
    params = sum(p.numel() for p in module.model.parameters())
    flops = t2x_step_flops(module.model, seen["lengths"], seen["text"]).total
    seen["tokens"] = sum(seen["lengths"])
    gpu = args.device == "gpu"
    return {
        "benchmark": "t2x_train_step", "size": args.size, "images": args.batch, "budget": args.budget,
        "rows": seen["rows"], "real_tokens": seen["tokens"], "dropped": seen["dropped"], "attention": args.attention,
        "compile": args.compile, "activation_checkpointing": args.activation_checkpointing, "params": params,
        "step_ms": round(step_s * 1e3, 1), "images_per_s": round(args.batch / step_s, 1),
        "tokens_per_s": round(seen["tokens"] / step_s), "tflops_per_s": round(flops / step_s / 1e12, 1),
        "mfu": round(flops / step_s / (args.peak_tflops * 1e12), 4), "peak_tflops": args.peak_tflops,
        "flop_counter": "grn_lightning.training.flops (SPEC §11)", "torch": torch.__version__,
        "peak_mem_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if gpu else None,
        "device": torch.cuda.get_device_name() if gpu else "cpu (smoke run: timings not meaningful)",
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="GRN2b")
    parser.add_argument("--batch", type=int, default=32, help="images per step (one packed row at the default budget)")
    parser.add_argument("--grid", type=int, default=32, help="latent side (32 = 512² pixels)")
    parser.add_argument("--budget", type=int, default=40960, help="tokens per packed row")
    parser.add_argument("--attention", default="flex", choices=["flex", "sdpa"])
    parser.add_argument("--compile", default="block", choices=["none", "block"])
    parser.add_argument("--activation-checkpointing", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--device", default="gpu", choices=["gpu", "cpu"])
    parser.add_argument("--peak-tflops", type=float, default=PEAK_TFLOPS, help="dense bf16 peak of the device")
    args = parser.parse_args()
    if args.device == "gpu" and not torch.cuda.is_available():
        raise SystemExit("this benchmark needs a CUDA GPU (or --device cpu for a smoke run)")
    print(json.dumps(run(args)), flush=True)


if __name__ == "__main__":
    main()
