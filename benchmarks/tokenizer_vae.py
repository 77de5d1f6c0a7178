#!/usr/bin/env python
"""HBQ tokenizer VAE (SPEC §2) speed, peak memory and chunked-vs-full agreement on one GPU.

    python benchmarks/tokenizer_vae.py                                    # released C=16: images 256² b8, clip 17×256² b1
    python benchmarks/tokenizer_vae.py --latent-channels 64 --frames 1 33 --size 256 --batch 8 1 --steps 5
    python benchmarks/tokenizer_vae.py --preset tiny --device cpu --size 64 --frames 1 9 --batch 2 1   # smoke test

For each (frames, batch) it measures, with random weights of the preset (no download; pass --weights to use a
converted checkpoint from tools/convert_official.py):
  encode / encode_chunked / decode / decode_chunked / train_step (forward + L1 backward through the STE),
each as one JSON line {op, frames, size, batch, dtype, ms, items_per_s, peak_mem_gib}; plus one "agreement"
line with the max |chunked − full| of mu and x̂ in fp32 (the SPEC §2 equality on real sizes).
"""

from __future__ import annotations

import argparse
import json
import time

import grn_lightning  # noqa: F401  (torchvision compatibility first)
import torch

from grn_lightning.tokenizer.vae import VAE_PRESETS, HBQTokenizer


def _timed(fn, steps: int, device: torch.device) -> tuple[float, float | None]:
    """(ms per call after one warm-up call, peak GiB)."""
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    peak = round(torch.cuda.max_memory_allocated() / 2**30, 3) if device.type == "cuda" else None
    return (time.perf_counter() - start) * 1000 / steps, peak


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--preset", choices=sorted(VAE_PRESETS), default="released")
    parser.add_argument("--latent-channels", type=int, default=16)
    parser.add_argument("--frames", type=int, nargs="+", default=[1, 17], help="clip lengths (1 = image), 1 + 4k")
    parser.add_argument("--batch", type=int, nargs="+", default=[8, 1], help="batch size per entry of --frames")
    parser.add_argument("--size", type=int, default=256, help="square resolution")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--dtype", choices=["bfloat16", "float32"], default="bfloat16", help="autocast dtype")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--weights", help="converted state dict (tools/convert_official.py output)")
    parser.add_argument("--skip-train", action="store_true")
    args = parser.parse_args(argv)
    if len(args.batch) != len(args.frames):
        parser.error("--batch needs one entry per --frames entry")
    device = torch.device(args.device)
    torch.manual_seed(0)
    tok = HBQTokenizer(latent_channels=args.latent_channels, preset=args.preset).to(device)
    if args.weights:
        tok.load_state_dict(torch.load(args.weights, map_location=device, weights_only=True), strict=True)
    dtype = getattr(torch, args.dtype)
    amp = dtype != torch.float32
    vae = tok.vae
    for frames, batch in zip(args.frames, args.batch):
        x = torch.rand(batch, 3, frames, args.size, args.size, device=device) * 2 - 1
        base = dict(frames=frames, size=args.size, batch=batch, dtype=args.dtype, latent_channels=args.latent_channels)
        with torch.no_grad():
            mu = vae.encode(x)
            agreement = {
                "op": "agreement", **base, "dtype": "float32",
                "mu_max_abs_diff": (vae.encode_chunked(x) - mu).abs().max().item(),
                "x_hat_max_abs_diff": (vae.decode_chunked(mu) - vae.decode(mu)).abs().max().item(),
            }  # fmt: skip
        print(json.dumps(agreement), flush=True)
        ops = {
            "encode": lambda: vae.encode(x),
            "encode_chunked": lambda: vae.encode_chunked(x),
            "decode": lambda: vae.decode(mu),
            "decode_chunked": lambda: vae.decode_chunked(mu),
        }
        for name, op in ops.items():
            with torch.no_grad(), torch.autocast(device.type, dtype=dtype, enabled=amp):
                ms, peak = _timed(op, args.steps, device)
            print(json.dumps({"op": name, **base, "ms": round(ms, 2), "items_per_s": round(batch * 1000 / ms, 3),
                              "peak_mem_gib": peak}), flush=True)  # fmt: skip
        if not args.skip_train:

            def step() -> None:
                with torch.autocast(device.type, dtype=dtype, enabled=amp):
                    x_hat, _ = tok(x)
                    loss = (x_hat.float() - x).abs().mean()
                loss.backward()
                tok.zero_grad(set_to_none=True)

            ms, peak = _timed(step, args.steps, device)
            print(json.dumps({"op": "train_step", **base, "ms": round(ms, 2), "items_per_s": round(batch * 1000 / ms, 3),
                              "peak_mem_gib": peak}), flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
