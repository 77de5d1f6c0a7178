"""Complexity-aware (entropy-guided) step counts, SPEC §6 / paper Eq. 8–9.

After `t0` warm-up steps on the linear schedule with α = Tmax, the normalised entropy H of the
conditional, pre-CFG, pre-temperature prediction decides how many steps a sample still gets:
Δ = round(clip(k·H + b, Tmin − t0, Tmax − t0)); the kept fraction then rises linearly from t0/Tmax to
1 over those Δ steps, so a sample makes t0 + Δ ∈ [Tmin, Tmax] network evaluations in total.
"""

from __future__ import annotations

import math

import torch


class AdaptiveSteps:
    """Entropy-guided per-sample step counts.

    Args:
        t0: warm-up steps before the entropy is measured (release: 5).
        k: slope of Δ in the normalised entropy (release script 700; paper 600).
        b: offset of Δ (release script −620; paper −547.2).
        t_min: fewest total steps per sample (20; T2I used 10).
        t_max: most total steps per sample; also α of the warm-up linear schedule (50).
        cool_temperature: release option (not in the paper): multiply τ by clip((Δ−10)/40 + 0.5, 0.5, 1)
            for the steps after the warm-up, so samples given few steps are sampled colder.
    """

    def __init__(
        self,
        t0: int = 5,
        k: float = 700.0,
        b: float = -620.0,
        t_min: int = 20,
        t_max: int = 50,
        cool_temperature: bool = False,
    ) -> None:
        if not 1 <= t0 < t_min <= t_max:
            raise ValueError(f"AdaptiveSteps needs 1 <= t0 < t_min <= t_max, got t0={t0}, t_min={t_min}, t_max={t_max}")
        self.t0, self.k, self.b = int(t0), float(k), float(b)
        self.t_min, self.t_max = int(t_min), int(t_max)
        self.cool_temperature = bool(cool_temperature)

    def remaining_steps(self, entropy: torch.Tensor) -> torch.Tensor:
        """Δ (int64) from the normalised entropy H (float64 recommended): round(clip(k·H + b, Tmin−t0, Tmax−t0))."""
        raw = self.k * entropy.double() + self.b
        return raw.clamp(self.t_min - self.t0, self.t_max - self.t0).round().long()

    def keep_fraction(self, step: int, delta: int) -> float:
        """Kept fraction fed at step `step` (0-based) of a sample that got Δ = `delta` remaining steps."""
        if step < self.t0:
            return step / self.t_max
        start = self.t0 / self.t_max
        return start + (1.0 - start) * (step - self.t0) / delta

    def temperature_factor(self, delta: int) -> float:
        """Release τ cooling factor clip((Δ−10)/40 + 0.5, 0.5, 1), or 1 when cooling is off."""
        if not self.cool_temperature:
            return 1.0
        return min(max((delta - 10) / 40 + 0.5, 0.5), 1.0)

    def __repr__(self) -> str:
        return (
            f"AdaptiveSteps(t0={self.t0}, k={self.k}, b={self.b}, t_min={self.t_min}, t_max={self.t_max}, "
            f"cool_temperature={self.cool_temperature})"
        )


def normalised_entropy(logits: torch.Tensor) -> torch.Tensor:
    """[B, ..., K] logits → [B] float64: mean over elements of (−Σ_k p_k log2 p_k) / log2 K."""
    logp = torch.log_softmax(logits.double(), dim=-1)
    ent = -(logp.exp() * logp).sum(dim=-1) / math.log(logits.shape[-1])
    return ent.reshape(ent.shape[0], -1).mean(dim=1)
