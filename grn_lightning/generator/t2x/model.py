"""GRN text-to-image / text-to-video / image-to-video transformer (SPEC §5): GRN0b, GRN2b, GRN8b and a tiny size.

One packed row holds several samples, each  [visual tokens | (I2V) clean first frame | text tokens | ratio token]
(see `packing.py`); attention never crosses samples:

    state  [B, L, G] labels ─ one-hot (G·K) ─ word_embed ─────┐
    text   [Nt, 4096] umT5 states ─ text_proj ───────────────┤ scattered to their packed positions (fp32)
    ratio  [Ns] kept fraction ─ sinusoid(256) ─ pt_embedder ──┘
    depth × Qwen block:  x += o(Attn(RMSNorm(x)))  ;  x += down(SiLU(gate(RMSNorm(x))) ⊙ up(RMSNorm(x)))
            (no biases, per-head RMSNorm on q and k, 3D RoPE, block-diagonal mask from the segment ids)
    head = RMSNorm + Linear(D → G·K) (fp32) → logits [B, L, G, K] at every position (the loss reads the visual ones)

Layouts (SPEC §1): GRN_bit G = M·C bits × K = 2 (the release: 4·64 = 256 bits, 512 one-hot inputs), GRN_ind
G = C channels × K = 2^M. One-hot features are group-major (index g·K + k) and head logits are read as [G, K],
the release's order. Module names follow the released checkpoints (`word_embed`, `text_proj`, `pt_embedder.mlp`,
`head.{norm,proj}`, blocks `attn.{q,k,v,o}_proj`, `attn.{q,k}_norm`, `mlp.{gate,up,down}_proj`,
`input_layernorm`, `post_attention_layernorm`) except that blocks are one flat `blocks` list (the release nests
them as `block_chunks.{i // n}.module.{i % n}`; `t2x/convert.py` maps between the two).

Parameter counts equal the released manifests (tests/test_t2x_transformer.py, meta device): GRN0b 18,227,200,
GRN2b 2,197,832,448, GRN8b 7,890,859,520.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from grn_lightning.generator.layers import RMSNorm, Rope, rotary_cos_sin, sinusoidal_embedding
from grn_lightning.generator.t2x.rope3d import apply_rope_interleaved, rope3d_angles
from grn_lightning.hbq import VARIANTS, layout_dims

ATTENTION_BACKENDS = ("sdpa", "flex")


@dataclass(frozen=True)
class T2XSize:
    """One GRN-T2X size. mlp_ratio gives the SwiGLU width round(width·mlp_ratio/256)·256 (the release's rule);
    release_chunks is how many `block_chunks` the released checkpoint nests its blocks in."""

    depth: int
    width: int
    heads: int
    mlp_ratio: float
    head_dim: int = 128
    release_chunks: int = 1


GRN_T2X: dict[str, T2XSize] = {
    "tiny": T2XSize(depth=2, width=256, heads=2, mlp_ratio=2.0),
    # the CPU reproduction's T2X (configs/repro/t2x.yaml): twice tiny's depth, 64-wide heads; MLP 512 (the rule's
    # rounding of 384). On the CPU recipe it kept clips more consistent than tiny (docs/REPRODUCTION.md)
    "small": T2XSize(depth=4, width=192, heads=3, mlp_ratio=2.0, head_dim=64),
    "GRN0b": T2XSize(depth=4, width=512, heads=4, mlp_ratio=3.55, release_chunks=2),  # MLP 1792
    "GRN2b": T2XSize(depth=28, width=2304, heads=18, mlp_ratio=3.55, release_chunks=7),  # MLP 8192
    "GRN8b": T2XSize(depth=36, width=4096, heads=32, mlp_ratio=3.0, release_chunks=6),  # MLP 12288
}


def qwen_mlp_hidden(width: int, mlp_ratio: float) -> int:
    """SwiGLU inner width round(width · ratio / 256) · 256 (SPEC §5)."""
    return int(round(width * mlp_ratio / 256)) * 256


@functools.lru_cache(maxsize=None)
def _flex_attention(compiled: bool):
    """flex_attention, compiled once per process on CUDA (eager flex is a slow reference path, fine for CPU tests)."""
    from torch.nn.attention.flex_attention import flex_attention

    if compiled:
        return torch.compile(flex_attention, dynamic=False)
    return flex_attention


def _flex_attention_call(q, k, v, block_mask, cuda: bool) -> torch.Tensor:
    """flex_attention with the packing mask. Inside a compiled block (compile="block") dynamo traces flex_attention
    itself into the block's graph; the cached compiled wrapper would be a second, nested compile (seen on an H200:
    dynamo warned about tracing through its lru_cache)."""
    if torch.compiler.is_compiling():
        from torch.nn.attention.flex_attention import flex_attention

        return flex_attention(q, k, v, block_mask=block_mask)
    return _flex_attention(cuda)(q, k, v, block_mask=block_mask)


def segment_mask(segment_ids: torch.Tensor) -> torch.Tensor:
    """bool [B, 1, L, L]: query i may attend key j iff they carry the same segment id (padding, id −1, attends only to
    padding, so no row is empty and SDPA never produces NaN)."""
    return (segment_ids[:, :, None] == segment_ids[:, None, :])[:, None]


def segment_block_mask(segment_ids: torch.Tensor, block_size: int = 128):
    """The block-diagonal mask of `segment_mask` as a flex_attention BlockMask, built from per-block segment ranges.

    Padding is renamed to one id above every sample, and a block of `block_size` positions holds ids in [lo, hi].
    Two blocks that share an id have overlapping ranges, so pairs whose ranges do not overlap are skipped safely;
    the others are "partial" (the mask function decides per element) unless both blocks lie inside one and the
    same sample ("full", no mask). Any layout is therefore exact. With the packing layout (samples contiguous,
    padding at the end of a row, as `packing.py` and `bucket_packing.py` lay them out) overlap means a shared
    sample, and the listing is as sparse as `create_block_mask`'s. This costs (L / block_size)² per row (≈ 10⁵ at
    40,960), where `create_block_mask` evaluates the mask at all L² pairs (≈ 1.7 GB of booleans per row), and it
    never syncs.
    """
    from torch.nn.attention.flex_attention import BlockMask

    b, length = segment_ids.shape
    blocks = -(-length // block_size)
    ids = segment_ids.long()
    ids = torch.where(ids < 0, ids.max(dim=1, keepdim=True).values + 1, ids)  # padding: its own id, after the samples
    tail = blocks * block_size - length
    ids = torch.cat([ids, ids[:, -1:].expand(b, tail)], dim=1) if tail else ids
    lo = ids.view(b, blocks, block_size).amin(-1)
    hi = ids.view(b, blocks, block_size).amax(-1)
    overlap = (lo[:, :, None] <= hi[:, None, :]) & (lo[:, None, :] <= hi[:, :, None])  # [B, Q blocks, KV blocks]
    single = lo == hi
    if tail:  # a block that runs past the sequence end always needs the mask (flex's own rule for the last block)
        single[:, -1] = False
    full = overlap & single[:, :, None] & single[:, None, :]
    partial = overlap & ~full

    def listing(chosen: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # chosen KV blocks first, in increasing order (a stable sort of "not chosen"), as BlockMask stores them
        order = torch.argsort((~chosen).to(torch.int8), dim=-1, stable=True)
        return chosen.sum(-1).int()[:, None], order.int()[:, None]

    def same_segment(batch, head, q, k):
        return ids[batch, q] == ids[batch, k]

    num, indices = listing(partial)
    full_num, full_indices = listing(full)
    return BlockMask.from_kv_blocks(num, indices, full_num, full_indices, BLOCK_SIZE=block_size,
                                    mask_mod=same_segment, seq_lengths=(length, length))  # fmt: skip


class QwenAttention(nn.Module):
    """Bidirectional multi-head attention without biases, per-head q/k RMSNorm (eps 1e-6, fp32) and 3D RoPE.

    Args:
        width: model width D.
        heads: attention heads.
        head_dim: features per head (heads · head_dim need not equal D, but does for every released size).
    """

    def __init__(self, width: int, heads: int, head_dim: int) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, head_dim
        self.q_proj = nn.Linear(width, heads * head_dim, bias=False)
        self.k_proj = nn.Linear(width, heads * head_dim, bias=False)
        self.v_proj = nn.Linear(width, heads * head_dim, bias=False)
        self.o_proj = nn.Linear(heads * head_dim, width, bias=False)
        self.q_norm = RMSNorm(head_dim, eps=1e-6)
        self.k_norm = RMSNorm(head_dim, eps=1e-6)

    def forward(self, x: torch.Tensor, rope: Rope, mask, backend: str = "sdpa") -> torch.Tensor:
        b, length, _ = x.shape
        shape = (b, length, self.heads, self.head_dim)
        # the release normalises q and k per head before the rotation
        q = self.q_norm(self.q_proj(x).view(shape)).transpose(1, 2)  # [B, heads, L, head_dim]
        k = self.k_norm(self.k_proj(x).view(shape)).transpose(1, 2)
        v = self.v_proj(x).view(shape).transpose(1, 2)
        q = apply_rope_interleaved(q, *rope).to(v.dtype)
        k = apply_rope_interleaved(k, *rope).to(v.dtype)
        if backend == "flex" and mask is not None:
            out = _flex_attention_call(q, k, v, mask, x.is_cuda)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.o_proj(out.transpose(1, 2).reshape(b, length, self.heads * self.head_dim))


class QwenMLP(nn.Module):
    """SwiGLU without biases: down(SiLU(gate(x)) ⊙ up(x)).

    Args:
        width: model width D.
        hidden: inner width.
    """

    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(width, hidden, bias=False)
        self.up_proj = nn.Linear(width, hidden, bias=False)
        self.down_proj = nn.Linear(hidden, width, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class T2XBlock(nn.Module):
    """Qwen-style pre-norm block (no adaLN: the ratio is an in-context token).

    Args:
        width: model width D.
        heads: attention heads.
        head_dim: features per head.
        mlp_hidden: SwiGLU inner width.
    """

    def __init__(self, width: int, heads: int, head_dim: int, mlp_hidden: int) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(width, eps=1e-6)
        self.attn = QwenAttention(width, heads, head_dim)
        self.post_attention_layernorm = RMSNorm(width, eps=1e-6)
        self.mlp = QwenMLP(width, mlp_hidden)

    def forward(self, x: torch.Tensor, rope: Rope, mask, backend: str = "sdpa") -> torch.Tensor:
        x = x + self.attn(self.input_layernorm(x), rope, mask, backend)
        return x + self.mlp(self.post_attention_layernorm(x))


class RatioEmbedder(nn.Module):
    """Kept fraction → D: sinusoid(scale · p; dim 256, max period 1e4, cos half first) → Linear, SiLU, Linear.

    Args:
        width: output width D.
        freq_dim: sinusoidal features (256).
        scale: multiplies p before the sinusoid; the release feeds p itself (scale 1).
    """

    def __init__(self, width: int, freq_dim: int = 256, scale: float = 1.0) -> None:
        super().__init__()
        self.freq_dim, self.scale = freq_dim, scale
        self.mlp = nn.Sequential(nn.Linear(freq_dim, width), nn.SiLU(), nn.Linear(width, width))

    def forward(self, ratio: torch.Tensor) -> torch.Tensor:
        feats = sinusoidal_embedding(ratio.float() * self.scale, self.freq_dim, max_period=10000.0)
        return _fp32_linear(self.mlp[2], F.silu(_fp32_linear(self.mlp[0], feats)))


class T2XHead(nn.Module):
    """RMSNorm then Linear(D → G·K), both with fp32 arithmetic.

    Args:
        width: model width D.
        out_features: G·K.
    """

    def __init__(self, width: int, out_features: int) -> None:
        super().__init__()
        self.norm = RMSNorm(width, eps=1e-6)
        self.proj = nn.Linear(width, out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _fp32_linear(self.proj, self.norm(x.float()))


def _fp32_linear(layer: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """layer(x) in fp32 whatever the autocast or parameter dtype (SPEC §5 "embedding and head in fp32", as the
    release runs word_embed, text_proj, pt_embedder and the head under an fp32 autocast)."""
    bias = layer.bias.float() if layer.bias is not None else None
    with torch.autocast(x.device.type, enabled=False):
        return F.linear(x.float(), layer.weight.float(), bias)


class GRNT2XTransformer(nn.Module):
    """GRN T2I/T2V/I2V generator over packed sequences: `forward(**packed.model_inputs()) -> logits [B, L, G, K]`.

    Args:
        size: key of `GRN_T2X` ("tiny", "small", "GRN0b", "GRN2b", "GRN8b").
        variant: "bit" (released models: G = M·C bits × K = 2) or "ind" (G = C channels × K = 2^M), SPEC §1.
        channels: tokenizer latent channels C (64 for the joint image/video tokenizer).
        rounds: HBQ rounds M (4).
        text_dim: width of the text encoder states (umT5-XXL: 4096).
        ratio_scale: multiplies the kept fraction before its sinusoid (release: 1.0).
        rope_theta: RoPE base θ.
        attention: "sdpa" (dense boolean block-diagonal mask; CPU and GPU) or "flex" (flex_attention BlockMask that
            skips cross-sample blocks; compiled on CUDA, for long packed rows).
    """

    def __init__(
        self,
        size: str = "GRN2b",
        variant: str = "bit",
        channels: int = 64,
        rounds: int = 4,
        text_dim: int = 4096,
        ratio_scale: float = 1.0,
        rope_theta: float = 10000.0,
        attention: str = "sdpa",
    ) -> None:
        super().__init__()
        if size not in GRN_T2X:
            raise ValueError(f"size={size!r} is not one of {sorted(GRN_T2X)}")
        if variant not in VARIANTS:
            raise ValueError(f"variant={variant!r} is not one of {VARIANTS}")
        if attention not in ATTENTION_BACKENDS:
            raise ValueError(f"attention={attention!r} is not one of {ATTENTION_BACKENDS}")
        for name, value in (("channels", channels), ("rounds", rounds), ("text_dim", text_dim)):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        spec = GRN_T2X[size]
        # init arguments, so a LightningModule built in Python saves this part as class_path/init_args hparams
        self.config = dict(size=size, variant=variant, channels=channels, rounds=rounds, text_dim=text_dim,
                           ratio_scale=ratio_scale, rope_theta=rope_theta, attention=attention)  # fmt: skip
        self.size, self.variant, self.attention = size, variant, attention
        self.channels, self.rounds, self.text_dim = channels, rounds, text_dim
        self.groups, self.classes = layout_dims(variant, channels, rounds)
        self.depth, self.width, self.heads, self.head_dim = spec.depth, spec.width, spec.heads, spec.head_dim
        self.mlp_hidden = qwen_mlp_hidden(spec.width, spec.mlp_ratio)
        self.release_chunks = spec.release_chunks
        self.rope_theta = rope_theta

        self.word_embed = nn.Linear(self.groups * self.classes, spec.width)
        self.text_proj = nn.Linear(text_dim, spec.width)
        self.pt_embedder = RatioEmbedder(spec.width, scale=ratio_scale)
        self.blocks = nn.ModuleList(
            T2XBlock(spec.width, spec.heads, spec.head_dim, self.mlp_hidden) for _ in range(spec.depth)
        )
        self.head = T2XHead(spec.width, self.groups * self.classes)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """N(0, 0.02) linears with zero biases, residual outputs (o_proj, down_proj) scaled by 1/sqrt(2·depth)
        (GPT-2), unit norms and a zero head (uniform logits at step 0). Complete, so meta construction + to_empty +
        reset_parameters gives a usable model."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, RMSNorm) and module.weight is not None:
                nn.init.ones_(module.weight)
        for block in self.blocks:
            for layer in (block.attn.o_proj, block.mlp.down_proj):
                nn.init.normal_(layer.weight, std=0.02 / math.sqrt(2 * self.depth))
        nn.init.zeros_(self.head.proj.weight)
        nn.init.zeros_(self.head.proj.bias)

    def embed(
        self,
        state: torch.Tensor,
        text: torch.Tensor,
        text_index: torch.Tensor,
        ratio: torch.Tensor,
        ratio_index: torch.Tensor,
    ) -> torch.Tensor:
        """fp32 [B, L, D] input sequence: every position gets its one-hot state embedding, then text and ratio
        positions are overwritten with their own embeddings (padding keeps the embedding of state 0; it is masked
        out of every real token's attention)."""
        b, length, g = state.shape
        onehot = F.one_hot(state.long(), self.classes).reshape(b * length, g * self.classes)
        x = _fp32_linear(self.word_embed, onehot)
        x = x.index_copy(0, text_index, _fp32_linear(self.text_proj, text))
        x = x.index_copy(0, ratio_index, self.pt_embedder(ratio))
        return x.view(b, length, self.width)

    def forward(
        self,
        state: torch.Tensor,
        text: torch.Tensor,
        text_index: torch.Tensor,
        ratio: torch.Tensor,
        ratio_index: torch.Tensor,
        positions: torch.Tensor,
        segment_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits of the clean labels at every packed position.

        Args:
            state: int [B, L, G] corrupted labels F at visual (and I2V clean) positions, 0 elsewhere.
            text: float [Nt, text_dim] text-encoder states of all samples, in packed order.
            text_index: int64 [Nt] flat position (row · L + column) of each text state.
            ratio: float [Ns] kept fraction of each sample.
            ratio_index: int64 [Ns] flat position of each sample's ratio token.
            positions: int [B, L, 3] (t, h, w) RoPE positions (rope3d.py).
            segment_ids: int [B, L] sample id per position, −1 for padding; None = one sample per row (full
                attention, no mask: the fast path for same-shape sampling batches).
        Returns:
            float32 [B, L, G, K].
        """
        b, length, g = state.shape
        if g != self.groups:
            raise ValueError(f"state has {g} groups per token, the {self.variant} model expects {self.groups}")
        if positions.shape != (b, length, 3):
            raise ValueError(f"positions shape {tuple(positions.shape)} does not match [B, L, 3] = [{b}, {length}, 3]")
        if text.shape[-1] != self.text_dim or text.shape[0] != text_index.shape[0]:
            raise ValueError(f"text {tuple(text.shape)} / text_index {tuple(text_index.shape)} do not match [Nt, {self.text_dim}] / [Nt]")
        if ratio.shape != ratio_index.shape:
            raise ValueError(f"ratio {tuple(ratio.shape)} and ratio_index {tuple(ratio_index.shape)} differ")
        x = self.embed(state, text, text_index, ratio, ratio_index)
        rope = rotary_cos_sin(rope3d_angles(positions, self.head_dim, self.rope_theta)[:, None])  # [B, 1, L, hd/2]
        mask = None
        if segment_ids is not None:
            if segment_ids.shape != (b, length):
                raise ValueError(f"segment_ids shape {tuple(segment_ids.shape)} does not match [{b}, {length}]")
            mask = segment_block_mask(segment_ids) if self.attention == "flex" else segment_mask(segment_ids)
        for block in self.blocks:
            x = block(x, rope, mask, self.attention)
        return self.head(x).view(b, length, self.groups, self.classes)

