#!/usr/bin/env python
"""C2I sampling throughput on the GPU (SPEC §11): forward rows/s and images/s with the VAE decode included.

    python benchmarks/c2i_sample.py                                  # GRN-B 256², 2,048 requests, 256 slots
    python benchmarks/c2i_sample.py --requests 50000                 # the gFID protocol's size (long: see below)
    python benchmarks/c2i_sample.py --ckpt run/last.ckpt --tokenizer-ckpt weights/hbq_tokenizer_16ch.pt

One JSON line per measurement:
- "forward": transformer forward rows/s at 2 × slots rows (a CFG pair is two rows), eager vs blocks compiled with
  static shapes (`--compile-mode`: "default", or "reduce-overhead" = CUDA graphs per block);
- "sample": for each layout — eager with only the occupied / CFG rows forwarded ("dynamic"), and compiled blocks with
  every slot forwarded ("static", no per-step host sync, tail shrinking) — fixed 50 steps and entropy-guided steps,
  images/s including the decode, forward rows, calls, host checkpoints, mean/min/max steps.
Settings: GRNind-B sampling (CFG 2.4 on [0.40, 1], τ 1.33), bf16 autocast, TF32 matmuls allowed.

Weights: `--ckpt` (a C2I checkpoint; its "ema." weights are sampled) gives the model's own step counts with the
paper's k 600, b −547.2. Without it the transformer is random (zero-init adaLN / head re-drawn N(0, 0.02)) and its
entropies barely vary, so k and b are calibrated on the entropies the fixed run measured at forward index 5 (the
adaptive run sees the same ones): k spreads the 5–95% entropy quantiles over 30 steps and b puts the median at 42,
which gives steps over 20–50 with a mean near the paper's 40 (reported). The tokenizer is random-init without
`--tokenizer-ckpt` (decode cost is the same). 50,000 requests take longer than one 10-minute device call (at
~5.8k rows/s, 50,000 × 40 × 2 rows ≈ 11 min for the adaptive run alone): run_gpu.sh uses 2,048 (8 per slot), and
benchmarks/sampler_continuous.py spread gives the 50,000-request row counts on the CPU.
"""

from __future__ import annotations

import argparse
import json
import time

import grn_lightning  # noqa: F401  (torchvision compatibility before lightning)
import torch

from grn_lightning.generator.sampling.adaptive import AdaptiveSteps
from grn_lightning.generator.sampling.sampler import RefinementSampler


def build(args):
    from grn_lightning.generator.c2i.model import GRNC2ITransformer
    from grn_lightning.generator.frozen_tokenizer import load_frozen_tokenizer
    from grn_lightning.generator.token_layout import TokenLayout
    from grn_lightning.tokenizer.vae import HBQTokenizer

    tokenizer = load_frozen_tokenizer(HBQTokenizer(latent_channels=16, num_rounds=4, preset=args.tokenizer_preset),
                                      args.tokenizer_ckpt)  # fmt: skip
    model = GRNC2ITransformer(size=args.size, variant=args.variant, grid_size=args.resolution // 16)
    if args.ckpt:
        state = torch.load(args.ckpt, map_location="cpu", weights_only=False)["state_dict"]
        model.load_state_dict({k.removeprefix("ema."): v for k, v in state.items() if k.startswith("ema.")})
    else:
        with torch.no_grad():  # zero-init layers would make every prediction uniform (entropy exactly 1)
            for layer in [block.ada[-1] for block in model.blocks] + [model.final_ada[-1], model.head]:
                torch.nn.init.normal_(layer.weight, std=0.02)
    layout = TokenLayout(args.variant, 16, 4)
    return model.to(args.device).eval().requires_grad_(False), tokenizer.to(args.device), layout


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn):
    _sync()
    start = time.perf_counter()
    out = fn()
    _sync()
    return out, time.perf_counter() - start


def forward_rate(model, args) -> float:
    rows = 2 * args.slots
    state = torch.randint(0, model.classes, (rows, model.num_tokens, model.groups), device=args.device)
    cls, ratio = torch.arange(rows, device=args.device) % model.num_classes, torch.rand(rows, device=args.device)
    for _ in range(3):
        model(state, cls, ratio)
    _, seconds = timed(lambda: [model(state, cls, ratio) for _ in range(10)])
    return 10 * rows / seconds


