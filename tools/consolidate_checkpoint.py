#!/usr/bin/env python
"""Sharded (distributed) Lightning checkpoint directory -> one ``.ckpt`` file for machines without distributed setup.

    python tools/consolidate_checkpoint.py run/checkpoints/last.ckpt                       # -> last.consolidated.ckpt
    python tools/consolidate_checkpoint.py run/checkpoints/last.ckpt --output c2i_b.ckpt

FSDP2 runs (``ModelParallelStrategy(save_distributed_checkpoint=True)``) and FSDP1 runs with
``FSDPStrategy(state_dict_type="sharded")`` save a folder: ``torch.distributed.checkpoint`` shards of the weights
and optimizer states (``.metadata`` + ``__<rank>_0.distcp``) and Lightning's ``meta.pt`` with everything else.
The output is the checkpoint a single-process run would have written: full ``state_dict`` (``model.*``, ``ema.*``),
``optimizer_states`` (keyed by parameter name, as ``torch.distributed.checkpoint`` stores them), ``hyper_parameters``,
``global_step``, loops and callbacks. Read on one device by ``C2IModule.load_from_checkpoint``,
``load_lightning_checkpoint`` (grn_lightning/eval/loading.py, ``tools/eval_imagenet.py --ckpt``) and
``grn validate/predict --ckpt_path``; ``grn fit --ckpt_path`` resumes from it on one device, and
``ModelParallelStrategy`` on any number of ranks (its full-checkpoint path accepts name-keyed optimizer states).

Why not ``python -m lightning.pytorch.utilities.consolidate_checkpoint``: it imports torchvision before
``grn_lightning`` can apply its CPU-wheel fix (README, compat.py), and it expects FSDP1's ``model`` key, which
``ModelParallelStrategy`` does not write (it writes ``state_dict``). The shards themselves are read by Lightning's
own ``_load_distributed_checkpoint`` (``torch.distributed.checkpoint`` without a process group), not re-implemented.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import grn_lightning  # noqa: F401  (torchvision compatibility before lightning)
import torch

DCP_METADATA = ".metadata"  # written by torch.distributed.checkpoint
LIGHTNING_METADATA = "meta.pt"  # lightning.fabric.utilities.load._METADATA_FILENAME
# Name parts of wrappers (FSDP1, activation checkpointing, torch.compile): an unsharded module has none of them.
WRAPPER_PARTS = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.", "_orig_mod.")


def check_sharded_checkpoint(folder: Path) -> None:
    """Raise a clear error unless ``folder`` is a sharded checkpoint directory written by Lightning."""
    if not folder.exists():
        raise FileNotFoundError(f"{folder} does not exist")
    if folder.is_file():
        raise ValueError(
            f"{folder} is a file, i.e. already a full (consolidated) checkpoint: load it directly, nothing to do"
        )
    missing = [name for name in (DCP_METADATA, LIGHTNING_METADATA) if not (folder / name).is_file()]
    if missing:
        raise ValueError(
            f"{folder} is not a sharded Lightning checkpoint: it lacks {' and '.join(missing)}. Expected the folder "
            "that ModelParallelStrategy(save_distributed_checkpoint=True) or FSDPStrategy(state_dict_type='sharded') "
            "writes (.metadata, __<rank>_0.distcp shards, meta.pt)"
        )


def load_consolidated(folder: Path) -> dict:
    """The full checkpoint dict, in the layout a single-process Trainer saves (``state_dict``, ``optimizer_states``)."""
    from lightning.fabric.utilities.load import _load_distributed_checkpoint

    check_sharded_checkpoint(folder)
    checkpoint = _load_distributed_checkpoint(folder)
    if "state_dict" not in checkpoint and "model" in checkpoint:
        # FSDPStrategy's sharded layout names the weights "model" (renamed as Lightning's own tool does; GPU only,
        # not exercised by the CPU tests).
        checkpoint["state_dict"] = checkpoint.pop("model")
    state = checkpoint.get("state_dict")
    if not isinstance(state, dict) or not state:
        raise ValueError(f"{folder}: the shards hold no model weights (keys: {sorted(checkpoint)})")
    not_tensors = [k for k, v in state.items() if not isinstance(v, torch.Tensor) or hasattr(v, "to_local")]
    if not_tensors:
        raise ValueError(f"{folder}: state_dict entries are not plain tensors after loading: {not_tensors[:5]}")
    wrapped = [k for k in state if any(part in k for part in WRAPPER_PARTS)]
    if wrapped:
        raise ValueError(f"{folder}: weight names carry wrapper prefixes an unsharded module lacks: {wrapped[:5]}")
    # Optimizers are stored under optimizer_0, optimizer_1, ... (strategy save_checkpoint); Trainer files list them.
    count = len([k for k in checkpoint if re.fullmatch(r"optimizer_[0-9]+", k)])
    if count:
        checkpoint["optimizer_states"] = [checkpoint.pop(f"optimizer_{index}") for index in range(count)]
    return checkpoint


def default_output(folder: Path) -> Path:
    """``run/last.ckpt/`` -> ``run/last.consolidated.ckpt`` (next to the folder)."""
    stem = folder.name[: -len(".ckpt")] if folder.name.endswith(".ckpt") else folder.name
    return folder.with_name(f"{stem}.consolidated.ckpt")


def summary(checkpoint: dict) -> str:
    """One line about a consolidated checkpoint (what was written, for the log)."""
    tensors = checkpoint["state_dict"]
    return (
        f"{len(tensors)} tensors ({sum(t.numel() for t in tensors.values()):,} values), "
        f"{len(checkpoint.get('optimizer_states', []))} optimizer state(s), global_step {checkpoint.get('global_step')}"
    )


def consolidate(folder: str | Path, output: str | Path | None = None, overwrite: bool = False) -> tuple[Path, str]:
    """Write the consolidated checkpoint of ``folder`` to ``output`` (default: ``default_output``).

    Returns (path written, summary line). The whole checkpoint is held in CPU memory once (weights + optimizer)."""
    folder = Path(folder)
    target = Path(output) if output is not None else default_output(folder)
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target} exists; choose another --output or pass --overwrite")
    if target.resolve() == folder.resolve():
        raise ValueError(f"--output {target} would replace the sharded checkpoint itself")
    checkpoint = load_consolidated(folder)
    target.parent.mkdir(parents=True, exist_ok=True)
    torch.save(checkpoint, target)
    return target, summary(checkpoint)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="sharded checkpoint directory (e.g. run/checkpoints/last.ckpt/)")
    parser.add_argument("--output", default=None, help="output .ckpt file (default: <name>.consolidated.ckpt beside)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    args = parser.parse_args(argv)
    try:
        target, line = consolidate(args.checkpoint, args.output, args.overwrite)
    except (FileNotFoundError, FileExistsError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {target}: {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
