"""Building blocks of the causal 3D VAE (SPEC §2, the released Wan 2.2-style tokenizer).

Attribute names follow the release (``residual.{0,2,3,6}``, ``resample.1``, ``time_conv``, ``to_qkv``...) so
a released state dict loads with a near-identity mapping (see ``tokenizer/convert.py``).

Streaming (cached causal inference): every ``forward`` takes ``state``, a dict shared by all layers of one
encode/decode call and keyed by module. ``state=None`` means "this call holds the whole sequence from frame 0"
(the training path). With a dict, a layer that has no entry yet treats the call as the start of the sequence
and afterwards keeps only what the next chunk needs (the last 2 input frames of a k=3 causal conv, one frame for
a stride-2 temporal conv), so memory is bounded by the chunk, never by the clip. Both paths run the same code.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

State = dict | None


def patchify(x: torch.Tensor, patch: int = 2) -> torch.Tensor:
    """Space-to-depth ``[B,C,T,H,W] -> [B, C·p·p, T, H/p, W/p]``, channel order (c, w-offset, h-offset) as released."""
    b, c, t, h, w = x.shape
    x = x.view(b, c, t, h // patch, patch, w // patch, patch)  # b c t h q w r
    return x.permute(0, 1, 6, 4, 2, 3, 5).reshape(b, c * patch * patch, t, h // patch, w // patch)


def unpatchify(x: torch.Tensor, patch: int = 2) -> torch.Tensor:
    """Inverse of :func:`patchify`."""
    b, cpp, t, h, w = x.shape
    c = cpp // (patch * patch)
    x = x.view(b, c, patch, patch, t, h, w)  # b c r q t h w
    return x.permute(0, 1, 4, 5, 3, 6, 2).reshape(b, c, t, h * patch, w * patch)


class CausalConv3d(nn.Conv3d):
    """Conv3d padded causally in time: 2·p_t zero frames in front, none behind; space padded symmetrically.

    In streaming mode the zero frames are replaced by the cached last input frames of the previous chunk.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=0)
        pt, ph, pw = padding if isinstance(padding, tuple) else (padding,) * 3
        self.time_pad = 2 * pt
        self.space_pad = (pw, pw, ph, ph)

    def forward(self, x: torch.Tensor, state: State = None) -> torch.Tensor:  # type: ignore[override]
        front = self.time_pad
        if self.time_pad > 0 and state is not None:
            cached = state.get(self)
            if cached is not None:
                x = torch.cat([cached.to(x.dtype), x], dim=2)
                front -= cached.shape[2]
            # keep the last `time_pad` input frames (fewer only while the sequence is shorter than that)
            state[self] = x[:, :, -self.time_pad :].detach().clone()
        if x.shape[2] == 1 and front == self.kernel_size[0] - 1 and self.stride[0] == 1:
            # One frame behind all-zero padding (every image): only the last temporal tap sees data, so this
            # is a 2D conv with 1/k_t of the FLOPs; same math up to summation order.
            y = F.conv2d(F.pad(x[:, :, 0], self.space_pad), self.weight[:, :, -1], self.bias, self.stride[1:])
            return y.unsqueeze(2)
        x = F.pad(x, (*self.space_pad, front, 0))
        return super().forward(x)