def sample(model, tokenizer, layout, sampler, args) -> tuple[dict, torch.Tensor]:
    classes = torch.arange(args.requests, device=args.device) % model.num_classes
    seeds = torch.arange(args.requests, device=args.device)
    sampler.sample(model, classes[: args.slots], seeds[: args.slots])  # warm-up: compile, autotune, allocator
    result, sample_s = timed(lambda: sampler.sample(model, classes, seeds))

    def decode():
        for chunk in result.labels.split(args.decode_batch):
            tokenizer.detokenize(layout.to_index_labels(chunk, (1, *model.grid)))

    _, decode_s = timed(decode)
    steps = result.steps.double()
    return {
        "images_per_s": round(args.requests / (sample_s + decode_s), 2), "sampling_s": round(sample_s, 2),
        "decode_s": round(decode_s, 2), "mean_steps": round(float(steps.mean()), 2), "min_steps": int(steps.min()),
        "max_steps": int(steps.max()), "rows_forwarded": result.rows_forwarded, "slot_rows": result.slot_rows,
        "rows_per_s": round(result.rows_forwarded / sample_s, 1), "forward_calls": result.forward_calls,
        "host_checks": result.host_checks,
    }, result.entropy  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", default="B")
    p.add_argument("--variant", default="ind", choices=["ind", "bit"])
    p.add_argument("--resolution", type=int, default=256)
    p.add_argument("--requests", type=int, default=2048)
    p.add_argument("--slots", type=int, default=256, help="continuous-batch slots")
    p.add_argument("--decode-batch", type=int, default=32, help="images per VAE decode call")
    p.add_argument("--compile-mode", default="default", choices=["default", "reduce-overhead", "none"],
                   help="none: the 'static' layout runs eager blocks too")
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"], help="cpu: a smoke run (e.g. --size tiny)")
    p.add_argument("--ckpt", default=None, help="C2I checkpoint (EMA weights are sampled)")
    p.add_argument("--tokenizer-ckpt", default=None, help="tokenizer weights (random-init without)")
    p.add_argument("--tokenizer-preset", default="released")
    args = p.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("this benchmark needs a CUDA GPU (or --device cpu for a smoke run)")
    torch.set_float32_matmul_precision("high")
    model, tokenizer, layout = build(args)
    device = torch.cuda.get_device_name() if args.device == "cuda" else "cpu (smoke run: timings not meaningful)"
    common = {"benchmark": "c2i_sample", "device": device, "size": args.size,
              "variant": args.variant, "requests": args.requests, "slots": args.slots,
              "requests_per_slot": round(args.requests / args.slots, 1), "torch": torch.__version__,
              "weights": args.ckpt or "random-init (k, b calibrated on its entropies)"}  # fmt: skip
    guidance = dict(cfg_scale=2.4, cfg_interval=(0.40, 1.0), temperature=1.33, max_batch=args.slots)
    paper = AdaptiveSteps()
    with torch.no_grad(), torch.autocast(args.device, dtype=torch.bfloat16):
        rates = {"eager": forward_rate(model, args)}
        for layout_name, static in (("dynamic, eager", False), ("static, compiled", True)):
            if static and args.compile_mode != "none":  # per-block compile (the module's compile: block) with fixed shapes, after the eager runs
                for block in model.blocks:
                    block.compile(mode=args.compile_mode, dynamic=False)
                rates["compiled"] = forward_rate(model, args)
            fixed, entropy = sample(model, tokenizer, layout,
                                    RefinementSampler(steps=50, static_shapes=static, **guidance), args)  # fmt: skip
            print(json.dumps({**common, "measure": "sample", "layout": layout_name, "mode": "fixed-50", **fixed}), flush=True)
            if args.ckpt:
                adaptive = paper
            else:
                lo, mid, hi = (torch.quantile(entropy, q).item() for q in (0.05, 0.5, 0.95))
                k = 30.0 / max(hi - lo, 1e-9)
                adaptive = AdaptiveSteps(k=k, b=(42 - paper.t0) - k * mid)
            result, _ = sample(model, tokenizer, layout,
                               RefinementSampler(adaptive=adaptive, static_shapes=static, **guidance), args)  # fmt: skip
            result.update(speedup_vs_fixed=round(result["images_per_s"] / fixed["images_per_s"], 3),
                          ideal_speedup=round(50 / result["mean_steps"], 3), k=round(adaptive.k, 3), b=round(adaptive.b, 3))
            print(json.dumps({**common, "measure": "sample", "layout": layout_name, "mode": "adaptive", **result}), flush=True)
        print(json.dumps({**common, "measure": "forward", "rows": 2 * args.slots, "compile_mode": args.compile_mode,
                          **{f"{k}_rows_per_s": round(v, 1) for k, v in rates.items()}}), flush=True)  # fmt: skip

if __name__ == "__main__":
    main()
