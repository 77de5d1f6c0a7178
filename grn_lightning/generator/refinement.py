"""The GRN refinement process for training (SPEC §3) and its kept-fraction schedules (SPEC §6).

Training corrupts the clean labels y_gt [B, N, G] (K classes per group) with a per-sample kept
fraction p:  y_rand ~ U{0..K−1},  s ~ Bernoulli(p),  F = s·y_gt + (1−s)·y_rand  (per element), and
the loss is cross-entropy against y_gt over ALL elements, kept and random alike (absolute targets).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

RATIO_KINDS = ("uniform", "logit_normal")
SCHEDULES = ("linear", "cosine")


class RatioDistribution:
    """Per-sample kept fraction p for training (SPEC §3).

    Args:
        kind: "logit_normal" (release: p = sigmoid(N(mu, sigma))) or "uniform" (paper: p ~ U(0, 1)).
        mu: mean of the normal before the sigmoid (release: −0.8 for C2I, −1.3 for T2I/T2V).
        sigma: standard deviation of the normal before the sigmoid (release: 0.8 C2I, 1.3 T2I/T2V).
    """

    def __init__(self, kind: str = "logit_normal", mu: float = -0.8, sigma: float = 0.8) -> None:
        if kind not in RATIO_KINDS:
            raise ValueError(f"ratio kind={kind!r} is not one of {RATIO_KINDS}")
        if sigma <= 0:
            raise ValueError(f"ratio sigma must be > 0, got {sigma}")
        self.kind, self.mu, self.sigma = kind, float(mu), float(sigma)

    def sample(
        self, batch: int, device: torch.device | str = "cpu", generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """float32 [batch] kept fractions in [0, 1]."""
        if self.kind == "uniform":
            return torch.rand(batch, generator=generator, device=device)
        z = torch.randn(batch, generator=generator, device=device)
        return torch.sigmoid(self.mu + self.sigma * z)

    def __repr__(self) -> str:
        return f"RatioDistribution(kind={self.kind!r}, mu={self.mu}, sigma={self.sigma})"


def corrupt(
    labels: torch.Tensor, ratio: torch.Tensor, num_classes: int, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Training corruption F = s·y + (1−s)·y_rand with s ~ Bernoulli(p) per element (SPEC §3).

    Args:
        labels: int64 [B, ...] clean labels y_gt in 0..num_classes−1.
        ratio: float [B] kept probability p per sample.
        num_classes: K (2^M for GRN_ind, 2 for GRN_bit).
        generator: optional torch.Generator on labels' device.
    Returns:
        (state F int64 like labels, kept mask s bool like labels). A "random" element may equal y_gt
        by chance (probability 1/K); the mask records the Bernoulli draw, not equality.
    """
    shape = labels.shape
    rand_labels = torch.randint(0, num_classes, shape, generator=generator, device=labels.device)
    p = ratio.to(torch.float32).reshape(shape[0], *([1] * (len(shape) - 1)))
    kept = torch.rand(shape, generator=generator, device=labels.device) < p
    return torch.where(kept, labels, rand_labels), kept


def refinement_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of logits [..., K] against labels [...] over all elements, computed in fp32."""
    k = logits.shape[-1]
    return F.cross_entropy(logits.float().reshape(-1, k), labels.reshape(-1))


def ratio_bin_accuracy(
    logits: torch.Tensor, labels: torch.Tensor, ratio: torch.Tensor, bins: int = 10
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-ratio-bin accuracy statistics for logging.

    Bin b covers p ∈ [b/bins, (b+1)/bins) (p = 1 falls in the last bin). Returns (correct [bins],
    count [bins]) as float64 element counts, so they can be summed over steps/ranks before dividing.
    """
    if bins < 1:
        raise ValueError(f"bins must be >= 1, got {bins}")
    b = labels.shape[0]
    per_sample = labels[0].numel()
    correct = (logits.argmax(dim=-1) == labels).reshape(b, -1).sum(dim=1).double()
    idx = (ratio.float() * bins).long().clamp(0, bins - 1)
    hits = torch.zeros(bins, dtype=torch.float64, device=labels.device).index_add_(0, idx, correct)
    counts = torch.zeros(bins, dtype=torch.float64, device=labels.device).index_add_(
        0, idx, torch.full((b,), float(per_sample), dtype=torch.float64, device=labels.device)
    )
    return hits, counts


def keep_fractions(steps: int, schedule: str | Sequence[float] = "linear") -> list[float]:
    """Kept fraction p_i fed to the network at each of the `steps` refinement steps (SPEC §6).

    p_0 = 0 (pure noise). For i ≥ 1: linear p_i = i/T (C2I); cosine p_i = (1 − cos(π/2·i/(T−1)))·0.95
    (T2I/T2V release). A sequence of T floats in [0, 1] is taken as given (custom schedules, tests).
    The output is the full prediction of the last step; p_T is never used.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if not isinstance(schedule, str):
        values = [float(v) for v in schedule]
        if len(values) != steps or any(not 0.0 <= v <= 1.0 for v in values):
            raise ValueError(f"a custom schedule needs {steps} values in [0, 1], got {values}")
        return values
    if schedule == "linear":
        return [i / steps for i in range(steps)]
    if schedule == "cosine":
        if steps == 1:
            return [0.0]
        return [(1.0 - math.cos(math.pi / 2 * i / (steps - 1))) * 0.95 for i in range(steps)]
    raise ValueError(f"schedule={schedule!r} is not one of {SCHEDULES} or a list of {steps} floats")
