"""Complexity-aware (entropy-guided) step counts, SPEC §6 / paper Eq. 8–9.

The first `t0` forwards run the linear schedule with α = Tmax (kept fractions 0, 1/Tmax, …, (t0−1)/Tmax). The next
forward, loop index i = t0 (the (t0+1)-th, whose input kept fraction is t0/Tmax: 0.10 for t0 5, Tmax 50), gives the
prediction whose normalised entropy H (conditional, before CFG and temperature) sets the remaining steps
Δ = round(clip(k·H + b, Tmin − t0, Tmax − t0)); from that forward on, the kept fraction rises linearly from t0/Tmax
to 1 over the Δ steps i = t0 … t0+Δ−1, so a sample makes t0 + Δ ∈ [Tmin, Tmax] network evaluations in total.

Presets (`PRESETS`, `AdaptiveSteps.preset`): "paper" (Tab. 11: k 600, b −547.2, the defaults) and "release" (the
release's C2I script: k 700, b −620 and its temperature cooling). Text models used Tmin 10 (SPEC §6).
"""

from __future__ import annotations

import math

import torch

PRESETS = {
    "paper": {"k": 600.0, "b": -547.2, "cool_temperature": False},
    "release": {"k": 700.0, "b": -620.0, "cool_temperature": True},
}


class AdaptiveSteps:
    """Entropy-guided per-sample step counts.

    Args:
        t0: warm-up forwards before the entropy forward (5); the entropy is read from forward index t0.
        k: slope of Δ in the normalised entropy (paper 600; release script 700).
        b: offset of Δ (paper −547.2; release script −620).
        t_min: fewest total steps per sample (20; T2I/T2V configs use 10).
        t_max: most total steps per sample; also α of the warm-up linear schedule (50).
        cool_temperature: release option (not in the paper): multiply τ by clip((Δ−10)/40 + 0.5, 0.5, 1) from the
            entropy forward on, so samples given few steps are sampled colder.
    """

    def __init__(
        self,
        t0: int = 5,
        k: float = 600.0,
        b: float = -547.2,
        t_min: int = 20,
        t_max: int = 50,
        cool_temperature: bool = False,
    ) -> None:
        if not 1 <= t0 < t_min <= t_max:
            raise ValueError(f"AdaptiveSteps needs 1 <= t0 < t_min <= t_max, got t0={t0}, t_min={t_min}, t_max={t_max}")
        self.t0, self.k, self.b = int(t0), float(k), float(b)
        self.t_min, self.t_max = int(t_min), int(t_max)
        self.cool_temperature = bool(cool_temperature)

    @classmethod
    def preset(cls, name: str, **overrides) -> AdaptiveSteps:
        """`AdaptiveSteps` with the k, b and cooling of preset `name` ("paper" or "release"), then `overrides`."""
        if name not in PRESETS:
            raise ValueError(f"adaptive preset {name!r} is not one of {sorted(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})

    def remaining_steps(self, entropy: torch.Tensor) -> torch.Tensor:
        """Δ (int64) from the normalised entropy H (float64 recommended): round(clip(k·H + b, Tmin−t0, Tmax−t0))."""
        raw = self.k * entropy.double() + self.b
        return raw.clamp(self.t_min - self.t0, self.t_max - self.t0).round().long()

    def keep_fractions(self, step: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        """float64 kept fraction fed at loop index `step` (int64 tensor) of samples with Δ = `delta` (0 = not yet
        known: the warm-up's linear schedule step/Tmax, which is also what index t0 gets for any Δ)."""
        step = step.double()
        start = self.t0 / self.t_max
        after = start + (1.0 - start) * (step - self.t0) / delta.clamp(min=1).double()
        return torch.where((delta > 0) & (step >= self.t0), after, step / self.t_max)

    def temperature_factors(self, delta: torch.Tensor) -> torch.Tensor:
        """float64 release τ cooling clip((Δ−10)/40 + 0.5, 0.5, 1) per sample (1 when cooling is off or Δ = 0)."""
        factor = ((delta.double() - 10.0) / 40.0 + 0.5).clamp(0.5, 1.0)
        if not self.cool_temperature:
            return torch.ones_like(factor)
        return torch.where(delta > 0, factor, torch.ones_like(factor))

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
