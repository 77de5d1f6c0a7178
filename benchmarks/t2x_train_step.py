#!/usr/bin/env python
"""T2I training throughput and MFU through the real data path and `T2XModule.training_step` (Lightning, bf16-mixed).

    python benchmarks/t2x_train_step.py                          # GRN2b, token shards with cached text, 8 workers
    python benchmarks/t2x_train_step.py --data media             # on the fly: JPEG shards, VAE encode, umT5-XXL
    python benchmarks/t2x_train_step.py --size tiny --batch 4 --grid 8 --budget 8192 --device cpu --steps 1 \
        --warmup 1 --compile none --attention sdpa --encoders tiny --workers 1     # CPU smoke run

Both paths read shards through `GRNDataModule` (loader workers, pinned copies), written first by
benchmarks/synthetic_shards.py in `--work` (random contents, real sizes):
- `shards`: token shards of 32×32 latents (C = 64, M = 4: one 1:1 0.25M-pixel image) with cached umT5 states of
  60–400 tokens × 4096 (bf16), the output of tools/tokenize_shards.py --text-encoder-config; no encoder runs.
- `media`: 512² JPEGs with captions of 15–90 words; the step runs the released-size C = 64 HBQ tokenizer's encoder
  and a random-initialised umT5-XXL of the true structure (24 layers, 4096 wide, bf16; byte-level tokenizer, so a
  caption is as many tokens as bytes) on every step. Their time is in the step, their FLOPs are not counted.
The step is the module's own: host plan + device corruption and packing into one row padded to the budget, forward
with flex_attention over the block-diagonal mask, packed loss, backward, clip 0.1, AdamW, EMA. MFU with the one
FLOP counter (grn_lightning/training/flops.py, SPEC §11) over the real tokens of the generator; peak
`--peak-tflops` (790, H200). One JSON line on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile

import grn_lightning  # noqa: F401  (torchvision compatibility before lightning)
import lightning as L
import torch
from c2i_train_step import PEAK_TFLOPS, StepTimer
from synthetic_shards import write_image_shards, write_token_shards

UMT5_XXL = {"d_model": 4096, "d_kv": 64, "d_ff": 10240, "num_layers": 24, "num_heads": 64, "vocab_size": 256384,
            "feed_forward_proj": "gated-gelu", "relative_attention_num_buckets": 32,
            "relative_attention_max_distance": 128}  # fmt: skip
UMT5_TINY = {"d_model": 64, "d_kv": 16, "d_ff": 128, "num_layers": 1, "num_heads": 4, "vocab_size": 384}


def _encoders(args: argparse.Namespace):
    """(tokenizer, text encoder) of the on-the-fly path, built on the device (a 5.7B umT5 initialises in seconds
    there, in minutes on the host)."""
    from grn_lightning.generator.t2x.text import UMT5TextEncoder
    from grn_lightning.tokenizer.vae import HBQTokenizer

    full = args.encoders == "full"
    device = torch.device("cuda" if args.device == "gpu" else "cpu")
    with device:
        tokenizer = HBQTokenizer(latent_channels=64, num_rounds=4, preset="released" if full else "tiny")
        text = UMT5TextEncoder(random_init=UMT5_XXL if full else UMT5_TINY, max_length=512, dtype="bfloat16",
                               cache_size=0)  # fmt: skip  (unique captions: a cache only adds copies)
    return tokenizer, text


def run(args: argparse.Namespace) -> dict:
    from grn_lightning.data.datamodule import GRNDataModule
    from grn_lightning.generator.options import Corruption, Parallelism
    from grn_lightning.generator.t2x.model import GRNT2XTransformer
    from grn_lightning.generator.t2x.module import Packing, T2XModule
    from grn_lightning.training.flops import t2x_step_flops

    torch.set_float32_matmul_precision("high")
    work = args.work or tempfile.mkdtemp(prefix="t2x_bench_")
    records = max(4 * args.batch, 64)
    tokenizer = text = None
    if args.data == "shards":
        pattern = write_token_shards(os.path.join(work, "tokens"), records, 8, 64, 4, (args.grid, args.grid),
                                     text_width=args.text_width)  # fmt: skip
        data = GRNDataModule(kind="tokens", train_shards=pattern, batch_size=args.batch, num_workers=args.workers,
                             shuffle_buffer=64, random_flip=True)  # fmt: skip
        text_dim = args.text_width
    else:
        pattern = write_image_shards(os.path.join(work, "media"), records, 8, (16 * args.grid, 16 * args.grid))
        budget = {16: "0.06M", 32: "0.25M", 40: "0.41M", 64: "1M"}[args.grid]
        data = GRNDataModule(kind="image", train_shards=pattern, pixel_budget=budget, batch_size=args.batch,
                             num_workers=args.workers, shuffle_buffer=64)  # fmt: skip
        tokenizer, text = _encoders(args)
        text_dim = text.width
    transformer = GRNT2XTransformer(size=args.size, variant="bit", channels=64, rounds=4, text_dim=text_dim,
                                    attention=args.attention)  # fmt: skip
    module = T2XModule(transformer, tokenizer=tokenizer, text_encoder=text,
                       packing=Packing(token_budget=args.budget, pad_to_budget=True, max_rows=1),
                       corruption=Corruption(ratio_mu=-1.3, ratio_sigma=1.3, condition_dropout=0.1),
                       parallelism=Parallelism(compile=args.compile,
                                               activation_checkpointing=args.activation_checkpointing))  # fmt: skip
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
        enable_model_summary=False, callbacks=[Tokens(), timer], log_every_n_steps=50,
    )  # fmt: skip
    trainer.fit(module, datamodule=data)
    step_s = timer.elapsed / args.steps
    params = sum(p.numel() for p in module.model.parameters())
    flops = t2x_step_flops(module.model, seen["lengths"], seen["text"]).total
    tokens = sum(seen["lengths"])
    gpu = args.device == "gpu"
    return {
        "benchmark": "t2x_train_step", "data": args.data, "encoders": args.encoders if args.data == "media" else None,
        "workers": args.workers, "size": args.size, "images": args.batch, "budget": args.budget, "rows": seen["rows"],
        "real_tokens": tokens, "text_tokens": seen["text"], "dropped": seen["dropped"], "attention": args.attention,
        "compile": args.compile, "activation_checkpointing": args.activation_checkpointing, "params": params,
        "step_ms": round(step_s * 1e3, 1), "images_per_s": round(args.batch / step_s, 1),
        "tokens_per_s": round(tokens / step_s), "tflops_per_s": round(flops / step_s / 1e12, 1),
        "mfu": round(flops / step_s / (args.peak_tflops * 1e12), 4), "peak_tflops": args.peak_tflops,
        "flop_counter": "grn_lightning.training.flops (SPEC §11)", "torch": torch.__version__,
        "peak_mem_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if gpu else None,
        "device": torch.cuda.get_device_name() if gpu else "cpu (smoke run: timings not meaningful)",
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="shards", choices=["shards", "media"],
                        help="token shards with cached text, or media shards encoded on the fly")
    parser.add_argument("--encoders", default="full", choices=["full", "tiny"],
                        help="media: released-size VAE + umT5-XXL structure, or tiny ones (CPU smoke runs)")
    parser.add_argument("--size", default="GRN2b")
    parser.add_argument("--batch", type=int, default=32, help="images per step (one packed row at the default budget)")
    parser.add_argument("--grid", type=int, default=32, help="latent side (32 = 512² pixels)")
    parser.add_argument("--budget", type=int, default=40960, help="tokens per packed row")
    parser.add_argument("--text-width", type=int, default=4096, help="width of the cached text states (umT5-XXL)")
    parser.add_argument("--workers", type=int, default=8, help="DataLoader workers")
    parser.add_argument("--work", default=None, help="folder for the synthetic shards (default: a temporary one)")
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
