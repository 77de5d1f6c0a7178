"""Encoder and decoder stacks of the causal 3D VAE (SPEC §2), released (Wan 2.2-style) layout.

Encoder: causal conv 12→dim; stages of residual blocks with widths dim·[1]+dim_mult, each but the last ending
in a 2D (or 2D+temporal) down-sample, plus an average-down shortcut; middle res → attention → res; head.
Decoder mirrors it with dec_dim·dim_mult reversed, num_res_blocks + 1 blocks a stage, up-sampling and a
duplicate-up shortcut. Module names equal the release's (``downsamples.{i}.downsamples.{j}``, ``middle``,
``head``, ``upsamples.{i}.upsamples.{j}``) so the converter is near-identity.
"""

from __future__ import annotations

import torch
from torch import nn

from grn_lightning.tokenizer.layers import (
    AttentionBlock,
    AvgDown3D,
    CausalConv3d,
    DupUp3D,
    Resample,
    ResidualBlock,
    RMSNorm,
    State,
)


class DownStage(nn.Module):
    """Residual blocks (+ resample) with a parameter-free average-down shortcut around the whole stage."""

    def __init__(
        self, in_dim: int, out_dim: int, num_blocks: int, dropout: float, down: bool, temporal: bool, spatial: bool = True
    ) -> None:
        super().__init__()
        self.avg_shortcut = AvgDown3D(in_dim, out_dim, factor_t=2 if temporal else 1, factor_s=2 if down and spatial else 1)
        blocks: list[nn.Module] = []
        for _ in range(num_blocks):
            blocks.append(ResidualBlock(in_dim, out_dim, dropout))
            in_dim = out_dim
        if down:
            blocks.append(Resample(out_dim, _resample_mode("down", spatial, temporal)))
        self.downsamples = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor, state: State = None) -> torch.Tensor:
        shortcut = self.avg_shortcut(x)
        for block in self.downsamples:
            x = block(x, state)
        return x + shortcut


class UpStage(nn.Module):
    """Residual blocks (+ resample) with a duplicate-up shortcut when the stage up-samples."""

    def __init__(
        self, in_dim: int, out_dim: int, num_blocks: int, dropout: float, up: bool, temporal: bool, spatial: bool = True
    ) -> None:
        super().__init__()
        self.avg_shortcut = DupUp3D(in_dim, out_dim, factor_t=2 if temporal else 1, factor_s=2 if spatial else 1) if up else None
        blocks: list[nn.Module] = []
        for _ in range(num_blocks):
            blocks.append(ResidualBlock(in_dim, out_dim, dropout))
            in_dim = out_dim
        if up:
            blocks.append(Resample(out_dim, _resample_mode("up", spatial, temporal)))
        self.upsamples = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor, state: State = None) -> torch.Tensor:
        y = x
        for block in self.upsamples:
            y = block(y, state)
        if self.avg_shortcut is None:
            return y
        first = state is None or self not in state  # frame 0 of the sequence is in this call
        if state is not None:
            state[self] = True
        return y + self.avg_shortcut(x, first)


def _resample_mode(direction: str, spatial: bool, temporal: bool) -> str:
    """Resample mode of a stage that scales space (2d), space and time (3d) or time alone (1d)."""
    return f"{direction}sample{'3d' if spatial and temporal else '2d' if spatial else '1d'}"


def _middle(dim: int, dropout: float, attention: bool) -> nn.Sequential:
    return nn.Sequential(ResidualBlock(dim, dim, dropout), AttentionBlock(dim, attention), ResidualBlock(dim, dim, dropout))


def _run(seq: nn.Sequential, x: torch.Tensor, state: State) -> torch.Tensor:
    for layer in seq:
        x = layer(x, state) if isinstance(layer, (ResidualBlock, AttentionBlock, CausalConv3d, DownStage, UpStage)) else layer(x)
    return x


class Encoder3d(nn.Module):
    """Patchified video [B,12,T,H/2,W/2] -> [B, out_channels, 1+(T−1)/4, H/16, W/16] (released strides)."""

    def __init__(
        self,
        dim: int,
        out_channels: int,
        dim_mult: list[int],
        num_res_blocks: int,
        temporal_downsample: list[bool],
        dropout: float,
        middle_attention: bool,
        in_channels: int = 12,
        spatial_downsample: list[bool] | None = None,
    ) -> None:
        super().__init__()
        dims = [dim * m for m in [1, *dim_mult]]
        self.conv1 = CausalConv3d(in_channels, dims[0], 3, padding=1)
        last = len(dim_mult) - 1
        spatial = spatial_downsample or [True] * last
        self.downsamples = nn.Sequential(
            *(
                DownStage(dims[i], dims[i + 1], num_res_blocks, dropout, down=i != last, temporal=i < last and temporal_downsample[i],
                          spatial=i == last or spatial[i])  # fmt: skip
                for i in range(len(dim_mult))
            )
        )
        self.middle = _middle(dims[-1], dropout, middle_attention)
        self.head = nn.Sequential(RMSNorm(dims[-1]), nn.SiLU(), CausalConv3d(dims[-1], out_channels, 3, padding=1))

    def forward(self, x: torch.Tensor, state: State = None) -> torch.Tensor:
        x = self.conv1(x, state)
        x = _run(self.downsamples, x, state)
        x = _run(self.middle, x, state)
        return _run(self.head, x, state)


class Decoder3d(nn.Module):
    """Latent [B, C, T', h, w] -> patchified video [B, 12, 1+4(T'−1), 8h, 8w] (released strides)."""

    def __init__(
        self,
        dim: int,
        in_channels: int,
        dim_mult: list[int],
        num_res_blocks: int,
        temporal_upsample: list[bool],
        dropout: float,
        middle_attention: bool,
        out_channels: int = 12,
        spatial_upsample: list[bool] | None = None,
    ) -> None:
        super().__init__()
        dims = [dim * m for m in [dim_mult[-1], *dim_mult[::-1]]]
        self.conv1 = CausalConv3d(in_channels, dims[0], 3, padding=1)
        self.middle = _middle(dims[0], dropout, middle_attention)
        last = len(dim_mult) - 1
        spatial = spatial_upsample or [True] * last
        self.upsamples = nn.Sequential(
            *(
                UpStage(dims[i], dims[i + 1], num_res_blocks + 1, dropout, up=i != last, temporal=i < last and temporal_upsample[i],
                        spatial=i == last or spatial[i])  # fmt: skip
                for i in range(len(dim_mult))
            )
        )
        self.head = nn.Sequential(RMSNorm(dims[-1]), nn.SiLU(), CausalConv3d(dims[-1], out_channels, 3, padding=1))

    def forward(self, x: torch.Tensor, state: State = None) -> torch.Tensor:
        x = self.conv1(x, state)
        x = _run(self.middle, x, state)
        x = _run(self.upsamples, x, state)
        return _run(self.head, x, state)
