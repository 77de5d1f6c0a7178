#!/usr/bin/env python
"""ImageNet-256 evaluation protocols (SPEC section 7), results to OUT/metrics.json plus a printed table.

Generator half (C2I gFID / IS): NUM_SAMPLES images (50,000: exactly 50 per class), EMA weights, 256x256,
Inception-V3 pool3 against reference statistics given by path; optional PNG export.
    python tools/eval_imagenet.py --ckpt runs/c2i_grn_b/last.ckpt --config configs/c2i_grn_b.yaml \
        --ref-stats VIRTUAL_imagenet256_labeled.npz --out eval/grn_b [--png] [--sampling '{"cfg_scale": 2.4}']

Tokenizer half (rFID / PSNR / SSIM / LPIPS-Alex / LPIPS-VGG): ImageNet val images, ADM 256 centre crop
(box-downsample while >= 2x, bicubic, centre crop), reconstructed by the HBQ tokenizer (EMA weights).
    python tools/eval_imagenet.py --tokenizer-ckpt runs/tok/last.ckpt --tokenizer-config configs/tokenizer_image.yaml \
        --imagenet-val /data/imagenet/val --out eval/tokenizer

Both halves may run in one call; a half whose inputs are not given is skipped, and a failing generator half
(e.g. the C2I module not importable) is reported without stopping the tokenizer half (exit status 1).
Multi-GPU: launch with ``torchrun --nproc_per_node N``; every rank does the same amount of work.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import traceback
from pathlib import Path

import grn_lightning  # noqa: F401  (torchvision compatibility first)
import torch


class HalfUnavailable(RuntimeError):
    """A protocol half cannot run (missing module or input); reported in metrics.json, the other half goes on."""


def _distributed() -> tuple[int, int, torch.device]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device(f"cuda:{local}" if torch.cuda.is_available() else "cpu")
    if world > 1 and not torch.distributed.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
    rank = torch.distributed.get_rank() if world > 1 else 0
    return rank, world, device


def _file_info(path: str | None) -> dict | None:
    from grn_lightning.eval.protocol import file_record

    return file_record(path) if path else None


# ---- generator half ------------------------------------------------------------------------------------


def run_generator(args, rank: int, world: int, device: torch.device) -> dict:
    try:
        from grn_lightning.generator.c2i.module import C2IModule
    except ImportError as err:
        raise HalfUnavailable(
            f"generator half unavailable: cannot import grn_lightning.generator.c2i.module.C2IModule ({err}). "
            "The tokenizer half does not need it and still runs."
        ) from err
    import lightning.pytorch as pl

    from grn_lightning.eval.evaluators import GenerationEvaluator, generate_and_update
    from grn_lightning.generator.sampling.options import sampler_options
    from grn_lightning.eval.loading import instantiate_from_spec, load_config_section, load_lightning_checkpoint

    if not (args.ckpt and args.config):
        raise HalfUnavailable("generator half needs both --ckpt and --config")
    overrides = {"tokenizer_ckpt": args.tokenizer_ckpt} if args.tokenizer_ckpt else {}
    # Seeded before building: anything the checkpoint does not cover (e.g. a random-init smoke tokenizer, which
    # lives outside the C2I state dict) is then the same in every run and on every rank.
    torch.manual_seed(args.seed)
    module = instantiate_from_spec(load_config_section(args.config), pl.LightningModule, **overrides)
    if not isinstance(module, C2IModule):
        raise HalfUnavailable(f"{args.config}: model is {type(module).__name__}, the C2I protocol needs C2IModule")
    load_lightning_checkpoint(module, args.ckpt)
    module.to(device).eval()
    sampling = json.loads(args.sampling) if args.sampling else {}
    evaluator = GenerationEvaluator(args.ref_stats, args.inception_weights, args.random_init, args.is_splits)
    evaluator.to(device)
    png_dir = str(Path(args.out) / "samples") if args.png else None
    start = time.time()
    generate_and_update(
        module.sample_images, evaluator, args.num_samples, int(module.num_classes), args.batch_size, device,
        rank, world, args.seed, sampling, png_dir, progress=rank == 0,
    )  # fmt: skip
    metrics = evaluator.compute()
    return {
        "metrics": metrics,
        "protocol": {
            "num_samples": args.num_samples, "per_class": args.num_samples // int(module.num_classes),
            "num_classes": int(module.num_classes), "seed": args.seed, "world_size": world,
            "batch_size_per_rank": args.batch_size, "sampling_overrides": sampling,
            "sampling_defaults": {k: getattr(v, "__dict__", v) for k, v in sampler_options(module.sampler).items()},
            "sample_weights": module.ema_options.sample_weights,
            "png_dir": png_dir, "checkpoint": _file_info(args.ckpt), "config": _file_info(args.config),
            "tokenizer_checkpoint": _file_info(args.tokenizer_ckpt), "seconds": round(time.time() - start, 1),
            **evaluator.protocol(),
        },  # fmt: skip
    }


# ---- tokenizer half ------------------------------------------------------------------------------------


def build_tokenizer(config: str, checkpoint: str | None) -> torch.nn.Module:
    """The HBQ tokenizer of a grn config, frozen, with the EMA weights of ``checkpoint``.

    A ``TokenizerModule`` config: the module is built and the checkpoint loaded the way the Trainer loads it
    (``on_load_checkpoint`` restores the EMA), then the EMA track is copied into the tokenizer. Any other config
    (e.g. a C2I config with a nested ``HBQTokenizer``): the tokenizer is built alone and the weights picked by
    ``frozen_tokenizer.load_frozen_tokenizer`` (plain state dicts, converted release files, ...).
    """
    import lightning.pytorch as pl

    from grn_lightning.eval.loading import find_class_spec, instantiate_from_spec, load_config_section
    from grn_lightning.eval.loading import load_lightning_checkpoint
    from grn_lightning.generator.frozen_tokenizer import freeze, load_frozen_tokenizer

    section = load_config_section(config)
    if str(section["class_path"]).endswith("TokenizerModule"):
        module = instantiate_from_spec(section, pl.LightningModule)
        tokenizer = module.tokenizer
        tokenizer.loaded_from = "as built (no checkpoint)"
        if checkpoint:
            load_lightning_checkpoint(module, checkpoint)
            if module.ema is not None and module.ema.shadows is not None and module.hparams.eval_with_ema:
                module.ema.copy_to(tokenizer)
                tokenizer.loaded_from = f"{checkpoint} (TokenizerModule EMA track 0)"
            else:
                tokenizer.loaded_from = f"{checkpoint} (TokenizerModule raw weights: no EMA in the checkpoint)"
        return freeze(tokenizer)
    spec = find_class_spec(section, "HBQTokenizer")
    if spec is None:
        raise HalfUnavailable(f"{config}: the model section is no TokenizerModule and holds no HBQTokenizer")
    return load_frozen_tokenizer(instantiate_from_spec(spec), checkpoint)


def _save_reconstruction_grid(batches: list, count: int, path: Path) -> None:
    """First `count` inputs (top row) over their reconstructions (bottom row), one PNG."""
    from torchvision.utils import save_image

    real = torch.cat([r for r, _ in batches])[:count]
    fake = torch.cat([f for _, f in batches])[:count]
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image((torch.cat([real, fake]) + 1) / 2, path, nrow=len(real), padding=2)
    print(f"wrote {path}")


def run_tokenizer(args, rank: int, world: int, device: torch.device) -> dict:
    from tqdm.auto import tqdm

    from grn_lightning.eval.evaluators import ReconstructionEvaluator
    from grn_lightning.eval.image_sources import ImageFolderDataset

    if not args.tokenizer_config:
        raise HalfUnavailable("tokenizer half needs --tokenizer-config (and normally --tokenizer-ckpt)")
    tokenizer = build_tokenizer(args.tokenizer_config, args.tokenizer_ckpt).to(device)
    dataset = ImageFolderDataset(args.imagenet_val, size=args.size, limit=args.num_images)
    # Rank r scores images r, r + W, ...; every rank runs the same number of batches (fillers are invalid).
    per_rank = math.ceil(len(dataset) / world)
    index = torch.arange(per_rank) * world + rank
    valid = index < len(dataset)
    subset = torch.utils.data.Subset(dataset, index.clamp(max=len(dataset) - 1).tolist())
    loader = torch.utils.data.DataLoader(subset, batch_size=args.tokenizer_batch_size, num_workers=args.workers)
    evaluator = ReconstructionEvaluator(
        lpips_net="alex", rfid=True, rfvd=False, inception_weights=args.inception_weights,
        random_init=args.random_init, extra_lpips=("vgg",),
    ).to(device)  # fmt: skip
    start, seen, grid = time.time(), 0, []
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.tokenizer_bf16)
    for images, _ in tqdm(loader, desc="tokenizer", disable=rank != 0, unit="batch"):
        x = images.to(device).unsqueeze(2)  # an image is a 1-frame video: [B, 3, 1, H, W]
        with torch.no_grad(), autocast:
            x_hat, _ = tokenizer(x)
        evaluator.update(x, x_hat.float().clamp(-1, 1), valid[seen : seen + x.shape[0]])
        seen += x.shape[0]
        if rank == 0 and sum(len(g) for g, _ in grid) < args.recon_grid:
            grid.append((x[:, :, 0].cpu(), x_hat[:, :, 0].float().clamp(-1, 1).cpu()))
    metrics = evaluator.compute()
    if grid:
        _save_reconstruction_grid(grid, args.recon_grid, Path(args.out) / "reconstructions.png")
    return {
        "metrics": metrics,
        "protocol": {
            "imagenet_val": args.imagenet_val, "num_images": len(dataset), "world_size": world,
            "crop": f"ADM centre crop {args.size} (box down while >= 2x, bicubic, centre crop)",
            "tokenizer_checkpoint": _file_info(args.tokenizer_ckpt), "tokenizer_config": _file_info(args.tokenizer_config),
            "tokenizer_weights": getattr(tokenizer, "loaded_from", "as built (no checkpoint)"),
            "tokenizer_bf16": args.tokenizer_bf16, "seconds": round(time.time() - start, 1), **evaluator.protocol(),
        },  # fmt: skip
    }


# ---- driver --------------------------------------------------------------------------------------------


def print_table(results: dict) -> None:
    print(f"{'half':10s} {'metric':12s} {'value':>12s}")
    for half, entry in results.items():
        if half == "versions":
            continue
        if "error" in entry:
            print(f"{half:10s} {'ERROR':12s} {entry['error']}")
            continue
        for name, value in entry["metrics"].items():
            print(f"{half:10s} {name:12s} {value:12.4f}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    gen = parser.add_argument_group("generator half (C2I gFID / IS)")
    gen.add_argument("--ckpt", help="C2I Lightning checkpoint")
    gen.add_argument("--config", help="grn config the C2I model was trained with (its model: section is used)")
    gen.add_argument("--ref-stats", help="reference statistics .npz (mu, sigma); without it only IS is reported")
    gen.add_argument("--num-samples", type=int, default=50000, help="total samples, a multiple of num_classes")
    gen.add_argument("--batch-size", type=int, default=50, help="samples per sample_images call per rank")
    gen.add_argument("--sampling", default=None, help='JSON sampling overrides, e.g. \'{"cfg_scale": 2.4}\'')
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--png", action="store_true", help="also write every sample to OUT/samples/NNNNNN.png")
    gen.add_argument("--is-splits", type=int, default=10)
    tok = parser.add_argument_group("tokenizer half (rFID / PSNR / SSIM / LPIPS)")
    tok.add_argument("--tokenizer-ckpt", help="tokenizer checkpoint (EMA weights preferred); also the C2I decoder")
    tok.add_argument("--tokenizer-config", help="grn config holding the HBQTokenizer (tokenizer or C2I config)")
    tok.add_argument("--imagenet-val", help="ImageNet val image folder (class sub-folders or flat)")
    tok.add_argument("--num-images", type=int, default=None, help="first N images only (default: all)")
    tok.add_argument("--size", type=int, default=256, help="ADM centre-crop size")
    tok.add_argument("--tokenizer-batch-size", type=int, default=32)
    tok.add_argument("--tokenizer-bf16", action="store_true", help="run the tokenizer under bf16 autocast")
    tok.add_argument("--recon-grid", type=int, default=0,
                     help="save the first N inputs over their reconstructions as OUT/reconstructions.png")
    tok.add_argument("--workers", type=int, default=4)
    parser.add_argument("--out", required=True, help="output folder (metrics.json, samples/)")
    parser.add_argument("--inception-weights", default=None, help="explicit pt_inception-2015-12-05 path")
    parser.add_argument("--random-init", action="store_true", help="random feature networks (smoke tests only)")
    args = parser.parse_args(argv)
    if not (args.ckpt or args.config or args.imagenet_val):
        parser.error("nothing to do: give --ckpt/--config (generator half) and/or --imagenet-val (tokenizer half)")
    for name in ("num_samples", "batch_size", "tokenizer_batch_size", "is_splits"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    from grn_lightning.eval.protocol import software_versions

    args = parse_args(argv)
    rank, world, device = _distributed()
    results: dict = {}
    halves = []
    if args.ckpt or args.config:
        halves.append(("generator", run_generator))
    if args.imagenet_val:
        halves.append(("tokenizer", run_tokenizer))
    failed = False
    for name, run in halves:
        try:
            results[name] = run(args, rank, world, device)
        except HalfUnavailable as err:
            failed = True
            results[name] = {"error": str(err)}
            print(f"[{name}] {err}", file=sys.stderr)
        except Exception as err:  # report and go on with the other half; the traceback is kept in metrics.json
            failed = True
            results[name] = {"error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()}
            print(f"[{name}] failed:\n{traceback.format_exc()}", file=sys.stderr)
    results["versions"] = software_versions()
    if rank == 0:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "metrics.json").write_text(json.dumps(results, indent=2, sort_keys=True, default=str))
        print_table(results)
        print(f"wrote {Path(args.out) / 'metrics.json'}")
    if world > 1:
        torch.distributed.destroy_process_group()
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
