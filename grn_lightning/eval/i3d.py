"""I3D (Inception-V1 inflated to 3D, Carreira & Zisserman 2017) for FVD (SPEC section 7: rFVD).

The module is our own definition whose parameter names and shapes match the widely used Kinetics-400 file
``i3d_pretrained_400.pt`` (the piergiaj/pytorch-i3d layout as used by VideoGPT, StyleGAN-V-free FVD code and
common_metrics_on_video_quality): ``Conv3d_1a_7x7.conv3d.weight``, ``Conv3d_1a_7x7.bn.running_mean``,
``Mixed_3b.b0.conv3d.weight``, ..., ``Mixed_5c.b3b.bn.*``, ``logits.conv3d.{weight,bias}``.
FVD uses the 400 Kinetics logits of 224x224 clips in [-1, 1], averaged over the remaining time steps.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from grn_lightning.eval.features import FrozenFeatureNetwork

__all__ = ["I3DFeatureExtractor", "InceptionI3d", "preprocess_clips_for_i3d", "I3D_MIN_FRAMES"]

# Frames needed for the final [2, 7, 7] average pool: time is divided by 8 (strides 2, 2, 2) with
# TF "SAME" rounding up, and 9 frames still leave 2 steps.
I3D_MIN_FRAMES = 9


def _same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow 'SAME' padding (front, back): output size ceil(size / stride), extra pad at the back."""
    total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def _pad_same(x: torch.Tensor, kernel: tuple[int, int, int], stride: tuple[int, int, int]) -> torch.Tensor:
    pads: list[int] = []
    for size, k, s in zip(reversed(x.shape[2:]), reversed(kernel), reversed(stride)):  # F.pad order: W, H, T
        pads.extend(_same_padding(size, k, s))
    return F.pad(x, pads)


