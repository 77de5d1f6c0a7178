#!/usr/bin/env python
"""HBQ tokenizer training-step throughput through the real `TokenizerModule` (SPEC §2), bf16-mixed vs fp32.

    python benchmarks/tokenizer_step.py                          # image C=16 256² b8 and video C=64 17×256² b1
    python benchmarks/tokenizer_step.py --only image --precisions bf16-mixed 32-true
    python benchmarks/tokenizer_step.py --device cpu --preset tiny --size 32 --frames 5 --steps 2 --warmup 1  # smoke

One step is the module's own: tokenizer forward (encoder, HBQ, decoder), L1 + LPIPS-VGG + PatchGAN generator
loss, discriminator hinge loss on real and fake, one backward, two clipped AdamW steps, EMA update. LPIPS uses a
random VGG trunk of the true structure (identical FLOPs; no weight file needed). Inputs are random pixels in
[-1, 1] repeated every step, so data loading costs nothing. Precisions:
  bf16-mixed   the configs' setting;
  32-true      strict fp32 (TF32 off for matmuls and cuDNN convolutions): the baseline of the issue's 2× target;
  32-tf32      fp32 weights with TF32 tensor-core math (PyTorch's cuDNN default), for reference.
One JSON line per (kind, precision) on stdout: images_per_s counts frames (an image is a 1-frame clip).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import grn_lightning  # noqa: F401  (torchvision compatibility before lightning)
import lightning as L
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from c2i_train_step import StepTimer  # noqa: E402  (same timing callback as the C2I benchmark)

KINDS = {  # kind -> (latent channels, loss preset): the two full configs
    "image": (16, "image"),
    "video": (64, "joint"),
}


class RepeatedPixels(torch.utils.data.IterableDataset):
    def __init__(self, batch: int, frames: int, size: int) -> None:
        g = torch.Generator().manual_seed(0)
        self.item = {"pixels": torch.rand(batch, 3, frames, size, size, generator=g) * 2 - 1,
                     "valid": torch.ones(batch, dtype=torch.bool)}  # fmt: skip

    def __iter__(self):
        while True:
            yield self.item


def _set_tf32(enabled: bool) -> None:
    torch.backends.cuda.matmul.allow_tf32 = enabled
    torch.backends.cudnn.allow_tf32 = enabled


def run(kind: str, precision: str, batch: int, frames: int, args) -> dict:
    from grn_lightning.tokenizer.discriminator import PatchDiscriminator
    from grn_lightning.tokenizer.losses import TokenizerLoss
    from grn_lightning.tokenizer.module import TokenizerModule
    from grn_lightning.tokenizer.vae import HBQTokenizer

    channels, preset = KINDS[kind]
    _set_tf32(precision != "32-true")
    torch.manual_seed(0)
    module = TokenizerModule(
        tokenizer=HBQTokenizer(preset=args.preset, latent_channels=channels, num_rounds=4),
        discriminator=PatchDiscriminator(), loss=TokenizerLoss(preset, random_backbone=True, gan_start_step=0),
        ema_decay=0.9999, num_logged_samples=0,
    )  # fmt: skip
    data = torch.utils.data.DataLoader(RepeatedPixels(batch, frames, args.size), batch_size=None, pin_memory=True)
    timer = StepTimer(args.warmup)
    trainer = L.Trainer(
        accelerator=args.device, devices=1, precision="32-true" if precision == "32-tf32" else precision,
        max_steps=args.warmup + args.steps, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, callbacks=[timer], log_every_n_steps=50,
    )  # fmt: skip
    trainer.fit(module, data)
    step_s = timer.elapsed / args.steps
    gpu = args.device == "gpu"
    return {
        "benchmark": "tokenizer_step", "kind": kind, "precision": precision, "preset": args.preset,
        "latent_channels": channels, "loss_preset": preset, "batch": batch, "frames": frames, "size": args.size,
        "tokenizer_params": module.num_tokenizer_parameters, "step_ms": round(step_s * 1e3, 1),
        "images_per_s": round(batch * frames / step_s, 2), "clips_per_s": round(batch / step_s, 3),
        "peak_mem_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if gpu else None,
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name() if gpu else "cpu (smoke run: timings not meaningful)",
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=sorted(KINDS), default=None)
    parser.add_argument("--precisions", nargs="+", default=["bf16-mixed", "32-true", "32-tf32"],
                        choices=["bf16-mixed", "32-true", "32-tf32"])  # fmt: skip
    parser.add_argument("--preset", default="released", help="VAE preset (released = the full tokenizer)")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--image-batch", type=int, default=8)
    parser.add_argument("--video-batch", type=int, default=1)
    parser.add_argument("--frames", type=int, default=17, help="video clip length, 1 + 4k")
    parser.add_argument("--steps", type=int, default=8, help="timed steps")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (cuDNN autotuning)")
    parser.add_argument("--device", default="gpu", choices=["gpu", "cpu"], help="cpu: a smoke run of the script")
    args = parser.parse_args()
    if args.device == "gpu" and not torch.cuda.is_available():
        raise SystemExit("this benchmark needs a CUDA GPU (or --device cpu for a smoke run)")
    torch.backends.cudnn.benchmark = True
    shapes = {"image": (args.image_batch, 1), "video": (args.video_batch, args.frames)}
    for kind in [args.only] if args.only else list(KINDS):
        for precision in args.precisions:
            batch, frames = shapes[kind]
            try:
                row = run(kind, precision, batch, frames, args)
            except torch.OutOfMemoryError as err:  # report and go on: fp32 video may not fit where bf16 does
                row = {"benchmark": "tokenizer_step", "kind": kind, "precision": precision, "batch": batch,
                       "frames": frames, "error": f"out of memory: {str(err).splitlines()[0]}"}  # fmt: skip
            print(json.dumps(row), flush=True)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()


if __name__ == "__main__":
    started = time.time()
    main()
    print(f"# total {time.time() - started:.0f} s", file=sys.stderr)
