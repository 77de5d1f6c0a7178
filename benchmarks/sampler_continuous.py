#!/usr/bin/env python
"""Refinement-sampler compute: fixed steps vs entropy-guided steps with continuous batching.

    python benchmarks/sampler_continuous.py spread                        # CPU: forward rows, 50,000 requests
    python benchmarks/sampler_continuous.py spread --requests 512 --slots 128
    python benchmarks/sampler_continuous.py gpu --size B --requests 512 --slots 128   # GPU: rows/s and images/s

One JSON line per measurement.

`spread` (CPU, rows counted, not time): a stand-in model whose conditional prediction has, for request class s, the
binary entropy H with 600·H − 547.2 = s − 5, so the paper's Eq. 9 (k 600, b −547.2, t0 5, Tmin 20, Tmax 50) gives
exactly s steps. Each request draws s = round(50 − 30·u²), u ~ U(0, 1): steps cover 20–50 with mean ≈ 40 (the paper's
Tab. 11 mean), skewed towards 50 like a model that finds most images hard. CFG on at every step (2 rows per request
step), so the ideal is 2·Σ steps rows. For each layout it reports the rows the forwards computed and the slot capacity
those calls occupied (slots × 2 rows per call: what a fixed-shape forward costs, empty slots included), against the
ideal and against fixed 50 steps.

`gpu`: GRN-B (random weights; zero-init adaLN/head re-drawn N(0, 0.02)), bf16 autocast; forward rows/s at the slot
batch, then fixed-50 and adaptive (k, b calibrated on the measured entropies so steps spread over [Tmin, Tmax])
images/s, each with the dynamic and the static-shape layout.
"""

from __future__ import annotations

import argparse
import json
import math
import time

import grn_lightning  # noqa: F401  (torchvision compatibility)
import torch

from grn_lightning.generator.sampling.adaptive import AdaptiveSteps
from grn_lightning.generator.sampling.sampler import RefinementSampler

PAPER = AdaptiveSteps()  # k 600, b −547.2, t0 5, Tmin 20, Tmax 50


def binary_entropy(q: float) -> float:
    return -(q * math.log2(q) + (1 - q) * math.log2(1 - q))


class SpreadStandIn:
    """K = 2, 4 tokens × 2 groups; class s ∈ [20, 50] predicts (q_s, 1 − q_s) everywhere with binary entropy
    H_s = (s − t0 − b) / k, i.e. Eq. 9 gives s steps. The null class (51) predicts (0.5, 0.5)."""

    num_tokens, groups, classes, null_class = 4, 2, 2, 51

    def __init__(self, adaptive: AdaptiveSteps) -> None:
        table = torch.zeros(52, 2)
        for s in range(adaptive.t_min, adaptive.t_max + 1):
            target = (s - adaptive.t0 - adaptive.b) / adaptive.k
            lo, hi = 1e-9, 0.5  # bisection: binary entropy rises on (0, 0.5]
            for _ in range(100):
                mid = (lo + hi) / 2
                lo, hi = (mid, hi) if binary_entropy(mid) < target else (lo, mid)
            q = (lo + hi) / 2
            table[s] = torch.tensor([math.log(q), math.log(1 - q)])
        self.table = table

    def __call__(self, state, class_ids, ratio):
        return self.table[class_ids].view(-1, 1, 1, 2).expand(state.shape[0], self.num_tokens, self.groups, 2)


def spread(args) -> None:
    gen = torch.Generator().manual_seed(args.seed)
    targets = torch.round(50 - 30 * torch.rand(args.requests, generator=gen, dtype=torch.float64) ** 2).long()
    model, seeds = SpreadStandIn(PAPER), torch.arange(args.requests)
    base = dict(cfg_scale=2.0, cfg_interval=(0.0, 1.0), temperature=1.0, max_batch=args.slots)
    common = {"benchmark": "sampler_continuous", "mode": "spread", "requests": args.requests, "slots": args.slots,
              "requests_per_slot": round(args.requests / args.slots, 1), "weights": "stand-in (entropy per class)",
              "step_distribution": "round(50 - 30 u^2), u ~ U(0,1)", "rows_per_request_step": 2}  # fmt: skip
    fixed = RefinementSampler(steps=50, **base).sample(model, targets, seeds)
    fixed_capacity = fixed.slot_rows
    print(json.dumps({**common, "layout": "fixed-50", "mean_steps": 50.0, "forward_calls": fixed.forward_calls,
                      "rows_forwarded": fixed.rows_forwarded,
                      "slot_rows": fixed.slot_rows, "ideal_rows": 2 * 50 * args.requests}), flush=True)  # fmt: skip
    layouts = {"dynamic": {}, "static": {"static_shapes": True, "shrink_tail": False},
               "static+shrink": {"static_shapes": True, "shrink_tail": True}}  # fmt: skip
    for name, options in layouts.items():
        start = time.perf_counter()
        out = RefinementSampler(adaptive=PAPER, **base, **options).sample(model, targets, seeds)
        seconds = time.perf_counter() - start
        assert torch.equal(out.steps, targets), "the stand-in must give every request its target step count"
        ideal = 2 * int(out.steps.sum())
        print(json.dumps({
            **common, "layout": f"adaptive {name}", "mean_steps": round(float(out.steps.double().mean()), 3),
            "min_steps": int(out.steps.min()), "max_steps": int(out.steps.max()),
            "rows_forwarded": out.rows_forwarded, "slot_rows": out.slot_rows, "ideal_rows": ideal,
            "capacity_efficiency": round(ideal / out.slot_rows, 4),
            "speedup_rows_vs_fixed": round(fixed.rows_forwarded / out.rows_forwarded, 4),
            "speedup_capacity_vs_fixed": round(fixed_capacity / out.slot_rows, 4),
            "ideal_speedup": round(50 / float(out.steps.double().mean()), 4), "forward_calls": out.forward_calls,
            "host_checks": out.host_checks, "cpu_seconds": round(seconds, 1),
        }), flush=True)  # fmt: skip


