"""Exponential moving average of a module's parameters (SPEC §2 tokenizer EMA 0.9999; §3 C2I 0.9999 + 0.9996).

The shadow weights are kept in fp32 whatever the parameter dtype (bf16 weights would round small EMA increments
to zero at decay 0.9999). The class is a plain object, not an ``nn.Module``: the owning LightningModule stores
``state_dict()`` in its checkpoint, so the shadows are saved without being seen by optimisers, ``.to()`` casts or
FSDP wrapping. The update works on the tensors ``named_parameters()`` yields, through ``torch._foreach`` ops, so
applied to each parameter's rank-local tensor, so the same code serves plain tensors and FSDP2-sharded
``DTensor`` parameters (each rank then keeps the EMA of its own shard only).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn

__all__ = ["EMA"]


def _is_dtensor(t: torch.Tensor) -> bool:
    return type(t).__name__ == "DTensor" or type(getattr(t, "data", None)).__name__ == "DTensor"


def _like_param(value: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
    """``value`` as an fp32 tensor laid out like ``param`` (same device; same DTensor mesh/placements)."""
    if _is_dtensor(param) and not _is_dtensor(value):
        from torch.distributed.tensor import distribute_tensor

        return distribute_tensor(value.float().to(param.device), param.device_mesh, param.placements)
    if _is_dtensor(value) and not _is_dtensor(param):
        value = value.full_tensor()
    return value.detach().float().to(param.device).clone()


def _local(t: torch.Tensor) -> torch.Tensor:
    """The rank-local shard of a DTensor (in-place ops on it update the DTensor); a plain tensor itself.
    DTensor has no sharding rule for every foreach op (``_foreach_copy_`` has none in torch 2.13), and the
    EMA is elementwise, so working on the local shards is exact and avoids dispatch overhead."""
    t = t.data if isinstance(t, nn.Parameter) else t
    return t.to_local() if _is_dtensor(t) else t


class EMA:
    """One or more EMA tracks of the trainable parameters of a module.

    Args:
        decays: one decay per track, each in [0, 1); e.g. ``(0.9999,)`` or ``(0.9999, 0.9996)`` for the release's
            second C2I track. Track 0 is the one used for evaluation by default.

    The shadows are created lazily from the module at the first ``update``/``swap`` (after Lightning has moved and,
    where configured, sharded the model), or from a checkpoint by ``load_state_dict``.
    """

    def __init__(self, decays: Sequence[float] = (0.9999,)) -> None:
        decays = tuple(float(d) for d in decays)
        if not decays:
            raise ValueError("EMA decays must name at least one track, e.g. (0.9999,)")
        for d in decays:
            if not 0.0 <= d < 1.0:
                raise ValueError(f"EMA decay must lie in [0, 1), got {d}")
        self.decays = decays
        self.num_updates = 0
        self.shadows: list[dict[str, torch.Tensor]] | None = None

    # -- helpers -------------------------------------------------------------------------------------------
    @staticmethod
    def _named(model: nn.Module) -> list[tuple[str, torch.Tensor]]:
        return [(n, p) for n, p in model.named_parameters() if p.requires_grad]

    @torch.no_grad()
    def _ensure(self, model: nn.Module) -> list[tuple[str, torch.Tensor]]:
        named = self._named(model)
        if self.shadows is None:
            self.shadows = [{n: p.detach().float().clone() for n, p in named} for _ in self.decays]
            return named
        names = [n for n, _ in named]
        for shadow in self.shadows:
            if list(shadow) != names:
                missing = sorted(set(names) - set(shadow))[:5]
                extra = sorted(set(shadow) - set(names))[:5]
                raise ValueError(f"EMA shadow does not match the model's parameters (missing {missing}, extra {extra})")
            for n, p in named:
                s = shadow[n]
                # Loaded from a checkpoint (CPU, maybe unsharded): re-create it like the parameter (device, dtype
                # fp32, DTensor placement) and copy the values in.
                if s.device != p.device or _is_dtensor(s) != _is_dtensor(p) or s.dtype != torch.float32:
                    shadow[n] = _like_param(s, p)
        return named

    # -- public API ---------------------------------------------------------------------------------------
    @torch.no_grad()
    def update(self, model: nn.Module, decay: float | Sequence[float] | None = None) -> None:
        """shadow ← decay·shadow + (1 − decay)·param for every track (``decay`` overrides the configured ones)."""
        named = self._ensure(model)
        if decay is None:
            decays = self.decays
        elif isinstance(decay, (int, float)):
            decays = (float(decay),) * len(self.decays)
        else:
            decays = tuple(float(d) for d in decay)
            if len(decays) != len(self.decays):
                raise ValueError(f"EMA.update got {len(decays)} decays for {len(self.decays)} tracks")
        params = [_local(p.detach()).float() for _, p in named]  # no copy when the parameter is already fp32
        for shadow, d in zip(self.shadows, decays):
            torch._foreach_lerp_([_local(shadow[n]) for n, _ in named], params, 1.0 - d)
        self.num_updates += 1

    @torch.no_grad()
    def copy_to(self, model: nn.Module, track: int = 0) -> None:
        """Overwrite the module's parameters with track ``track`` (cast to each parameter's dtype)."""
        named = self._ensure(model)
        shadow = self.shadows[track]
        torch._foreach_copy_([_local(p) for _, p in named], [_local(shadow[n]) for n, _ in named])

    @contextmanager
    def swap(self, model: nn.Module, track: int = 0) -> Iterator[nn.Module]:
        """Run the body with the EMA weights of ``track`` in ``model``; the raw weights come back afterwards."""
        if not 0 <= track < len(self.decays):
            raise ValueError(f"EMA track must be in 0..{len(self.decays) - 1}, got {track}")
        named = self._ensure(model)
        with torch.no_grad():
            backup = [_local(p).clone() for _, p in named]
            self.copy_to(model, track)
        try:
            yield model
        finally:
            with torch.no_grad():
                torch._foreach_copy_([_local(p) for _, p in named], backup)

    def state_dict(self) -> dict:
        return {"decays": list(self.decays), "num_updates": self.num_updates, "shadows": self.shadows}

    def load_state_dict(self, state: dict) -> None:
        decays = tuple(float(d) for d in state["decays"])
        if len(decays) != len(self.decays):
            raise ValueError(f"checkpoint holds {len(decays)} EMA tracks, this run configures {len(self.decays)}")
        self.num_updates = int(state["num_updates"])
        self.shadows = None if state["shadows"] is None else [dict(s) for s in state["shadows"]]
