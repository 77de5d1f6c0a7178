"""Building blocks of the GRN transformers: RMSNorm, SwiGLU, 2D RoPE, attention with qk-norm, adaLN.

SPEC §4 (C2I, after JiT): pre-RMSNorm blocks, SwiGLU MLP, per-head RMSNorm on q and k, 2D rotary
position embedding, adaLN(shift, scale, gate) modulation. Everything here is shape-static and free of
data-dependent Python control flow so `torch.compile` traces each block once.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class RMSNorm(nn.Module):
    """Root-mean-square normalisation over the last dimension, computed in float32.

    Args:
        dim: size of the normalised (last) dimension.
        eps: added to the mean square before the reciprocal square root.
        affine: learn a per-channel gain (initialised to 1). adaLN-modulated norms use `affine=False`
            because the modulation already supplies the scale.
    """

    def __init__(self, dim: int, eps: float = 1e-6, affine: bool = True) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim)) if affine else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # fp32 statistics: bf16 mean-squares lose ~3 significant digits (SPEC §5 "eps 1e-6 in fp32").
        xf = x.float()
        y = xf * torch.rsqrt(xf.pow(2).mean(dim=-1, keepdim=True) + self.eps)
        if self.weight is not None:
            y = y * self.weight.float()
        return y.to(x.dtype)


class SwiGLU(nn.Module):
    """SwiGLU MLP: down(SiLU(gate(x)) * up(x)).

    Args:
        dim: model width.
        hidden: inner width (SPEC §4: ≈ 8/3·dim, see `swiglu_hidden`).
        bias: use biases in the three projections.
    """

    def __init__(self, dim: int, hidden: int, bias: bool = True) -> None:
        super().__init__()
        self.gate = nn.Linear(dim, hidden, bias=bias)
        self.up = nn.Linear(dim, hidden, bias=bias)
        self.down = nn.Linear(hidden, dim, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(F.silu(self.gate(x)) * self.up(x))


def swiglu_hidden(dim: int) -> int:
    """SwiGLU inner width: int(2/3 · 4·dim), the JiT/LLaMA convention that keeps the MLP at ≈ 8·dim² weights."""
    return int(2 * 4 * dim / 3)


def rope_2d_angles(
    height: int,
    width: int,
    head_dim: int,
    num_prefix: int = 0,
    theta: float = 10000.0,
    device: torch.device | None = None,
) -> torch.Tensor:
    """Rotation angles [num_prefix + height·width, head_dim // 2] of the 2D rotary embedding.

    The head_dim/2 rotary pairs are split in two halves: the first head_dim/4 pairs rotate with the row
    index, the last head_dim/4 with the column index; within each half inv_freq_j = theta^(−j/n),
    j = 0..n−1, n = head_dim/4 (the per-axis form of SPEC §5's RoPE). Tokens are row-major (h, then w).
    The `num_prefix` in-context class tokens get angle 0 (identity rotation): they carry learned
    absolute positions instead (as JiT does for its in-context tokens).
    """
    if head_dim % 4 != 0:
        raise ValueError(f"2D RoPE needs head_dim divisible by 4, got head_dim={head_dim}")
    n = head_dim // 4
    inv_freq = theta ** (-torch.arange(n, dtype=torch.float64, device=device) / n)
    rows = torch.arange(height, dtype=torch.float64, device=device).repeat_interleave(width)
    cols = torch.arange(width, dtype=torch.float64, device=device).repeat(height)
    angles = torch.cat([rows[:, None] * inv_freq, cols[:, None] * inv_freq], dim=1)
    prefix = torch.zeros(num_prefix, 2 * n, dtype=torch.float64, device=device)
    return torch.cat([prefix, angles], dim=0).float()


Rope = tuple[torch.Tensor, torch.Tensor]  # (cos, sin) of the rotation angles, from `rotary_cos_sin`


def rotary_cos_sin(angles: torch.Tensor) -> Rope:
    """(cos, sin) of rotation angles, evaluated once per forward and shared by every block.

    Evaluated inside each block instead, fp32 cos/sin run over the broadcast [B, heads, L, head_dim/2] of q and of k
    and dominate the rotary kernel: on an H200, GRN-B batch 256, that kernel took 1.17 ms of every block's forward,
    about a tenth of the training step.
    """
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x [..., L, head_dim] by angles a [L, head_dim/2] given as cos a, sin a (`rotary_cos_sin`).

    Pair j is (x[j], x[j + head_dim/2]) ("rotate-half" layout):
    out_j = x_j cos a_j − x_{j+d/2} sin a_j,  out_{j+d/2} = x_{j+d/2} cos a_j + x_j sin a_j.
    Computed in float32 and cast back.
    """
    half = x.shape[-1] // 2
    xf = x.float()
    x1, x2 = xf[..., :half], xf[..., half:]
    out = torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)
    return out.to(x.dtype)


class Attention(nn.Module):
    """Bidirectional multi-head self-attention with per-head qk RMSNorm and rotary positions.

    Args:
        dim: model width.
        num_heads: number of heads (dim must be divisible by it).
        qkv_bias: bias on the fused qkv projection.
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True) -> None:
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"width={dim} must be divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.q_norm = RMSNorm(self.head_dim)
        self.k_norm = RMSNorm(self.head_dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, rope: Rope) -> torch.Tensor:
        """x [B, L, dim], rope = (cos, sin) [L, head_dim/2] from `rotary_cos_sin` → [B, L, dim]."""
        b, length, dim = x.shape
        qkv = self.qkv(x).view(b, length, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # [B, heads, L, head_dim]
        q = apply_rope(self.q_norm(q), *rope)
        k = apply_rope(self.k_norm(k), *rope)
        # SDPA dispatches to flash / cuDNN / memory-efficient kernels on GPU (no mask: full attention).
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, length, dim))


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN modulation x·(1 + scale) + shift with per-sample shift/scale [B, D] broadcast over tokens."""
    return x * (1 + scale[:, None]) + shift[:, None]


def sinusoidal_embedding(values: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """[B] float → [B, dim] sinusoidal features (cos half, then sin half), as DiT's timestep embedder."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=values.device) / half)
    args = values.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
