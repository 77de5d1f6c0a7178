"""Aspect-ratio buckets x pixel budgets for T2I/T2V data (SPEC §8).

A bucket is a latent grid ph x pw for an aspect ratio r = h / w under a pixel budget whose square latent
side is s: pw = round(sqrt(s^2 / r)), ph = round(sqrt(s^2 / r) * r); pixels are 16x the grid (tokenizer
stride 16). Example: r = 9/16 at 0.41M (s = 40) -> latent 30 x 53 -> 480 x 848 pixels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# h / w, tall to wide, as listed in the release.
ASPECT_RATIOS: tuple[float, ...] = (
    3.0, 5 / 2, 2.0, 16 / 9, 3 / 2, 4 / 3, 1.16, 1.0, 1 / 1.16, 3 / 4, 2 / 3, 9 / 16, 1 / 2, 2 / 5, 1 / 3,
)
# pixel budget (megapixels, the release's names) -> square latent side s.
PIXEL_BUDGETS: dict[str, int] = {"0.06M": 16, "0.25M": 32, "0.41M": 40, "0.92M": 60, "1M": 64, "2M": 90}
SPATIAL_STRIDE = 16


@dataclass(frozen=True)
class Bucket:
    """ratio: the template h / w (one of ASPECT_RATIOS; the 3D RoPE canvas uses it, never latent_height /
    latent_width, SPEC §5); latent_height x latent_width: the grid under the budget."""

    ratio: float
    latent_height: int
    latent_width: int

    @property
    def height(self) -> int:
        return self.latent_height * SPATIAL_STRIDE

    @property
    def width(self) -> int:
        return self.latent_width * SPATIAL_STRIDE


def bucket_for_ratio(ratio: float, budget: str) -> Bucket:
    """The bucket of one of ASPECT_RATIOS under a pixel budget name (see PIXEL_BUDGETS)."""
    if budget not in PIXEL_BUDGETS:
        raise ValueError(f"pixel_budget must be one of {sorted(PIXEL_BUDGETS)}, got {budget!r}")
    side = PIXEL_BUDGETS[budget]
    width = math.sqrt(side * side / ratio)
    return Bucket(ratio=ratio, latent_height=round(width * ratio), latent_width=round(width))


def nearest_aspect_ratio(height: float, width: float) -> float:
    """The template ratio of ASPECT_RATIOS nearest to height / width, measured in log space so that 2:1 and 1:2 are
    equally far from 1:1. Media more extreme than 3:1 or 1:3 land in the 3:1 / 1:3 bucket (SPEC §8)."""
    if height <= 0 or width <= 0:
        raise ValueError(f"size must be positive, got {height}x{width}")
    log_ratio = math.log(height / width)
    return min(ASPECT_RATIOS, key=lambda r: abs(math.log(r) - log_ratio))


def nearest_bucket(height: int, width: int, budget: str) -> Bucket:
    """Bucket of the template ratio nearest to height / width (`nearest_aspect_ratio`)."""
    return bucket_for_ratio(nearest_aspect_ratio(height, width), budget)


def all_buckets(budget: str) -> list[Bucket]:
    return [bucket_for_ratio(r, budget) for r in ASPECT_RATIOS]
