"""Tokenizer index labels [B, C, T, h, w] ↔ generator token states [B, N, G] (SPEC §1, §3).

Tokens are ordered t-major, then row, then column (N = T·h·w; T = 1 for images), matching the 2D RoPE
row-major order of the C2I transformer. Groups per token:
- GRN_ind: G = C index labels (values 0..2^M−1), group g = channel g.
- GRN_bit: G = M·C bits, round-major as the release's bit labels: group (i−1)·C + c = round i of channel c.
The bit conversion is `grn_lightning.hbq`'s (round 1 = most significant bit of the index label).
"""

from __future__ import annotations

import torch

from grn_lightning import hbq
from grn_lightning.hbq import VARIANTS, layout_dims


class TokenLayout:
    """Converts between the tokenizer's index labels and a GRN variant's token states.

    Args:
        variant: "ind" or "bit" (SPEC §1).
        channels: latent channels C of the tokenizer.
        rounds: HBQ rounds M.
    """

    def __init__(self, variant: str = "ind", channels: int = 16, rounds: int = 4) -> None:
        if variant not in VARIANTS:
            raise ValueError(f"variant={variant!r} is not one of {VARIANTS}")
        self.variant, self.channels, self.rounds = variant, channels, rounds
        self.groups, self.classes = layout_dims(variant, channels, rounds)

    def to_tokens(self, index_labels: torch.Tensor) -> torch.Tensor:
        """int [B, C, T, h, w] index labels → int64 [B, T·h·w, G] token states of this variant."""
        if index_labels.ndim != 5 or index_labels.shape[1] != self.channels:
            raise ValueError(f"index labels must be [B, {self.channels}, T, h, w], got {tuple(index_labels.shape)}")
        labels = index_labels.long()
        if self.variant == "bit":
            labels = hbq.index_to_bit_labels(labels, self.rounds)
        b, g = labels.shape[:2]
        return labels.permute(0, 2, 3, 4, 1).reshape(b, -1, g)

    def to_index_labels(self, tokens: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
        """int64 [B, N, G] token states → [B, C, T, h, w] index labels for `grid` = (T, h, w)."""
        t, h, w = grid
        b, n, g = tokens.shape
        if n != t * h * w or g != self.groups:
            raise ValueError(f"tokens {tuple(tokens.shape)} do not match grid {grid} with {self.groups} groups")
        labels = tokens.reshape(b, t, h, w, g).permute(0, 4, 1, 2, 3)
        if self.variant == "bit":
            labels = hbq.bit_to_index_labels(labels, self.rounds)
        return labels.long().contiguous()

    def __repr__(self) -> str:
        return f"TokenLayout(variant={self.variant!r}, channels={self.channels}, rounds={self.rounds})"
