"""Optimiser helpers: AdamW param groups, linear warm-up then constant (or cosine-decayed) LR, linear batch-size
LR scaling.

SPEC §2 (tokenizer): AdamW betas (0.9, 0.95), weight decay 0.01 on ≥2-D weights only, constant LR.
SPEC §3 (C2I): lr = 5e-5 · batch / 256, linear warm-up then constant.
The release trains for hundreds of thousands of steps at a constant LR. Short runs (the Fashion-MNIST reproduction,
docs/REPRODUCTION.md) end far better with the LR annealed to zero: ``lr_decay="cosine"`` over the run's steps.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

__all__ = ["LR_DECAYS", "WarmupConstant", "WarmupCosine", "adamw", "decay_param_groups", "scaled_lr", "warmup_constant_scheduler",
           "warmup_scheduler"]

LR_DECAYS = ("none", "cosine")


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


class WarmupCosine(WarmupConstant):
    """LR multiplier: the same linear warm-up, then a half cosine from 1 down to 0 at step ``total_steps``
    (0 after it). A class for the same reason as ``WarmupConstant``."""

    def __init__(self, warmup_steps: int, total_steps: int) -> None:
        super().__init__(warmup_steps)
        if total_steps <= warmup_steps:
            raise ValueError(f"cosine LR decay needs total_steps > warmup_steps, got {total_steps} <= {warmup_steps}")
        self.total_steps = int(total_steps)

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return super().__call__(step)
        done = min(1.0, (step - self.warmup_steps) / (self.total_steps - self.warmup_steps))
        return 0.5 * (1.0 + math.cos(math.pi * done))


def warmup_scheduler(optimizer: torch.optim.Optimizer, warmup_steps: int, decay: str, total_steps: int) -> LambdaLR:
    """LambdaLR for ``decay`` in LR_DECAYS: "none" (warm-up, then constant) or "cosine" (warm-up, then cosine to
    zero at ``total_steps``, the trainer's max_steps). A clear error when cosine has no finite length."""
    if decay not in LR_DECAYS:
        raise ValueError(f"lr_decay={decay!r} is not supported; allowed values: {LR_DECAYS}")
    if decay == "none":
        return warmup_constant_scheduler(optimizer, warmup_steps)
    if total_steps is None or total_steps <= 0:
        raise ValueError(f"lr_decay='cosine' anneals over trainer.max_steps, which is {total_steps}; set --trainer.max_steps")
    return LambdaLR(optimizer, WarmupCosine(warmup_steps, total_steps))


def decay_length(module, decay: str) -> int:
    """The run length `warmup_scheduler` needs: the trainer's max_steps for the cosine, else -1 (unused), so that a
    module without a trainer can still build its optimisers when it does not decay."""
    return module.trainer.max_steps if decay == "cosine" else -1


def scaled_lr(base_lr: float, batch_size: int, reference_batch: int = 256) -> float:
    """Linear scaling rule: ``base_lr · batch_size / reference_batch`` (global batch, all ranks × accumulation)."""
    if batch_size < 1 or reference_batch < 1:
        raise ValueError(f"batch sizes must be >= 1, got batch_size={batch_size}, reference_batch={reference_batch}")
    return base_lr * batch_size / reference_batch
