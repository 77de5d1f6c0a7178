"""The one exponential moving average of every stage (SPEC §2 tokenizer EMA 0.9999; §3 C2I 0.9999 + 0.9996, T2X).

`EMA.update` is the single averaging step: shadow ← decay·shadow + (1 − decay)·param, one `torch._foreach_lerp_`
per track over the rank-local tensors, so the same code serves plain tensors and FSDP2-sharded `DTensor`
parameters (each rank averages its own shard). The shadows live in one of two places:

- tokenizer (`TokenizerModule`): fp32 tensors held by this plain object (bf16 weights would round small EMA
  increments to zero at decay 0.9999), created from the weights at the first update, saved by the owner under
  `checkpoint["ema"]`, swapped into the model for evaluation (`swap`);
- generators (`GeneratorModule`): frozen copies of the transformer (`frozen_copy`) registered as submodules, given
  to `update(model, tracks=...)`. They start from the initial weights, are sharded exactly like the model (so the
  update stays a local elementwise op on matching shards), saved by the strategy in full or sharded checkpoints
  (`ema.*` keys), and called directly for sampling.

Why not `torch.optim.swa_utils.AveragedModel` (+ `get_ema_multi_avg_fn`): it copies the weights at its first update
(the generators start from the initial weights), keeps the copy in the model's dtype (the tokenizer's fp32 shadows
for bf16 weights), and nests the copy as `.module` (every `ema.*` checkpoint key would change). Lightning has no EMA
callback that shards with FSDP2. Keeping the one class here preserves both stages' numbers exactly.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn

__all__ = ["EMA", "frozen_copy"]


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


def frozen_copy(model: nn.Module) -> nn.Module:
    """An EMA track of `model` held as a module: a deep copy in eval mode without gradients."""
    track = copy.deepcopy(model)
    for p in track.parameters():
        p.requires_grad_(False)
    return track.eval()


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
    def update(
        self, model: nn.Module, decay: float | Sequence[float] | None = None, tracks: Sequence[nn.Module] | None = None
    ) -> None:
        """shadow ← decay·shadow + (1 − decay)·param for every track (``decay`` overrides the configured ones).

        tracks: frozen copies of ``model`` (``frozen_copy``; one per decay) that hold the shadows instead of this
            object; their parameters are paired with the model's by position (both are wrapped and sharded alike,
            so FSDP1 flat parameters and FSDP2 shards pair up) and are looked up at every call, since sharding
            replaces the parameter objects."""
        if tracks is not None:
            if len(tracks) != len(self.decays):
                raise ValueError(f"EMA.update got {len(tracks)} tracks for {len(self.decays)} decays")
            params = [_local(p) for p in model.parameters()]
            shadows = [[_local(p) for p in track.parameters()] for track in tracks]
        else:
            named = self._ensure(model)
            params = [_local(p.detach()).float() for _, p in named]  # no copy when the parameter is already fp32
            shadows = [[_local(shadow[n]) for n, _ in named] for shadow in self.shadows]
        for shadow, d in zip(shadows, self._decays(decay)):
            torch._foreach_lerp_(shadow, params, 1.0 - d)
        self.num_updates += 1

    def _decays(self, decay: float | Sequence[float] | None) -> tuple[float, ...]:
        if decay is None:
            return self.decays
        if isinstance(decay, (int, float)):
            return (float(decay),) * len(self.decays)
        decays = tuple(float(d) for d in decay)
        if len(decays) != len(self.decays):
            raise ValueError(f"EMA.update got {len(decays)} decays for {len(self.decays)} tracks")
        return decays

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