class RMSNorm(nn.Module):
    """L2-normalise over channels, times √C and a learned γ (SPEC §2). γ is [C,1,1,1] (video) or [C,1,1] (image)."""

    def __init__(self, dim: int, images: bool = False) -> None:
        super().__init__()
        self.scale = dim**0.5
        self.gamma = nn.Parameter(torch.ones(dim, *((1, 1) if images else (1, 1, 1))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, dim=1) * self.scale * self.gamma


class ResidualBlock(nn.Module):
    """RMS → SiLU → causal conv k3 → RMS → SiLU → dropout → causal conv k3, plus a 1×1×1 shortcut if widths differ."""

    def __init__(self, in_dim: int, out_dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.residual = nn.Sequential(
            RMSNorm(in_dim),
            nn.SiLU(),
            CausalConv3d(in_dim, out_dim, 3, padding=1),
            RMSNorm(out_dim),
            nn.SiLU(),
            nn.Dropout(dropout),
            CausalConv3d(out_dim, out_dim, 3, padding=1),
        )
        self.shortcut = CausalConv3d(in_dim, out_dim, 1) if in_dim != out_dim else nn.Identity()

    def forward(self, x: torch.Tensor, state: State = None) -> torch.Tensor:
        h = self.shortcut(x)
        for layer in self.residual:
            x = layer(x, state) if isinstance(layer, CausalConv3d) else layer(x)
        return x + h


class AttentionBlock(nn.Module):
    """Single-head spatial self-attention per frame (so it stays causal), residual.

    The release keeps these parameters but one released version returns the input unchanged (SPEC §2):
    ``enabled=False`` reproduces that; ``enabled=True`` really attends.
    """

    def __init__(self, dim: int, enabled: bool = False) -> None:
        super().__init__()
        self.enabled = enabled
        self.norm = RMSNorm(dim, images=True)
        self.to_qkv = nn.Conv2d(dim, dim * 3, 1)
        self.proj = nn.Conv2d(dim, dim, 1)
        nn.init.zeros_(self.proj.weight)  # starts as identity even when enabled

    def forward(self, x: torch.Tensor, state: State = None) -> torch.Tensor:
        if not self.enabled:
            return x
        b, c, t, h, w = x.shape
        y = self.norm(x.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w))
        q, k, v = self.to_qkv(y).reshape(b * t, 3 * c, h * w).transpose(1, 2).unsqueeze(1).chunk(3, dim=-1)
        y = F.scaled_dot_product_attention(q, k, v).squeeze(1).transpose(1, 2).reshape(b * t, c, h, w)
        y = self.proj(y).reshape(b, t, c, h, w).permute(0, 2, 1, 3, 4)
        return x + y


class _Upsample2x(nn.Module):
    """Nearest-exact ×2 spatial upsampling of [N,C,H,W], computed in fp32 like the release."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x.float(), scale_factor=2.0, mode="nearest-exact").type_as(x)


class Resample(nn.Module):
    """2D down/up-sampling (3×3 conv per frame), optionally with a causal temporal factor 2 that keeps frame 0.

    mode: ``downsample2d`` | ``downsample3d`` | ``downsample1d`` | ``upsample2d`` | ``upsample3d`` | ``upsample1d``.
    - downsample3d: frame 0 passes alone; later frames come from a stride-2 k3 temporal conv without padding,
      windows (2j−2, 2j−1, 2j): T = 1+2k -> 1+k.
    - upsample3d: frame 0 passes alone; frames 1.. go through a causal k3 temporal conv to 2C channels that are
      split into two frames each: T -> 1 + 2(T−1) (SPEC §2 "doubles frames, first frame kept").
    - downsample1d / upsample1d: the temporal half alone, space untouched (not in the release: it lets a small
      tokenizer compress time 4× while keeping a finer token grid, e.g. the Fashion-MNIST joint tokenizer).
    """

    MODES = ("downsample2d", "downsample3d", "downsample1d", "upsample2d", "upsample3d", "upsample1d")

    def __init__(self, dim: int, mode: str) -> None:
        super().__init__()
        if mode not in self.MODES:
            raise ValueError(f"Resample mode must be one of {self.MODES}, got {mode!r}")
        self.mode = mode
        self.up, self.spatial, self.temporal = mode.startswith("up"), not mode.endswith("1d"), not mode.endswith("2d")
        if self.spatial and self.up:
            self.resample = nn.Sequential(_Upsample2x(), nn.Conv2d(dim, dim, 3, padding=1))
        elif self.spatial:
            # asymmetric (right/bottom) zero pad then stride 2: H -> H/2 for even H, as released
            self.resample = nn.Sequential(nn.ZeroPad2d((0, 1, 0, 1)), nn.Conv2d(dim, dim, 3, stride=2))
        if self.temporal and self.up:
            self.time_conv = CausalConv3d(dim, dim * 2, (3, 1, 1), padding=(1, 0, 0))
        elif self.temporal:
            self.time_conv = CausalConv3d(dim, dim, (3, 1, 1), stride=(2, 1, 1), padding=(0, 0, 0))

    def _spatial(self, x: torch.Tensor) -> torch.Tensor:
        b, c, t, h, w = x.shape
        y = self.resample(x.transpose(1, 2).reshape(b * t, c, h, w))
        return y.reshape(b, t, c, y.shape[-2], y.shape[-1]).transpose(1, 2)

    def _time_up(self, x: torch.Tensor, state: State) -> torch.Tensor:
        started = state is not None and self in state
        head, rest = (x[:, :, :0], x) if started else (x[:, :, :1], x[:, :, 1:])
        if state is not None:
            state[self] = True
        if rest.shape[2] == 0:
            return head
        b, c, t, h, w = rest.shape
        y = self.time_conv(rest, state).reshape(b, 2, c, t, h, w)
        y = torch.stack((y[:, 0], y[:, 1]), dim=3).reshape(b, c, 2 * t, h, w)  # frame j -> (2j, 2j+1)
        return torch.cat([head, y], dim=2)

    def _time_down(self, x: torch.Tensor, state: State) -> torch.Tensor:
        last = None if state is None else state.get(self)
        if last is None:
            head, seq = x[:, :, :1], x  # sequence start: frame 0 passes, windows start at frame 0
        else:
            head, seq = x[:, :, :0], torch.cat([last.to(x.dtype), x], dim=2)
        if state is not None:
            state[self] = x[:, :, -1:].detach().clone()
        if seq.shape[2] < 3:
            return head
        return torch.cat([head, self.time_conv(seq)], dim=2)

    def forward(self, x: torch.Tensor, state: State = None) -> torch.Tensor:
        if self.temporal and self.up:
            x = self._time_up(x, state)
        if self.spatial:
            x = self._spatial(x)
        if self.temporal and not self.up:
            x = self._time_down(x, state)
        return x


class AvgDown3D(nn.Module):
    """Parameter-free "average-down" shortcut: space/time-to-channel reshape, then mean over channel groups.

    Time is zero-padded in front to a multiple of the factor (frame 0 alone forms the first group with a zero).
    """

    def __init__(self, in_channels: int, out_channels: int, factor_t: int, factor_s: int) -> None:
        super().__init__()
        self.factor_t, self.factor_s, self.out_channels = factor_t, factor_s, out_channels
        factor = factor_t * factor_s * factor_s
        if (in_channels * factor) % out_channels:
            raise ValueError(
                f"average-down shortcut: {in_channels}·{factor} channels do not split into {out_channels} groups "
                "(dim / dim_mult: a stage that does not down-sample cannot widen)"
            )
        self.group = in_channels * factor // out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ft, fs = self.factor_t, self.factor_s
        x = F.pad(x, (0, 0, 0, 0, (ft - x.shape[2] % ft) % ft, 0))
        b, c, t, h, w = x.shape
        x = x.view(b, c, t // ft, ft, h // fs, fs, w // fs, fs).permute(0, 1, 3, 5, 7, 2, 4, 6)
        x = x.reshape(b, self.out_channels, self.group, t // ft, h // fs, w // fs)
        return x.mean(dim=2)


class DupUp3D(nn.Module):
    """Parameter-free "duplicate-up" shortcut: repeat channels, then depth-to-space/time.

    At the start of a sequence the first ``factor_t − 1`` frames are dropped so frame 0 stays one frame.
    """

    def __init__(self, in_channels: int, out_channels: int, factor_t: int, factor_s: int) -> None:
        super().__init__()
        self.factor_t, self.factor_s, self.out_channels = factor_t, factor_s, out_channels
        factor = factor_t * factor_s * factor_s
        if (out_channels * factor) % in_channels:
            raise ValueError(
                f"duplicate-up shortcut: {out_channels}·{factor} is not a multiple of {in_channels} channels (dec_dim / dim_mult)"
            )
        self.repeats = out_channels * factor // in_channels

    def forward(self, x: torch.Tensor, first: bool) -> torch.Tensor:
        ft, fs = self.factor_t, self.factor_s
        x = x.repeat_interleave(self.repeats, dim=1)
        b, _, t, h, w = x.shape
        x = x.view(b, self.out_channels, ft, fs, fs, t, h, w).permute(0, 1, 5, 2, 6, 3, 7, 4)
        x = x.reshape(b, self.out_channels, t * ft, h * fs, w * fs)
        return x[:, :, ft - 1 :] if first else x
