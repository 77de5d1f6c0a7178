"""Parallelism for the GRN transformers, applied in one place (DESIGN.md "parallelism ... in configure_model").

Order (torchtitan's): activation checkpointing → torch.compile → FSDP2 `fully_shard`. Checkpointing wraps each
block's forward first so the compiled region contains the recompute boundary, compile works per block (every
block has the same shapes, so one graph serves them all) and sharding goes last so its pre/post hooks wrap the
compiled block. The model itself stays a plain `nn.Module` (blocks in an `nn.ModuleList` named `blocks`).
"""

from __future__ import annotations

import torch
from torch import nn

COMPILE_MODES = ("none", "block", "model")
# Compiled graphs one block's forward may keep (torch's default: 8). Training on packed rows of varying length L
# recompiles the dynamic-shape block each time L crosses a bound inductor's kernels guard on (e.g. 12·L > 4096), and
# each such regime took two cache entries; the CPU repro's T2X fit with training seed 1 met its eighth at step ~10,200
# and the fullgraph compile stopped the run (docs/REPRODUCTION.md, twenty-third session). L is a multiple of the
# packing's pad_multiple up to its budget, so the regimes are few; 64 leaves room without hiding a shape leak.
BLOCK_RECOMPILE_LIMIT = 64


def apply_activation_checkpointing(model: nn.Module) -> int:
    """Recompute every block's activations in backward (SPEC §3 "per-block activation checkpointing").

    Uses the non-reentrant `checkpoint_wrapper`, which composes with compile and FSDP2. Returns the number of
    wrapped blocks; the state-dict keys are unchanged (the wrapper strips its own prefix).
    """
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import CheckpointImpl, checkpoint_wrapper

    blocks = _blocks(model)
    for index, block in enumerate(blocks):
        blocks[index] = checkpoint_wrapper(block, checkpoint_impl=CheckpointImpl.NO_REENTRANT)
    return len(blocks)


def apply_compile(model: nn.Module, mode: str) -> nn.Module:
    """`torch.compile` each block in place ("block") or the whole forward ("model"); "none" leaves it eager.

    Block-wise compile keeps the module tree (and therefore parameter names and FSDP units) unchanged:
    `nn.Module.compile()` compiles the module's `__call__` in place instead of returning a wrapper. It raises dynamo's
    recompile limit to `BLOCK_RECOMPILE_LIMIT` (a fullgraph block that passes the limit stops the run).
    """
    if mode not in COMPILE_MODES:
        raise ValueError(f"compile={mode!r} is not one of {COMPILE_MODES}")
    if mode == "block":
        # dynamo's limit is a process-wide setting read at each recompile: raise it, never lower a user's (torch
        # before 2.7 calls it cache_size_limit)
        config = torch._dynamo.config
        name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
        setattr(config, name, max(getattr(config, name), BLOCK_RECOMPILE_LIMIT))
        for block in _blocks(model):
            block.compile(fullgraph=True)
    elif mode == "model":
        model.compile()
    return model


def apply_fully_shard(
    model: nn.Module,
    mesh,
    mixed_precision: bool = False,
    reshard_after_forward: bool = True,
) -> None:
    """FSDP2: one unit per transformer block, then the root (embeddings, final layer, head).

    Args:
        model: the transformer (or its EMA copy: sharding it the same way gives every rank the same slices of
            the raw and the EMA weights, so the EMA update is a purely local foreach op).
        mesh: a 1-D data-parallel `DeviceMesh`.
        mixed_precision: bf16 parameters for compute and fp32 gradient reduction (`MixedPrecisionPolicy`); the
            sharded fp32 parameters stay the optimiser's master weights (SPEC §3 "bf16 autocast, fp32 master").
        reshard_after_forward: free gathered block parameters after forward (ZeRO-3); False keeps them for the
            backward (ZeRO-2-like, more memory, fewer all-gathers).
    """
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    kwargs = {"mesh": mesh}
    if mixed_precision:
        kwargs["mp_policy"] = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    for block in _blocks(model):
        fully_shard(block, reshard_after_forward=reshard_after_forward, **kwargs)
    # The root unit's parameters are needed right after the last block's forward: keep them gathered.
    fully_shard(model, reshard_after_forward=False, **kwargs)


def shard_frozen_encoder(model: nn.Module, blocks: nn.ModuleList, mesh) -> None:
    """FSDP2 for a frozen helper outside the optimiser (the umT5-XXL text encoder, ≈ 11 GB in bf16): each rank holds
    1/world of its weights, a block's weights are gathered for its forward and freed right after (ZeRO-3), and the
    root keeps the embedding table. Every rank must then run the same number of forwards (its collectives)."""
    from torch.distributed.fsdp import fully_shard

    for block in blocks:
        fully_shard(block, mesh=mesh, reshard_after_forward=True)
    fully_shard(model, mesh=mesh, reshard_after_forward=True)


def data_parallel_mesh(device_mesh):
    """The 1-D mesh FSDP2 shards over: Lightning `ModelParallelStrategy` names its dims
    ("data_parallel", "tensor_parallel"); tensor parallelism is not used by GRN, so its size must be 1."""
    names = getattr(device_mesh, "mesh_dim_names", None) or ()
    if "tensor_parallel" in names and device_mesh["tensor_parallel"].size() != 1:
        raise ValueError(
            "GRN shards with FSDP2 only: set ModelParallelStrategy(tensor_parallel_size=1, "
            f"data_parallel_size=<world size>), got tensor_parallel_size={device_mesh['tensor_parallel'].size()}"
        )
    return device_mesh["data_parallel"] if "data_parallel" in names else device_mesh


def is_sharded(model: nn.Module) -> bool:
    """True when `fully_shard` was already applied (parameters are DTensors)."""
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in model.parameters())


def is_fsdp1_wrapped(model: nn.Module | None) -> bool:
    """True for a FSDP1 `FullyShardedDataParallel` wrapper: the root Lightning's FSDPStrategy puts around the module,
    or a unit its auto-wrap policy made of a submodule (each transformer, e.g. the EMA copy, in c2i_fsdp1.yaml)."""
    from torch.distributed.fsdp import FullyShardedDataParallel

    return isinstance(model, FullyShardedDataParallel)


def _blocks(model: nn.Module) -> nn.ModuleList:
    blocks = getattr(model, "blocks", None)
    if not isinstance(blocks, nn.ModuleList):
        raise TypeError(f"{type(model).__name__} has no nn.ModuleList `blocks`; cannot parallelise it per block")
    return blocks