class Unit3D(nn.Module):
    """conv3d (SAME padding, no bias) -> batch norm -> ReLU; the logits unit has a bias and neither of the rest."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel: tuple[int, int, int] = (1, 1, 1),
        stride: tuple[int, int, int] = (1, 1, 1),
        norm_and_relu: bool = True,
    ):
        super().__init__()
        self.kernel, self.stride = kernel, stride
        self.conv3d = nn.Conv3d(in_channels, out_channels, kernel, stride, padding=0, bias=not norm_and_relu)
        # eps 1e-5: the value the i3d_pretrained_400.pt FVD code evaluates its batch-norm statistics with.
        self.bn = nn.BatchNorm3d(out_channels, eps=1e-5, momentum=0.001) if norm_and_relu else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv3d(_pad_same(x, self.kernel, self.stride))
        if self.bn is not None:
            x = F.relu(self.bn(x))
        return x


class MaxPool3dSame(nn.Module):
    """Max pool with TF 'SAME' zero padding (inputs are post-ReLU, so zero padding never wins wrongly)."""

    def __init__(self, kernel: tuple[int, int, int], stride: tuple[int, int, int]):
        super().__init__()
        self.kernel, self.stride = kernel, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.max_pool3d(_pad_same(x, self.kernel, self.stride), self.kernel, self.stride)


class InceptionBlock3D(nn.Module):
    """Four branches (1x1 | 1x1->3x3 | 1x1->3x3 | maxpool->1x1) concatenated along channels."""

    def __init__(self, in_channels: int, widths: tuple[int, int, int, int, int, int]):
        super().__init__()
        w0, w1a, w1b, w2a, w2b, w3 = widths
        self.b0 = Unit3D(in_channels, w0)
        self.b1a = Unit3D(in_channels, w1a)
        self.b1b = Unit3D(w1a, w1b, (3, 3, 3))
        self.b2a = Unit3D(in_channels, w2a)
        self.b2b = Unit3D(w2a, w2b, (3, 3, 3))
        self.b3a = MaxPool3dSame((3, 3, 3), (1, 1, 1))
        self.b3b = Unit3D(in_channels, w3)
        self.out_channels = w0 + w1b + w2b + w3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.b0(x), self.b1b(self.b1a(x)), self.b2b(self.b2a(x)), self.b3b(self.b3a(x))], dim=1)


# (name, in_channels, branch widths) of the mixed blocks, Inception-V1 (GoogLeNet) widths.
_MIXED = {
    "Mixed_3b": (192, (64, 96, 128, 16, 32, 32)),
    "Mixed_3c": (256, (128, 128, 192, 32, 96, 64)),
    "Mixed_4b": (480, (192, 96, 208, 16, 48, 64)),
    "Mixed_4c": (512, (160, 112, 224, 24, 64, 64)),
    "Mixed_4d": (512, (128, 128, 256, 24, 64, 64)),
    "Mixed_4e": (512, (112, 144, 288, 32, 64, 64)),
    "Mixed_4f": (528, (256, 160, 320, 32, 128, 128)),
    "Mixed_5b": (832, (256, 160, 320, 32, 128, 128)),
    "Mixed_5c": (832, (384, 192, 384, 48, 128, 128)),
}


class InceptionI3d(nn.Module):
    """I3D RGB network: [B, 3, T, 224, 224] in [-1, 1] -> Kinetics logits [B, num_classes].

    Args:
        num_classes: logits width (400 for ``i3d_pretrained_400.pt``).
    """

    def __init__(self, num_classes: int = 400):
        super().__init__()
        self.Conv3d_1a_7x7 = Unit3D(3, 64, (7, 7, 7), (2, 2, 2))
        self.MaxPool3d_2a_3x3 = MaxPool3dSame((1, 3, 3), (1, 2, 2))
        self.Conv3d_2b_1x1 = Unit3D(64, 64)
        self.Conv3d_2c_3x3 = Unit3D(64, 192, (3, 3, 3))
        self.MaxPool3d_3a_3x3 = MaxPool3dSame((1, 3, 3), (1, 2, 2))
        self.Mixed_3b = InceptionBlock3D(*_MIXED["Mixed_3b"])
        self.Mixed_3c = InceptionBlock3D(*_MIXED["Mixed_3c"])
        self.MaxPool3d_4a_3x3 = MaxPool3dSame((3, 3, 3), (2, 2, 2))
        for name in ("Mixed_4b", "Mixed_4c", "Mixed_4d", "Mixed_4e", "Mixed_4f"):
            setattr(self, name, InceptionBlock3D(*_MIXED[name]))
        self.MaxPool3d_5a_2x2 = MaxPool3dSame((2, 2, 2), (2, 2, 2))
        self.Mixed_5b = InceptionBlock3D(*_MIXED["Mixed_5b"])
        self.Mixed_5c = InceptionBlock3D(*_MIXED["Mixed_5c"])
        self.logits = Unit3D(1024, num_classes, norm_and_relu=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for name, module in self.named_children():
            if name != "logits":
                x = module(x)  # children run in definition order, the network's order
        x = F.avg_pool3d(x, kernel_size=(2, 7, 7), stride=1)  # [B, 1024, T/8 - 1, 1, 1]
        return self.logits(x).flatten(3).mean(dim=(2, 3))  # average the remaining time steps


def preprocess_clips_for_i3d(clips: torch.Tensor, size: int = 224) -> torch.Tensor:
    """[B, 3, T, H, W] in [-1, 1] -> [B, 3, T, size, size]: bilinear resize of the short side, centre crop.

    Same as the reference FVD preprocessing (which resizes [0, 1] frames and maps them to [-1, 1]; bilinear
    resizing is affine-equivariant, so resizing in [-1, 1] gives the same values).
    """
    b, c, t, h, w = clips.shape
    scale = size / min(h, w)
    # The short side becomes exactly `size` (ceil(h * scale) could round 224.0000001 up to 225).
    new_h, new_w = (size, math.ceil(w * scale)) if h <= w else (math.ceil(h * scale), size)
    frames = clips.float().permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w)
    if (new_h, new_w) != (h, w):
        frames = F.interpolate(frames, size=(new_h, new_w), mode="bilinear", align_corners=False)
    top, left = (new_h - size) // 2, (new_w - size) // 2
    frames = frames[:, :, top : top + size, left : left + size]
    return frames.reshape(b, t, c, size, size).permute(0, 2, 1, 3, 4)


class I3DFeatureExtractor(FrozenFeatureNetwork):
    """Frozen I3D: clips [B, 3, T, H, W] in [-1, 1] (T >= 9) -> FVD features [B, 400].

    Args:
        weights_path: explicit path of ``i3d_pretrained_400.pt`` (else resolved offline).
        random_init: true structure with random weights, nothing loaded (tests, benchmarks).
    """

    def __init__(self, weights_path: str | None = None, random_init: bool = False):
        super().__init__(InceptionI3d(num_classes=400), "i3d_kinetics400", weights_path, random_init)

    @torch.no_grad()
    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        if clips.ndim != 5 or clips.shape[1] != 3 or clips.shape[2] < I3D_MIN_FRAMES:
            raise ValueError(
                f"I3D expects [B, 3, T >= {I3D_MIN_FRAMES}, H, W] clips in [-1, 1], got {tuple(clips.shape)}"
            )
        return self.net(preprocess_clips_for_i3d(clips.clamp(-1, 1)))