# ---- GPU: GRN-B rows/s and images/s ---------------------------------------------------------------------------------
def build(args) -> torch.nn.Module:
    from grn_lightning.generator.c2i.model import GRNC2ITransformer

    model = GRNC2ITransformer(size=args.size, variant=args.variant, grid_size=args.resolution // 16)
    with torch.no_grad():
        for block in model.blocks:
            torch.nn.init.normal_(block.ada[-1].weight, std=0.02)
        torch.nn.init.normal_(model.final_ada[-1].weight, std=0.02)
        torch.nn.init.normal_(model.head.weight, std=0.02)
    return model.to(args.device).eval()


def timed(fn) -> tuple[object, float]:
    torch.cuda.synchronize()
    start = time.perf_counter()
    out = fn()
    torch.cuda.synchronize()
    return out, time.perf_counter() - start


def gpu(args) -> None:
    model = build(args)
    if args.compile:
        for block in model.blocks:  # per-block compile, static shapes (the module's compile: block)
            block.compile(dynamic=False)
    common = dict(benchmark="sampler_continuous", mode="gpu", device=torch.cuda.get_device_name(), size=args.size,
                  variant=args.variant, slots=args.slots, requests=args.requests, compile=args.compile,
                  weights="random-init")  # fmt: skip
    classes = torch.arange(args.requests, device=args.device) % model.num_classes
    seeds = torch.arange(args.requests, device=args.device)
    base = dict(cfg_scale=args.cfg, cfg_interval=(args.cfg_low, 1.0), temperature=args.tau, max_batch=args.slots)
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        state = torch.randint(0, model.classes, (2 * args.slots, model.num_tokens, model.groups), device=args.device)
        cls, ratio = classes[: 2 * args.slots] % model.num_classes, torch.rand(2 * args.slots, device=args.device)
        for _ in range(3):
            model(state, cls, ratio)
        _, dt = timed(lambda: [model(state, cls, ratio) for _ in range(10)])
        print(json.dumps({**common, "measure": "forward", "rows_per_s": round(10 * state.shape[0] / dt, 1)}), flush=True)
        fixed_rate = {}
        for static in (False, True):
            sampler = RefinementSampler(steps=args.steps, static_shapes=static, **base)
            sampler.sample(model, classes[: args.slots], seeds[: args.slots])  # warm-up (compile, autotune)
            fixed, dt_fixed = timed(lambda: sampler.sample(model, classes, seeds))
            fixed_rate[static] = args.requests / dt_fixed
            print(json.dumps({**common, "measure": "fixed", "static_shapes": static, "steps": args.steps,
                              "images_per_s": round(fixed_rate[static], 2), "rows_forwarded": fixed.rows_forwarded,
                              "rows_per_s": round(fixed.rows_forwarded / dt_fixed, 1),
                              "forward_calls": fixed.forward_calls, "host_checks": fixed.host_checks}), flush=True)  # fmt: skip
        # k, b from the measured entropies so that Δ spans [Tmin − t0, Tmax − t0] across the requests
        lo, hi = torch.quantile(fixed.entropy, 0.05).item(), torch.quantile(fixed.entropy, 0.95).item()
        k = (args.steps - args.t_min) / max(hi - lo, 1e-6)
        adaptive = AdaptiveSteps(t0=5, k=k, b=(args.t_min - 5) - k * lo, t_min=args.t_min, t_max=args.steps)
        for static in (False, True):
            sampler = RefinementSampler(adaptive=adaptive, static_shapes=static, **base)
            result, dt = timed(lambda: sampler.sample(model, classes, seeds))
            mean_steps = result.steps.double().mean().item()
            print(json.dumps({**common, "measure": "adaptive", "static_shapes": static, "mean_steps": round(mean_steps, 2),
                              "min_steps": int(result.steps.min()), "max_steps": int(result.steps.max()),
                              "images_per_s": round(args.requests / dt, 2),
                              "speedup_vs_fixed": round(args.requests / dt / fixed_rate[static], 3),
                              "ideal_speedup": round(args.steps / mean_steps, 3), "rows_forwarded": result.rows_forwarded,
                              "slot_rows": result.slot_rows, "forward_calls": result.forward_calls,
                              "host_checks": result.host_checks, "k": round(k, 2), "b": round(adaptive.b, 2)}), flush=True)  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("mode", choices=["spread", "gpu"])
    p.add_argument("--requests", type=int, default=None, help="spread: 50,000; gpu: 512")
    p.add_argument("--slots", type=int, default=256, help="continuous-batch slots (RefinementSampler.max_batch)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", default="B")
    p.add_argument("--variant", default="ind", choices=["ind", "bit"])
    p.add_argument("--resolution", type=int, default=256)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--t-min", type=int, default=20)
    p.add_argument("--cfg", type=float, default=2.4)
    p.add_argument("--cfg-low", type=float, default=0.40)
    p.add_argument("--tau", type=float, default=1.33)
    p.add_argument("--compile", action="store_true", help="gpu: compile every block with static shapes")
    args = p.parse_args(argv)
    if args.mode == "spread":
        args.requests = args.requests or 50_000
        torch.set_num_threads(1)
        spread(args)
    else:
        if not torch.cuda.is_available():
            raise SystemExit("mode gpu needs a CUDA GPU")
        args.requests, args.device = args.requests or 512, "cuda"
        gpu(args)


if __name__ == "__main__":
    main()
