#!/usr/bin/env python
"""Convert a released HBQ tokenizer checkpoint (bytedance-research/GRN) into a grn-lightning state dict.

The output is ``torch.save(HBQTokenizer.state_dict())`` (keys ``vae.*``), which the tokenizer and generator
stages load directly (e.g. ``frozen_tokenizer`` / ``tokenizer_ckpt`` options). Every released key must map
onto a parameter of the same shape and every parameter must be covered, else the tool stops listing the keys.

    python tools/convert_official.py HBQ_image_tokenizer_16dim_M4.ckpt -o hbq16.pt
    python tools/convert_official.py --weight hbq_tokenizer_64ch -o hbq64.pt --source vae --dtype bfloat16
    python tools/convert_official.py in.ckpt -o out.pt --verify-load   # also instantiates and loads (needs ~3 GB RAM)

Latent channels are read from the file (``conv2.weight``); the architecture is the "released" preset unless
``--preset`` says otherwise.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import grn_lightning  # noqa: F401  (torchvision compatibility, before anything else)
import torch

from grn_lightning.tokenizer.convert import (
    DTYPES,
    SOURCES,
    convert_released_state_dict,
    load_checkpoint_file,
    select_released_weights,
)
from grn_lightning.tokenizer.vae import VAE_PRESETS, HBQTokenizer


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", nargs="?", help="released checkpoint file (.ckpt)")
    parser.add_argument("--weight", help="registered weight name instead of a path (resolved offline, see tools/fetch_weights.py)")
    parser.add_argument("-o", "--output", required=True, help="where to write the converted state dict (.pt)")
    parser.add_argument("--source", choices=SOURCES, default="auto", help="weights to take: ema (preferred by auto) or vae")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32", help="dtype of the written tensors")
    parser.add_argument("--preset", choices=sorted(VAE_PRESETS), default="released", help="VAE architecture preset")
    parser.add_argument("--num-rounds", type=int, default=4, help="HBQ rounds M (no parameters; recorded in the summary)")
    parser.add_argument("--verify-load", action="store_true", help="instantiate the tokenizer and load strictly")
    parser.add_argument("--trust-pickle", action="store_true", help="allow non-tensor pickled objects in the file")
    args = parser.parse_args(argv)
    if (args.checkpoint is None) == (args.weight is None):
        parser.error("give exactly one of CHECKPOINT or --weight")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    path = args.checkpoint
    if args.weight:
        from grn_lightning.weights import resolve_weight

        path = str(resolve_weight(args.weight))
    start = time.time()
    _log(f"[1/4] reading {path}")
    checkpoint = load_checkpoint_file(path, trust_pickle=args.trust_pickle)
    released, source = select_released_weights(checkpoint, args.source)
    if "conv2.weight" not in released:
        raise SystemExit(f"{path}: the {source} weights have no conv2.weight; is this an HBQ tokenizer checkpoint?")
    latent_channels = int(released["conv2.weight"].shape[0])
    file_dtypes = sorted({str(t.dtype).removeprefix("torch.") for t in released.values()})
    _log(f"[2/4] using {source!r}: {len(released)} tensors, dtypes {file_dtypes}, latent_channels={latent_channels}")

    with torch.device("meta"):  # names and shapes only; no memory for 700M parameters
        skeleton = HBQTokenizer(latent_channels=latent_channels, num_rounds=args.num_rounds, preset=args.preset)
    state, dropped = convert_released_state_dict(released, skeleton, dtype=DTYPES[args.dtype])
    if dropped:
        _log(f"      dropped legacy extras: {dropped}")
    _log(f"[3/4] mapped {len(state)} tensors onto HBQTokenizer(preset={args.preset!r})")

    if args.verify_load:
        model = HBQTokenizer(latent_channels=latent_channels, num_rounds=args.num_rounds, preset=args.preset)
        model.load_state_dict(state, strict=True)
        _log("      strict load into a real HBQTokenizer: ok")
        del model
    torch.save(state, args.output)
    summary = {
        "input": path, "output": args.output, "source": source, "file_dtypes": file_dtypes, "dtype": args.dtype,
        "latent_channels": latent_channels, "preset": args.preset, "tensors": len(state),
        "parameters": sum(t.numel() for t in state.values()), "dropped": dropped, "seconds": round(time.time() - start, 2),
    }  # fmt: skip
    _log(f"[4/4] wrote {args.output}")
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
