"""Learning check on real data: a tiny HBQ tokenizer trained on the demo photos beats its untrained PSNR on
held-out photos (different pictures than the training ones). Prints one JSON line.

    python benchmarks/tokenizer_cpu_psnr.py                 # 300 steps on CPU, a few minutes
    python benchmarks/tokenizer_cpu_psnr.py --steps 60      # the test's short version

The demo shards are built (once) under --root unless --train-shards/--test-shards are given.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import grn_lightning  # noqa: F401  (before lightning)

import lightning as L
import torch

from grn_lightning.data.datamodule import GRNDataModule
from grn_lightning.tokenizer.discriminator import PatchDiscriminator
from grn_lightning.tokenizer.losses import TokenizerLoss
from grn_lightning.tokenizer.module import TokenizerModule
from grn_lightning.tokenizer.vae import HBQTokenizer


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=300, help="generator (= discriminator) steps")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--resolution", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--gan-weight", type=float, default=0.05)
    p.add_argument("--perceptual-weight", type=float, default=0.0, help="LPIPS weight (random VGG trunk offline)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train-shards", default=None)
    p.add_argument("--test-shards", default=None)
    p.add_argument("--root", default=None, help="work folder (demo shards, logs); default: a temporary folder")
    args = p.parse_args()

    torch.set_num_threads(args.threads)
    root = args.root or tempfile.mkdtemp(prefix="tokenizer_cpu_psnr_")
    train, test = args.train_shards, args.test_shards
    if train is None or test is None:
        from grn_lightning.data.demo import build_demo_data

        shards = build_demo_data(os.environ.get("GRN_DEMO_DATA") or os.path.join(root, "demo"))
        train, test = train or shards["images-train"], test or shards["images-test"]

    L.seed_everything(args.seed, verbose=False)

    def optimizer(params):
        return torch.optim.AdamW(params, lr=args.lr, betas=(0.9, 0.95), weight_decay=0.01)

    module = TokenizerModule(
        tokenizer=HBQTokenizer(preset="tiny", latent_channels=16, num_rounds=4),
        discriminator=PatchDiscriminator(base_channels=16, num_layers=2),
        loss=TokenizerLoss("image", perceptual_weight=args.perceptual_weight, gan_weight=args.gan_weight,
                           random_backbone=True),
        optimizer=optimizer, disc_optimizer=optimizer, ema_decay=None, num_logged_samples=0,
    )  # fmt: skip
    data = GRNDataModule(
        kind="image", train_shards=train, test_shards=test, resolution=args.resolution, batch_size=args.batch_size,
        val_batch_size=16, num_workers=0, shuffle_buffer=64, seed=args.seed,
    )  # fmt: skip
    trainer = L.Trainer(
        accelerator="cpu", devices=1, max_steps=args.steps, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=root, limit_val_batches=0,
    )  # fmt: skip
    (before,) = trainer.test(module, datamodule=data, verbose=False)
    start = time.time()
    trainer.fit(module, datamodule=data)
    seconds = time.time() - start
    (after,) = trainer.test(module, datamodule=data, verbose=False)
    print(json.dumps({
        "benchmark": "tokenizer_cpu_psnr", "steps": trainer.global_step, "batch_size": args.batch_size,
        "resolution": args.resolution, "psnr_untrained": before["test/psnr"], "psnr_trained": after["test/psnr"],
        "ssim_untrained": before["test/ssim"], "ssim_trained": after["test/ssim"], "train_seconds": round(seconds, 1),
        "threads": args.threads,
    }))  # fmt: skip


if __name__ == "__main__":
    main()
