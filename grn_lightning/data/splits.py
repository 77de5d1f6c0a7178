"""Who reads what: shard lists expanded and split across ranks (nodes x GPUs) and DataLoader workers.

Rank and world size come from torch.distributed when it is initialised, else from the RANK / WORLD_SIZE
environment variables that torchrun and Lightning set, so worker processes (which never initialise
torch.distributed) still see the right values.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import braceexpand
import torch


@dataclass(frozen=True)
class ReaderSlot:
    """One reader: (rank, worker) of (world_size, num_workers)."""

    rank: int = 0
    world_size: int = 1
    worker: int = 0
    num_workers: int = 1

    @property
    def index(self) -> int:
        return self.rank * self.num_workers + self.worker

    @property
    def count(self) -> int:
        return self.world_size * self.num_workers


def rank_and_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def current_slot() -> ReaderSlot:
    rank, world = rank_and_world()
    info = torch.utils.data.get_worker_info()
    if info is None:
        return ReaderSlot(rank, world, 0, 1)
    return ReaderSlot(rank, world, info.id, info.num_workers)


def expand_shards(spec: str | list[str] | None) -> list[str]:
    """'a-{000..009}.tar' or a list of such patterns -> explicit list (order kept, duplicates kept)."""
    if spec is None:
        return []
    patterns = [spec] if isinstance(spec, str) else list(spec)
    urls: list[str] = []
    for pattern in patterns:
        for part in pattern.split("::"):  # webdataset's multi-source separator
            urls.extend(braceexpand.braceexpand(part))
    return urls


def check_local_shards(urls: list[str], option: str) -> None:
    """Fail before any work starts when a local shard file is missing (remote / pipe: URLs are not checked)."""
    if not urls:
        raise ValueError(f"data.{option}: no shards given")
    missing = [u for u in urls if "://" not in u and not u.startswith("pipe:") and not os.path.isfile(u)]
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise FileNotFoundError(
            f"data.{option}: {len(missing)} shard file(s) not found: {shown}. "
            "Check the path / brace pattern, or build shards with tools/make_shards.py."
        )


def assign_shards(urls: list[str], slot: ReaderSlot) -> tuple[list[str], tuple[int, int] | None]:
    """Training split. With at least one shard per reader, reader k reads shards k, k+n, k+2n, ...
    (no two readers share a shard). With fewer shards than readers, every reader reads all shards and keeps
    every n-th sample, offset k (returned as (k, n)), so the split stays disjoint."""
    if len(urls) >= slot.count:
        return urls[slot.index :: slot.count], None
    return urls, (slot.index, slot.count)
