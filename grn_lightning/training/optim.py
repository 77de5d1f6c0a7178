"""Optimiser helpers: AdamW param groups, linear warm-up then constant LR, linear batch-size LR scaling.

SPEC §2 (tokenizer): AdamW betas (0.9, 0.95), weight decay 0.01 on ≥2-D weights only, constant LR.
SPEC §3 (C2I): lr = 5e-5 · batch / 256, linear warm-up then constant.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

__all__ = ["WarmupConstant", "adamw", "decay_param_groups", "scaled_lr", "warmup_constant_scheduler"]


def decay_param_groups(
    params: nn.Module | Iterable[tuple[str, torch.Tensor]], weight_decay: float | None = None
) -> list[dict]:
    """Two AdamW groups: weight decay on ≥2-D weights (matrices, conv kernels, embeddings), none on the 1-D
    tensors (biases, norm gains). Frozen parameters are left out. ``weight_decay=None`` leaves the decay group
    without a ``weight_decay`` key, so the optimiser's own ``weight_decay`` argument (e.g. from a config's
    ``OptimizerCallable``) applies to it. Groups carry the parameter names (``names``); torch optimisers keep
    extra group keys."""
    named = params.named_parameters() if isinstance(params, nn.Module) else params
    decay, no_decay, decay_names, no_decay_names = [], [], [], []
    for name, p in named:
        if not p.requires_grad:
            continue
        if p.ndim >= 2:
            decay.append(p), decay_names.append(name)
        else:
            no_decay.append(p), no_decay_names.append(name)
    groups = []
    if decay:
        group = {"params": decay, "names": decay_names}
        if weight_decay is not None:
            group["weight_decay"] = weight_decay
        groups.append(group)
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0, "names": no_decay_names})
    if not groups:
        raise ValueError("no trainable parameters to optimise")
    return groups


def adamw(
    module: nn.Module, lr: float = 1e-4, betas: tuple[float, float] = (0.9, 0.95), weight_decay: float = 0.01
) -> torch.optim.AdamW:
    """AdamW over ``decay_param_groups(module, weight_decay)`` (the release's tokenizer optimiser, SPEC §2)."""
    return torch.optim.AdamW(decay_param_groups(module, weight_decay), lr=lr, betas=betas)


class WarmupConstant:
    """LR multiplier: linear from 1/warmup_steps up to 1 over ``warmup_steps`` steps, then constant 1.

    A class (not a lambda) so ``LambdaLR.state_dict`` can save it and a resumed run continues the same curve.
    """

    def __init__(self, warmup_steps: int = 0) -> None:
        if warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
        self.warmup_steps = int(warmup_steps)

    def __call__(self, step: int) -> float:
        if self.warmup_steps == 0:
            return 1.0
        return min(1.0, (step + 1) / self.warmup_steps)


def warmup_constant_scheduler(optimizer: torch.optim.Optimizer, warmup_steps: int = 0) -> LambdaLR:
    """LambdaLR with ``WarmupConstant``; call ``.step()`` once per optimiser step."""
    return LambdaLR(optimizer, WarmupConstant(warmup_steps))


def scaled_lr(base_lr: float, batch_size: int, reference_batch: int = 256) -> float:
    """Linear scaling rule: ``base_lr · batch_size / reference_batch`` (global batch, all ranks × accumulation)."""
    if batch_size < 1 or reference_batch < 1:
        raise ValueError(f"batch sizes must be >= 1, got batch_size={batch_size}, reference_batch={reference_batch}")
    return base_lr * batch_size / reference_batch
