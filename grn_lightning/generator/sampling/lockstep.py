"""Keep sampling processes in step when the model's forward is collective (FSDP / FSDP2 shards).

A sharded model all-gathers its weights inside every forward, so every process must make the same number of
forward calls. Entropy-guided step counts differ per sample and therefore per process; `RefinementSampler`
takes a `lockstep` callable and lets a process that has finished make 1-row dummy forwards until all have.
This file holds the one piece of `torch.distributed` code for that, outside the sampler and the models.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def distributed_lockstep(device: torch.device | str, group=None) -> Callable[[bool], bool] | None:
    """A `lockstep` for `RefinementSampler.sample/edit`, or None when not running distributed (world size 1).

    Args:
        device: device of the flag tensor (the process group's backend device: "cuda" for NCCL, "cpu" for gloo).
        group: process group (default: the world).
    Returns:
        has_work → any process has work: one MAX all-reduce of a 1-element tensor per sampler step.
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size(group) == 1:
        return None

    def any_rank_has_work(has_work: bool) -> bool:
        flag = torch.tensor([1 if has_work else 0], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=group)
        return bool(flag.item())

    return any_rank_has_work
