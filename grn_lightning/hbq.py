"""Hierarchical Binary Quantization (HBQ, SPEC §1): quantise, dequantise, label layouts, STE.

Every element of ``F = tanh(mu)`` in (-1, 1) is coded by M binary decisions. Round i compares F with the
centre ``c_i`` of the current interval (strict ``>``: a tie goes to the lower bucket) and halves the
interval; the reconstruction after k rounds is ``Σ_{i≤k} (2 q_i − 1) · 2^{−i}`` (coarse-to-fine).

Bit tensors produced here have shape ``[M, *F.shape]`` (round 1 first). Two label layouts must match the
release so released generators and tokenizers interoperate (SPEC §1):

- index labels (GRN_ind): ``y = Σ_i q_i · 2^{M−i}`` per latent channel (round 1 = most significant bit);
- bit labels (GRN_bit): the M bit planes stacked along channels, round-major (channel ``(i−1)·C + c``).

All arithmetic runs in fp32 (fp64 for very deep M) outside autocast, so bf16 autocast cannot change labels.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

# SPEC §1: "M ≥ 100 means no quantization" (the paper's continuous "w/o quant" baseline, Table 2).
CONTINUOUS_ROUNDS = 100
# Index labels are int64 and the centres are dyadic rationals with M fractional bits: keep M exact.
MAX_DISCRETE_ROUNDS = 52


def _check_rounds(num_rounds: int, name: str = "num_rounds") -> int:
    if isinstance(num_rounds, bool) or not isinstance(num_rounds, int) or not 1 <= num_rounds <= MAX_DISCRETE_ROUNDS:
        raise ValueError(f"{name} must be an int in [1, {MAX_DISCRETE_ROUNDS}] for discrete HBQ, got {num_rounds!r}")
    return num_rounds


def _work_dtype(num_rounds: int) -> torch.dtype:
    # Centres c_i have i fractional bits; fp32 holds them exactly up to 24 bits (then fall back to fp64).
    return torch.float32 if num_rounds <= 23 else torch.float64


def _round_weights(num_rounds: int, like: torch.Tensor, dtype: torch.dtype, ndim: int) -> torch.Tensor:
    """2^{-i} for i = 1..M, shaped [M, 1, ..., 1] to broadcast against a bit tensor of `ndim` dims."""
    i = torch.arange(1, num_rounds + 1, device=like.device, dtype=dtype)
    return torch.pow(torch.tensor(2.0, device=like.device, dtype=dtype), -i).view(num_rounds, *([1] * (ndim - 1)))


def hbq_bits(f: torch.Tensor, num_rounds: int) -> torch.Tensor:
    """Rounds q_1..q_M of HBQ for `f` already in (-1, 1). Returns bool ``[M, *f.shape]``.

    Vectorised over elements; the loop runs over the M rounds only (each round depends on the last).
    """
    _check_rounds(num_rounds)
    dtype = _work_dtype(num_rounds)
    with torch.autocast(device_type=f.device.type, enabled=False):
        x = f.detach().to(dtype)
        centre = torch.zeros_like(x)
        bits = torch.empty((num_rounds, *x.shape), dtype=torch.bool, device=x.device)
        for i in range(num_rounds):
            q = x > centre  # strict: a value exactly at the centre goes to the lower bucket (SPEC §1)
            bits[i] = q
            step = 2.0 ** -(i + 1)
            centre = centre + torch.where(q, step, -step)
    return bits


def bits_to_values(bits: torch.Tensor, rounds: int | None = None) -> torch.Tensor:
    """F̂ = Σ_{i≤rounds} (2 q_i − 1) · 2^{−i} from bits ``[M, ...]`` (all M rounds when `rounds` is None).

    With ``rounds = k < M`` this is the coarse reconstruction from the first k rounds (error ≤ 2^{−k}).
    Returns float32 (float64 beyond 23 rounds, where fp32 is no longer exact).
    """
    num_rounds = bits.shape[0]
    k = num_rounds if rounds is None else rounds
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= num_rounds:
        raise ValueError(f"rounds must be an int in [1, {num_rounds}] (the rounds present), got {rounds!r}")
    dtype = _work_dtype(k)
    signs = bits[:k].to(dtype) * 2 - 1
    return (signs * _round_weights(k, bits, dtype, bits.ndim)).sum(0)


def index_labels(bits: torch.Tensor) -> torch.Tensor:
    """Index labels y = Σ_i q_i · 2^{M−i} (round 1 = MSB), int64 of shape ``bits.shape[1:]``."""
    num_rounds = _check_rounds(bits.shape[0], "number of rounds in bits")
    shifts = torch.arange(num_rounds - 1, -1, -1, device=bits.device, dtype=torch.int64)
    shifts = shifts.view(num_rounds, *([1] * (bits.ndim - 1)))
    return (bits.to(torch.int64) << shifts).sum(0)


def index_labels_to_bits(labels: torch.Tensor, num_rounds: int) -> torch.Tensor:
    """Inverse of :func:`index_labels`: bool ``[M, *labels.shape]``."""
    _check_rounds(num_rounds)
    labels = labels.to(torch.int64)
    # Checked where it is free: on an accelerator the check would read min/max back, a host sync in every training
    # step (labels there come from the tokenizer or token records, in range by construction).
    if labels.device.type == "cpu" and labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= 2**num_rounds):
        raise ValueError(f"index labels must lie in [0, {2**num_rounds - 1}] for num_rounds={num_rounds}")
    shifts = torch.arange(num_rounds - 1, -1, -1, device=labels.device, dtype=torch.int64)
    shifts = shifts.view(num_rounds, *([1] * labels.ndim))
    return ((labels.unsqueeze(0) >> shifts) & 1).to(torch.bool)


def bit_labels(bits: torch.Tensor) -> torch.Tensor:
    """Bit labels, round-major: ``[M, B, C, ...] -> int64 [B, M·C, ...]`` with channel (i−1)·C + c."""
    num_rounds, batch, channels = bits.shape[:3]
    return bits.movedim(0, 1).reshape(batch, num_rounds * channels, *bits.shape[3:]).to(torch.int64)


def bit_labels_to_bits(labels: torch.Tensor, num_rounds: int) -> torch.Tensor:
    """Inverse of :func:`bit_labels`: ``[B, M·C, ...] -> bool [M, B, C, ...]``."""
    _check_rounds(num_rounds)
    batch, mc = labels.shape[:2]
    if mc % num_rounds:
        raise ValueError(f"bit labels have {mc} channels, not a multiple of num_rounds={num_rounds}")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) > 1):
        raise ValueError("bit labels must be 0 or 1")
    shaped = labels.reshape(batch, num_rounds, mc // num_rounds, *labels.shape[2:])
    return shaped.movedim(1, 0).to(torch.bool)


def index_labels_to_values(labels: torch.Tensor, num_rounds: int) -> torch.Tensor:
    """F̂ from index labels (no tanh inversion: the decoder was trained on F̂, SPEC §1)."""
    return bits_to_values(index_labels_to_bits(labels, num_rounds))


def bit_labels_to_values(labels: torch.Tensor, num_rounds: int) -> torch.Tensor:
    """F̂ from round-major bit labels ``[B, M·C, ...] -> [B, C, ...]``."""
    return bits_to_values(bit_labels_to_bits(labels, num_rounds))


def index_to_bit_labels(labels: torch.Tensor, num_rounds: int) -> torch.Tensor:
    """``[B, C, ...]`` index labels -> ``[B, M·C, ...]`` round-major bit labels."""
    return bit_labels(index_labels_to_bits(labels, num_rounds))


def bit_to_index_labels(labels: torch.Tensor, num_rounds: int) -> torch.Tensor:
    """``[B, M·C, ...]`` round-major bit labels -> ``[B, C, ...]`` index labels."""
    return index_labels(bit_labels_to_bits(labels, num_rounds))


def bit_balance(bits: torch.Tensor) -> torch.Tensor:
    """Fraction of ones per round, float32 ``[M]`` (0.5 everywhere = every round carries a full bit)."""
    return bits.reshape(bits.shape[0], -1).float().mean(1)


@dataclass
class HBQOutput:
    """Result of :class:`HBQ`.

    values: what the decoder consumes — F̂ with a straight-through gradient (or F in continuous mode).
    features: F = tanh(mu) (fp32).
    bits: bool ``[M, *mu.shape]`` or None in continuous mode.
    commitment: MSE(stopgrad F̂, F), detached, for logging only (weight 0 in the release).
    """

    values: torch.Tensor
    features: torch.Tensor
    bits: torch.Tensor | None
    commitment: torch.Tensor


class HBQ(nn.Module):
    """Hierarchical Binary Quantizer (SPEC §1), parameter-free.

    Args:
        num_rounds: M, the number of binary rounds per latent channel (release: 4; paper also 6 and 8).
            Values ≥ 100 mean continuous mode (no quantization), as in the release.
        continuous: feed F = tanh(mu) to the decoder without quantizing (paper Table 2 "w/o quant").
    """

    def __init__(self, num_rounds: int = 4, continuous: bool = False) -> None:
        super().__init__()
        if isinstance(num_rounds, bool) or not isinstance(num_rounds, int) or num_rounds < 1:
            raise ValueError(f"num_rounds must be a positive int (>= {CONTINUOUS_ROUNDS} = continuous), got {num_rounds!r}")
        self.continuous = bool(continuous) or num_rounds >= CONTINUOUS_ROUNDS
        if not self.continuous:
            _check_rounds(num_rounds)
        self.num_rounds = num_rounds

    def extra_repr(self) -> str:
        return f"num_rounds={self.num_rounds}, continuous={self.continuous}"

    def quantize_values(self, f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(bits, F̂) for features already in (-1, 1)."""
        bits = hbq_bits(f, self.num_rounds)
        return bits, bits_to_values(bits).to(torch.float32)

    def forward(self, mu: torch.Tensor) -> HBQOutput:
        with torch.autocast(device_type=mu.device.type, enabled=False):
            f = torch.tanh(mu.float())
            if self.continuous:
                return HBQOutput(values=f, features=f, bits=None, commitment=torch.zeros((), device=f.device))
            bits, f_hat = self.quantize_values(f)
            values = f + (f_hat - f).detach()  # STE: forward F̂, backward identity (SPEC §1)
            commitment = torch.mean((f_hat - f.detach()) ** 2)
        return HBQOutput(values=values, features=f, bits=bits, commitment=commitment.detach())

    def tokenize(self, mu: torch.Tensor) -> torch.Tensor:
        """Index labels int64 ``[B, C, ...]`` of `mu` (discrete mode only)."""
        if self.continuous:
            raise ValueError("tokenize needs discrete HBQ (continuous=False and num_rounds < 100)")
        with torch.autocast(device_type=mu.device.type, enabled=False):
            return index_labels(hbq_bits(torch.tanh(mu.float()), self.num_rounds))

    def index_labels_to_values(self, labels: torch.Tensor) -> torch.Tensor:
        return index_labels_to_values(labels, self.num_rounds).to(torch.float32)

    def bit_labels_to_values(self, labels: torch.Tensor) -> torch.Tensor:
        return bit_labels_to_values(labels, self.num_rounds).to(torch.float32)


# Label layouts of the generators (SPEC §1): GRN_ind predicts one of 2^M indices per latent channel, GRN_bit one
# of 2 values per (round, channel) bit.
VARIANTS = ("ind", "bit")


def layout_dims(variant: str, channels: int, rounds: int) -> tuple[int, int]:
    """(groups G, classes per group K) of a token: ind → (C, 2^M), bit → (M·C, 2) (SPEC §1)."""
    if variant == "ind":
        return channels, 2**rounds
    if variant == "bit":
        return rounds * channels, 2
    raise ValueError(f"variant={variant!r} is not one of {VARIANTS}")
