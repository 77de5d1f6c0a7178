"""PatchGAN discriminators for tokenizer training (SPEC §2).

2D: the pix2pix N-layer PatchGAN — 4×4 convs 3→64 (stride 2, no norm), then ×2 widths with stride 2 and a norm
(64→128→256 for 3 layers), one stride-1 conv with norm (→512), and a stride-1 conv to 1 logit per patch;
LeakyReLU 0.2; conv weights N(0, 0.02) (norm gains N(1, 0.02), biases 0). Video frames are judged one by one
(time folded into the batch), as in the release. The 3D variant (3×4×4 kernels, time halved with space) is an option, not the release.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

__all__ = ["DISCRIMINATOR_NORMS", "PatchDiscriminator"]

DISCRIMINATOR_NORMS = ("batch", "group", "none")


def _norm(kind: str, channels: int, dims: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels) if dims == 2 else nn.BatchNorm3d(channels)
    if kind == "group":
        return nn.GroupNorm(32 if channels % 32 == 0 else 1, channels)
    return nn.Identity()


class PatchDiscriminator(nn.Module):
    """N-layer PatchGAN over images/videos ``[B, 3, T, H, W]`` (or ``[B, 3, H, W]``).

    Args:
        in_channels: channels of the judged images (3 for RGB).
        base_channels: width of the first conv (64 in pix2pix and the release).
        num_layers: number of stride-2 convs (3: 64→128→256, then 256→512 at stride 1).
        norm: normalisation after every conv but the first and last: "batch" (pix2pix default), "group"
            (32 groups; batch-size independent) or "none".
        dims: 2 judges each frame separately (time folded into the batch, SPEC §2); 3 uses 3×4×4 (T, H, W) conv
            kernels whose stride-2 layers also halve time (an option; kernel 3 with padding 1 accepts any T ≥ 1,
            images included).

    ``forward`` returns patch logits ``[B, 1, T', h, w]`` (for ``dims=2``, T' = T).
    """

    def __init__(
        self,
        in_channels: int = 3,
        base_channels: int = 64,
        num_layers: int = 3,
        norm: Literal["batch", "group", "none"] = "batch",
        dims: Literal[2, 3] = 2,
    ) -> None:
        super().__init__()
        if norm not in DISCRIMINATOR_NORMS:
            raise ValueError(f"discriminator norm={norm!r} is not supported; allowed values: {DISCRIMINATOR_NORMS}")
        if dims not in (2, 3):
            raise ValueError(f"discriminator dims={dims!r} is not supported; allowed values: 2, 3")
        if num_layers < 1 or base_channels < 1 or in_channels < 1:
            raise ValueError(
                f"discriminator num_layers/base_channels/in_channels must be >= 1, got "
                f"{num_layers}/{base_channels}/{in_channels}"
            )
        self.dims = dims
        def conv(cin: int, cout: int, stride: int, bias: bool = True) -> nn.Module:
            if dims == 2:
                return nn.Conv2d(cin, cout, 4, stride, 1, bias=bias)
            return nn.Conv3d(cin, cout, (3, 4, 4), stride, 1, bias=bias)

        use_bias = norm == "none"  # a norm with an affine shift makes the conv bias redundant (pix2pix)
        layers: list[nn.Module] = [conv(in_channels, base_channels, 2), nn.LeakyReLU(0.2, True)]
        width = base_channels
        for n in range(1, num_layers + 1):
            out = base_channels * min(2**n, 8)
            stride = 2 if n < num_layers else 1
            layers += [conv(width, out, stride, bias=use_bias), _norm(norm, out, dims), nn.LeakyReLU(0.2, True)]
            width = out
        layers.append(conv(width, 1, 1))
        self.main = nn.Sequential(*layers)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """pix2pix / taming ``weights_init``: convs N(0, 0.02), norm gains N(1, 0.02), biases 0."""
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Conv3d)):
                nn.init.normal_(m.weight, 0.0, 0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm3d, nn.GroupNorm)):
                nn.init.normal_(m.weight, 1.0, 0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 4:
            x = x.unsqueeze(2)
        if x.ndim != 5:
            raise ValueError(f"discriminator input must be [B, C, T, H, W] or [B, C, H, W], got {tuple(x.shape)}")
        b, c, t, h, w = x.shape
        if self.dims == 3:
            return self.main(x)
        frames = x.transpose(1, 2).reshape(b * t, c, h, w)  # each frame judged on its own
        logits = self.main(frames)
        return logits.reshape(b, t, *logits.shape[1:]).transpose(1, 2)
