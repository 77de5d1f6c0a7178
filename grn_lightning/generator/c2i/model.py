"""GRN class-to-image transformer (SPEC §4): GRN-B/L/H/G, a tiny test size and a small one for CPU reproductions
(docs/REPRODUCTION.md), GRN_ind and GRN_bit.

    state [B, N, G] (labels of the corrupted token state F)
      └─ one-hot → flatten per token (G·K) → Linear ─────────────────────────┐  N image tokens
    class_ids ─ class embedding ─ + 32 learned positions ── in-context tokens ┤  (prepended)
    c = class embedding + ratio embedding ─▶ adaLN-zero in every block + final layer
    depth × [x += gate·Attn(mod(RMSNorm(x))) ; x += gate·SwiGLU(mod(RMSNorm(x)))]   (qk-norm, 2D RoPE)
      └─ final adaLN + Linear(D, G·K) on the N image tokens → logits [B, N, G, K]

Layouts (SPEC §1/§3): GRN_ind has G = C groups of K = 2^M classes, GRN_bit has G = M·C groups of
K = 2 classes. Everything but G and K is shared.

Parameter counts (checked on the meta device by tests/test_transformer.py, ind / bit): B 130.7M / 130.5M
(SPEC 130M), L 458.3M / 458.1M (458M), H 951.6M / 951.3M (952M), G 2.006B / 2.006B (2B). They come from biases on
all linears (DiT/JiT style), SwiGLU hidden int(8/3·D) (2048 / 2730 / 3413 / 4437), one class table of
num_classes + 1 rows shared by the adaLN condition and the in-context tokens, a 256-d sinusoidal ratio
embedding followed by a 2-layer MLP, and a 6·D adaLN per block.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from grn_lightning.hbq import VARIANTS, layout_dims
from grn_lightning.generator.layers import (
    Attention,
    RMSNorm,
    Rope,
    SwiGLU,
    modulate,
    rope_2d_angles,
    rotary_cos_sin,
    sinusoidal_embedding,
    swiglu_hidden,
)

@dataclass(frozen=True)
class C2ISize:
    """Depth, width and heads of one GRN-C2I size (SPEC §4 table)."""

    depth: int
    width: int
    heads: int


GRN_C2I: dict[str, C2ISize] = {
    "tiny": C2ISize(depth=2, width=64, heads=2),
    "small": C2ISize(depth=4, width=128, heads=4),  # the Fashion-MNIST reproduction on 2 CPU cores
    "B": C2ISize(depth=12, width=768, heads=12),
    "L": C2ISize(depth=24, width=1024, heads=16),
    "H": C2ISize(depth=32, width=1280, heads=16),
    "G": C2ISize(depth=40, width=1664, heads=16),
}


class RatioEmbedding(nn.Module):
    """Kept fraction p ∈ [0, 1] → D: sinusoidal features of 1000·p (DiT timestep scale) → MLP.

    Args:
        width: output width D.
        freq_dim: number of sinusoidal features.
    """

    def __init__(self, width: int, freq_dim: int = 256) -> None:
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, width), nn.SiLU(), nn.Linear(width, width))

    def forward(self, ratio: torch.Tensor) -> torch.Tensor:
        feats = sinusoidal_embedding(ratio * 1000.0, self.freq_dim)
        return self.mlp(feats.to(self.mlp[0].weight.dtype))


class GRNBlock(nn.Module):
    """Pre-RMSNorm transformer block with adaLN-zero (shift, scale, gate for attention and MLP).

    Args:
        width: model width D.
        heads: attention heads.
        mlp_hidden: SwiGLU inner width.
    """

    def __init__(self, width: int, heads: int, mlp_hidden: int) -> None:
        super().__init__()
        self.norm1 = RMSNorm(width, affine=False)
        self.attn = Attention(width, heads)
        self.norm2 = RMSNorm(width, affine=False)
        self.mlp = SwiGLU(width, mlp_hidden)
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(width, 6 * width))

    def forward(self, x: torch.Tensor, c: torch.Tensor, rope: Rope) -> torch.Tensor:
        shift1, scale1, gate1, shift2, scale2, gate2 = self.ada(c).chunk(6, dim=-1)
        x = x + gate1[:, None] * self.attn(modulate(self.norm1(x), shift1, scale1), rope)
        x = x + gate2[:, None] * self.mlp(modulate(self.norm2(x), shift2, scale2))
        return x


class GRNC2ITransformer(nn.Module):
    """GRN class-to-image generator: `forward(state, class_ids, ratio) -> logits [B, N, G, K]`.

    Args:
        size: key of `GRN_C2I` ("tiny", "small", "B", "L", "H", "G").
        variant: "ind" (G = C channels × K = 2^M classes) or "bit" (G = M·C bits × K = 2), SPEC §1.
        channels: tokenizer latent channels C (16 for the C2I tokenizer).
        rounds: HBQ rounds M (4).
        num_classes: number of real classes; index `num_classes` is the null class used for CFG.
        grid_size: token grid (h, w) or one int for a square grid; N = h·w (16 for 256² images).
        in_context_tokens: number of in-context class tokens prepended to the image tokens (32).
        mlp_hidden: SwiGLU inner width; None → int(8/3·width).
        rope_theta: RoPE base.
    """

    def __init__(
        self,
        size: str = "B",
        variant: str = "ind",
        channels: int = 16,
        rounds: int = 4,
        num_classes: int = 1000,
        grid_size: int | tuple[int, int] = 16,
        in_context_tokens: int = 32,
        mlp_hidden: int | None = None,
        rope_theta: float = 10000.0,
    ) -> None:
        super().__init__()
        if size not in GRN_C2I:
            raise ValueError(f"size={size!r} is not one of {sorted(GRN_C2I)}")
        if variant not in VARIANTS:
            raise ValueError(f"variant={variant!r} is not one of {VARIANTS}")
        for name, value in (("channels", channels), ("rounds", rounds), ("num_classes", num_classes)):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if in_context_tokens < 0:
            raise ValueError(f"in_context_tokens must be >= 0, got {in_context_tokens}")
        spec = GRN_C2I[size]
        if spec.width % spec.heads != 0 or (spec.width // spec.heads) % 4 != 0:
            raise ValueError(f"size={size!r}: head_dim must be a multiple of 4 for 2D RoPE")
        h, w = (grid_size, grid_size) if isinstance(grid_size, int) else tuple(grid_size)
        # init arguments, so a LightningModule built in Python saves this part as class_path/init_args hparams
        self.config = dict(size=size, variant=variant, channels=channels, rounds=rounds, num_classes=num_classes,
                           grid_size=grid_size if isinstance(grid_size, int) else [int(h), int(w)],
                           in_context_tokens=in_context_tokens, mlp_hidden=mlp_hidden,
                           rope_theta=rope_theta)  # fmt: skip
        self.size, self.variant = size, variant
        self.channels, self.rounds, self.num_classes = channels, rounds, num_classes
        self.grid = (int(h), int(w))
        self.num_tokens = self.grid[0] * self.grid[1]
        self.groups, self.classes = layout_dims(variant, channels, rounds)
        self.null_class = num_classes
        self.in_context_tokens = in_context_tokens
        self.width, self.heads, self.depth = spec.width, spec.heads, spec.depth
        self.rope_theta = rope_theta
        hidden = mlp_hidden if mlp_hidden is not None else swiglu_hidden(spec.width)

        # A Linear on the one-hot of F flattened per token (SPEC §3 "through a linear embedding").
        self.token_embed = nn.Linear(self.groups * self.classes, spec.width)
        self.class_embed = nn.Embedding(num_classes + 1, spec.width)
        self.context_pos = nn.Parameter(torch.zeros(in_context_tokens, spec.width))
        self.ratio_embed = RatioEmbedding(spec.width)
        self.blocks = nn.ModuleList(GRNBlock(spec.width, spec.heads, hidden) for _ in range(spec.depth))
        self.final_norm = RMSNorm(spec.width, affine=False)
        self.final_ada = nn.Sequential(nn.SiLU(), nn.Linear(spec.width, 2 * spec.width))
        self.head = nn.Linear(spec.width, self.groups * self.classes)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """DiT-style init of every parameter: xavier linears, zero biases, unit norms, N(0, 0.02) embeddings, zero adaLN
        and head (adaLN-zero)."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, RMSNorm) and module.weight is not None:
                nn.init.ones_(module.weight)  # complete init, so meta-device construction + to_empty works
        nn.init.normal_(self.class_embed.weight, std=0.02)
        nn.init.normal_(self.context_pos, std=0.02)
        for layer in self.ratio_embed.mlp:
            if isinstance(layer, nn.Linear):
                nn.init.normal_(layer.weight, std=0.02)
        for block in self.blocks:
            nn.init.zeros_(block.ada[-1].weight)
            nn.init.zeros_(block.ada[-1].bias)
        for layer in (self.final_ada[-1], self.head):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, state: torch.Tensor, class_ids: torch.Tensor, ratio: torch.Tensor) -> torch.Tensor:
        """Logits of the clean labels.

        Args:
            state: int64 [B, N, G] corrupted labels F in 0..K−1.
            class_ids: int64 [B]; `num_classes` = null (unconditional).
            ratio: float [B] kept fraction p fed to the network.
        Returns:
            float [B, N, G, K] logits of y_gt for every element.
        """
        b, n, g = state.shape
        if n != self.num_tokens or g != self.groups:
            raise ValueError(f"state shape {tuple(state.shape)} does not match [B, {self.num_tokens}, {self.groups}]")
        dtype = self.token_embed.weight.dtype
        onehot = F.one_hot(state, self.classes).to(dtype).reshape(b, n, g * self.classes)
        x = self.token_embed(onehot)
        cls = self.class_embed(class_ids)
        c = cls + self.ratio_embed(ratio)
        context = cls[:, None, :] + self.context_pos[None]
        x = torch.cat([context.to(x.dtype), x], dim=1)
        angles = rope_2d_angles(
            self.grid[0], self.grid[1], self.width // self.heads, self.in_context_tokens, self.rope_theta, state.device
        )
        rope = rotary_cos_sin(angles)
        for block in self.blocks:
            x = block(x, c, rope)
        x = x[:, self.in_context_tokens :]
        shift, scale = self.final_ada(c).chunk(2, dim=-1)
        logits = self.head(modulate(self.final_norm(x), shift, scale))
        return logits.view(b, n, g, self.classes)
