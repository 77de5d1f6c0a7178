#!/usr/bin/env python
"""C2I sampling throughput (images/s, VAE decode included) through `C2IModule.sample_images`.

    python benchmarks/c2i_sample.py                                   # GRN-B 256², batch 256, random weights
    python benchmarks/c2i_sample.py --ckpt runs/c2i_grn_b/last.ckpt --tokenizer-ckpt weights/hbq_tokenizer_16ch.pt

Two measurements, one JSON line each:
- "fixed": 50 linear steps, CFG 2.4 on [0.40, 1], τ 1.33 (GRNind-B, SPEC §6), continuous batch of `--batch`;
- "adaptive": entropy-guided steps (paper Eq. 8–9: k 600, b −547.2, Tmin 20, Tmax 50, t0 5); the sampler's
  continuous batching turns fewer steps into fewer forwards, so images/s should rise with the mean step count
  falling (target ≥ 1.15× the fixed-50 rate).
Step counts depend on the prediction entropy: random-initialised weights predict (nearly) uniform labels,
entropy ≈ 1 → Δ = Tmax − t0, i.e. no saving. Pass `--ckpt` (a trained C2IModule checkpoint) for meaningful
adaptive numbers; without it the line reports what was measured and says so, and a third line,
"adaptive_matched", keeps k and shifts b so that the sample of median entropy gets `--target-mean-steps`
(the paper's ~40 on ImageNet): the same compute path at the step distribution a trained model produces.
Without `--ckpt` the zero-initialised adaLN / head layers are re-drawn N(0, 0.02) so that predictions (and
their entropies) vary between samples, as in benchmarks/sampler_continuous.py.
"""

from __future__ import annotations

import argparse
import json
import time

import grn_lightning  # noqa: F401  (torchvision compatibility before lightning)
import torch


def build(args):
    from grn_lightning.generator.c2i.module import C2IModule
    from grn_lightning.tokenizer.vae import HBQTokenizer

    tokenizer = HBQTokenizer(latent_channels=16, num_rounds=4, preset=args.tokenizer_preset)
    kwargs = dict(size=args.size, variant=args.variant, tokenizer=tokenizer, tokenizer_ckpt=args.tokenizer_ckpt,
                  compile=args.compile, grid_size=args.resolution // 16)  # fmt: skip
    if args.ckpt:
        module = C2IModule.load_from_checkpoint(args.ckpt, map_location="cpu", **kwargs)
    else:
        module = C2IModule(**kwargs)
        with torch.no_grad():  # zero-init layers would make every prediction uniform (entropy exactly 1)
            model = module.model
            for layer in [block.ada[-1] for block in model.blocks] + [model.final_ada[-1], model.head]:
                torch.nn.init.normal_(layer.weight, std=0.02)
            module.ema.load_state_dict(model.state_dict())  # sampling uses the EMA copy
    module.configure_model()
    return module.to(args.device).eval()


def measure(module, args, adaptive: dict | None) -> dict:
    sampling = dict(steps=args.steps, cfg_scale=args.cfg, cfg_interval=(args.cfg_low, 1.0), temperature=args.tau,
                    max_batch=args.batch, adaptive=adaptive)  # fmt: skip
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    classes = torch.arange(args.batch * args.rounds, device=device) % module.num_classes
    gen = torch.Generator(device=device).manual_seed(0)
    with torch.autocast(device.type, dtype=torch.bfloat16):
        module.sample_images(classes[: max(1, args.batch // 4)], gen, **sampling)  # warm-up (compile, autotune)
        sync()
        start = time.perf_counter()
        result = module.sample_labels(classes, gen, **sampling)
        sync()
        sample_s = time.perf_counter() - start
        decode_start = time.perf_counter()
        for chunk in result.labels.split(args.decode_batch):
            module.decode(chunk)
        sync()
        decode_s = time.perf_counter() - decode_start
    total = sample_s + decode_s
    measure.last_entropy = result.entropy.detach().cpu()
    steps = result.steps.double()
    return {
        "benchmark": "c2i_sample", "mode": "adaptive" if adaptive else "fixed", "size": args.size,
        "variant": args.variant, "resolution": args.resolution, "images": int(classes.numel()), "batch": args.batch,
        "images_per_s": round(classes.numel() / total, 2), "sampling_s": round(sample_s, 3),
        "decode_s": round(decode_s, 3), "mean_steps": round(float(steps.mean()), 2),
        "min_steps": int(steps.min()), "max_steps": int(steps.max()),
        "mean_entropy": round(float(result.entropy.mean()), 4), "rows_forwarded": int(result.rows_forwarded),
        "forward_calls": int(result.forward_calls), "weights": args.ckpt or "random-init (step counts not meaningful)",
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu (smoke run: timings not meaningful)",
        "torch": torch.__version__,
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="B")
    parser.add_argument("--variant", default="ind", choices=["ind", "bit"])
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--batch", type=int, default=256, help="continuous-batch slots")
    parser.add_argument("--rounds", type=int, default=2, help="images = batch × rounds")
    parser.add_argument("--decode-batch", type=int, default=32, help="images per VAE decode call")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--cfg", type=float, default=2.4)
    parser.add_argument("--cfg-low", type=float, default=0.40)
    parser.add_argument("--tau", type=float, default=1.33)
    parser.add_argument("--k", type=float, default=600.0)
    parser.add_argument("--b", type=float, default=-547.2)
    parser.add_argument("--t-min", type=int, default=20)
    parser.add_argument("--t-max", type=int, default=50)
    parser.add_argument("--target-mean-steps", type=float, default=40.0, help="adaptive_matched: median sample's steps")
    parser.add_argument("--compile", default="none", choices=["none", "block", "model"])
    parser.add_argument("--ckpt", default=None, help="C2IModule checkpoint (EMA weights are sampled)")
    parser.add_argument("--tokenizer-ckpt", default=None, help="tokenizer weights (random-init without)")
    parser.add_argument("--tokenizer-preset", default="released")
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"], help="cpu: a smoke run of the script")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("this benchmark needs a CUDA GPU (or --device cpu for a smoke run)")
    torch.set_float32_matmul_precision("high")
    module = build(args)
    fixed = measure(module, args, None)
    print(json.dumps(fixed), flush=True)
    adaptive = measure(module, args, dict(t0=5, k=args.k, b=args.b, t_min=args.t_min, t_max=args.t_max))
    adaptive["speedup_vs_fixed"] = round(adaptive["images_per_s"] / fixed["images_per_s"], 3)
    adaptive["speedup_target"] = 1.15
    print(json.dumps(adaptive), flush=True)
    if not args.ckpt:  # random weights: shift b to the model's entropy level (module docstring)
        entropy = measure.last_entropy
        b = (args.target_mean_steps - 5) - args.k * float(entropy.double().median())
        matched = measure(module, args, dict(t0=5, k=args.k, b=b, t_min=args.t_min, t_max=args.t_max))
        matched.update(mode="adaptive_matched", k=args.k, b=round(b, 3),
                       speedup_vs_fixed=round(matched["images_per_s"] / fixed["images_per_s"], 3),
                       ideal_speedup=round(args.steps / matched["mean_steps"], 3), speedup_target=1.15)
        print(json.dumps(matched), flush=True)


if __name__ == "__main__":
    main()
