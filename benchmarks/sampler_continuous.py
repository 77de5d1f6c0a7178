#!/usr/bin/env python
"""Refinement-sampler throughput without the VAE: fixed steps vs entropy-guided steps with continuous batching.

    python benchmarks/sampler_continuous.py                         # GRN-B ind, 512 requests, 64 slots, bf16
    python benchmarks/sampler_continuous.py --variant bit --noise-device cuda --compile

One JSON line per measurement:
- "forward": transformer forward rows/s at the slot batch (eager or compiled), bf16 autocast;
- "fixed": `--steps` linear steps for every request;
- "adaptive": AdaptiveSteps with k, b calibrated on the measured warm-up entropies so that the step counts
  spread over [Tmin, Tmax] (random weights have no meaningful entropy; a trained checkpoint would supply it);
  reports mean steps, images/s and the speed-up over "fixed" next to the ideal Tmax / mean-steps ratio.
Weights are random: the zero-initialised adaLN/head layers are re-drawn N(0, 0.02) so predictions vary.
"""

from __future__ import annotations

import argparse
import json
import time

import grn_lightning  # noqa: F401  (torchvision compatibility)
import torch

from grn_lightning.generator.sampling.adaptive import AdaptiveSteps
from grn_lightning.generator.sampling.sampler import RefinementSampler
from grn_lightning.generator.c2i.model import GRNC2ITransformer


def build(args) -> torch.nn.Module:
    model = GRNC2ITransformer(size=args.size, variant=args.variant, grid_size=args.resolution // 16)
    with torch.no_grad():
        for block in model.blocks:
            torch.nn.init.normal_(block.ada[-1].weight, std=0.02)
        torch.nn.init.normal_(model.final_ada[-1].weight, std=0.02)
        torch.nn.init.normal_(model.head.weight, std=0.02)
    return model.to(args.device).eval()


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn) -> tuple[object, float]:
    _sync()
    start = time.perf_counter()
    out = fn()
    _sync()
    return out, time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", default="B")
    p.add_argument("--variant", default="ind", choices=["ind", "bit"])
    p.add_argument("--resolution", type=int, default=256)
    p.add_argument("--requests", type=int, default=512)
    p.add_argument("--slots", type=int, default=64, help="continuous-batch slots (RefinementSampler.max_batch)")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--t0", type=int, default=5)
    p.add_argument("--t-min", type=int, default=20)
    p.add_argument("--cfg", type=float, default=2.4)
    p.add_argument("--cfg-low", type=float, default=0.40)
    p.add_argument("--tau", type=float, default=1.33)
    p.add_argument("--noise-device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--device", default="cuda", help="cpu only for a smoke run (bf16 autocast on CPU is slow)")
    p.add_argument("--compile", action="store_true", help="torch.compile(model, dynamic=True)")
    args = p.parse_args(argv)

    model = build(args)
    fwd = torch.compile(model, dynamic=True) if args.compile else model
    device_name = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    common = dict(device=device_name, size=args.size, variant=args.variant, slots=args.slots,
                  compile=args.compile, noise_device=args.noise_device)  # fmt: skip
    classes = torch.arange(args.requests, device=args.device) % model.num_classes
    seeds = list(range(args.requests))
    geometry = dict(num_tokens=model.num_tokens, groups=model.groups, classes=model.classes, null_class=model.null_class)
    base = dict(cfg_scale=args.cfg, cfg_interval=(args.cfg_low, 1.0), temperature=args.tau,
                max_batch=args.slots, noise_device=args.noise_device)  # fmt: skip

    with torch.no_grad(), torch.autocast(args.device, dtype=torch.bfloat16):
        state = torch.randint(0, model.classes, (2 * args.slots, model.num_tokens, model.groups), device=args.device)
        cls, ratio = classes[: 2 * args.slots] % model.num_classes, torch.rand(2 * args.slots, device=args.device)
        for _ in range(3):
            fwd(state, cls, ratio)
        _, dt = timed(lambda: [fwd(state, cls, ratio) for _ in range(10)])
        print(json.dumps({"measure": "forward", "rows_per_s": 10 * state.shape[0] / dt, **common}), flush=True)

        sampler = RefinementSampler(steps=args.steps, entropy_step=args.t0, **base)
        sampler.sample(fwd, classes[: args.slots], seeds[: args.slots], **geometry)  # warm-up
        fixed, dt_fixed = timed(lambda: sampler.sample(fwd, classes, seeds, **geometry))
        print(json.dumps({"measure": "fixed", "steps": args.steps, "images_per_s": args.requests / dt_fixed,
                          "rows_forwarded": fixed.rows_forwarded, "forward_calls": fixed.forward_calls,
                          **common}), flush=True)  # fmt: skip

        # calibrate k, b on the warm-up entropies so Δ spans [Tmin − t0, Tmax − t0] across the requests
        lo, hi = torch.quantile(fixed.entropy, 0.05).item(), torch.quantile(fixed.entropy, 0.95).item()
        span = args.steps - args.t_min
        k = span / max(hi - lo, 1e-6)
        adaptive = AdaptiveSteps(t0=args.t0, k=k, b=(args.t_min - args.t0) - k * lo, t_min=args.t_min, t_max=args.steps)
        ad_sampler = RefinementSampler(adaptive=adaptive, **base)
        result, dt_ad = timed(lambda: ad_sampler.sample(fwd, classes, seeds, **geometry))
        mean_steps = result.steps.double().mean().item()
        print(json.dumps({"measure": "adaptive", "mean_steps": mean_steps, "min_steps": int(result.steps.min()),
                          "max_steps": int(result.steps.max()), "images_per_s": args.requests / dt_ad,
                          "speedup_vs_fixed": dt_fixed / dt_ad, "ideal_speedup": args.steps / mean_steps,
                          "rows_forwarded": result.rows_forwarded, "forward_calls": result.forward_calls,
                          "k": k, "b": adaptive.b, **common}), flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
