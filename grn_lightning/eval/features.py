"""Frozen feature networks for image metrics: FID Inception-V3 and LPIPS (SPEC section 7).

Both are built with the exact structure of the published weights and then filled from a file resolved by
``grn_lightning.weights.resolve_weight`` (never downloaded). ``random_init=True`` builds the same structure
with random weights, which is what tests and throughput benchmarks use.
"""

from __future__ import annotations

import os
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from grn_lightning.weights import resolve_weight

__all__ = [
    "FrozenFeatureNetwork",
    "InceptionFeatureExtractor",
    "InceptionOutput",
    "build_fid_inception",
    "build_lpips",
    "check_lpips_net",
    "seeded_random_init_",
    "to_uint8_levels",
]

LPIPS_NETS = ("alex", "vgg")
_LPIPS_BACKBONE_WEIGHT = {"alex": "lpips_alex_backbone", "vgg": "lpips_vgg_backbone"}


def to_uint8_levels(x: torch.Tensor) -> torch.Tensor:
    """Snap [-1, 1] images to the 256 levels a PNG stores, staying in [-1, 1].

    Why: the reference protocol (SPEC section 7) scores 8-bit PNG files; quantising in memory gives the
    numbers the exported files would give.
    """
    return torch.round((x.clamp(-1, 1) + 1) * 127.5) / 127.5 - 1


def seeded_random_init_(module: nn.Module, seed: int = 0) -> nn.Module:
    """Deterministic, scale-preserving random weights for a frozen feature network (``random_init=True``).

    Why seeded: every rank must compute the SAME random features, or a distributed metric mixes different
    embeddings. Why He-normal: the framework's default init shrinks activations about tenfold per layer, so a
    deep random Inception outputs ~1e-8 features that a Frechet distance cannot separate.
    """
    generator = torch.Generator().manual_seed(seed)
    for sub in module.modules():
        if isinstance(sub, (nn.Conv2d, nn.Conv3d, nn.Linear)):
            nn.init.kaiming_normal_(sub.weight, nonlinearity="relu", generator=generator)
            if sub.bias is not None:
                nn.init.zeros_(sub.bias)
    return module


def build_fid_inception() -> nn.Module:
    """The FID Inception-V3 structure of ``pt_inception-2015-12-05`` (random weights, 1008-way head).

    It is torchvision's Inception-V3 with the mixed blocks swapped for pytorch-fid's TF-compatible ones
    (average pools that exclude padding, max pool in the last block), exactly as ``pytorch_fid`` builds it
    before it loads the ported TensorFlow weights.
    """
    import torchvision
    from pytorch_fid.inception import FIDInceptionA, FIDInceptionC, FIDInceptionE_1, FIDInceptionE_2

    net = torchvision.models.inception_v3(weights=None, aux_logits=False, num_classes=1008, init_weights=False)
    net.Mixed_5b = FIDInceptionA(192, pool_features=32)
    net.Mixed_5c = FIDInceptionA(256, pool_features=64)
    net.Mixed_5d = FIDInceptionA(288, pool_features=64)
    net.Mixed_6b = FIDInceptionC(768, channels_7x7=128)
    net.Mixed_6c = FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6d = FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6e = FIDInceptionC(768, channels_7x7=192)
    net.Mixed_7b = FIDInceptionE_1(1280)
    net.Mixed_7c = FIDInceptionE_2(2048)
    return net


class FrozenFeatureNetwork(nn.Module):
    """A metric network held in ``self.net``: weights from the offline registry (or seeded random), no
    gradients, always in eval mode (batch-norm statistics never update, dropout never fires).

    Args:
        net: the network of the true structure.
        weight_name: its registry entry in ``grn_lightning.weights.WEIGHTS``.
        weights_path: explicit weight path, searched before ``$GRN_WEIGHTS`` and the hub cache.
        random_init: keep the structure, load nothing, use seeded random weights (tests, benchmarks).
    """

    def __init__(self, net: nn.Module, weight_name: str, weights_path: str | None, random_init: bool):
        super().__init__()
        self.net = net
        self.weights_file: str | None = None
        if random_init:
            seeded_random_init_(net)
        else:
            path = resolve_weight(weight_name, weights_path)
            net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
            self.weights_file = os.fspath(path)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> FrozenFeatureNetwork:
        return super().train(False)


class InceptionOutput(NamedTuple):
    pool: torch.Tensor  # [B, 2048] pool3 features (FID)
    logits: torch.Tensor  # [B, 1008] unbiased logits (IS, as the ADM / torch-fidelity evaluators)


_INCEPTION_STEM = (
    "Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "maxpool1", "Conv2d_3b_1x1", "Conv2d_4a_3x3", "maxpool2",
    "Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e",
    "Mixed_7a", "Mixed_7b", "Mixed_7c",
)  # fmt: skip


class InceptionFeatureExtractor(FrozenFeatureNetwork):
    """FID Inception-V3: images in [-1, 1] -> pool3 features [B, 2048] and logits [B, 1008].

    Preprocessing follows ``pytorch_fid.inception.InceptionV3`` (bilinear resize to 299x299,
    ``align_corners=False``), so features equal pytorch-fid's for the same weights.

    Args:
        weights_path: explicit path of ``pt_inception-2015-12-05-6726825d.pth`` (else resolved offline from
            ``$GRN_WEIGHTS`` / the torch hub cache).
        random_init: build the true structure with random weights and load nothing (tests, benchmarks).
        quantize_uint8: snap inputs to 8-bit levels first, as scoring exported PNG files would.
    """

    def __init__(self, weights_path: str | None = None, random_init: bool = False, quantize_uint8: bool = True):
        super().__init__(build_fid_inception(), "fid_inception", weights_path, random_init)
        self.quantize_uint8 = quantize_uint8

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> InceptionOutput:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"InceptionFeatureExtractor expects [B, 3, H, W] in [-1, 1], got {tuple(images.shape)}")
        x = images.float()
        if self.quantize_uint8:
            x = to_uint8_levels(x)
        x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
        for name in _INCEPTION_STEM:
            x = getattr(self.net, name)(x)
        pool = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        logits = pool @ self.net.fc.weight.t()  # no bias: matches the TF graph's softmax/logits/MatMul
        return InceptionOutput(pool=pool, logits=logits)


def check_lpips_net(net: str) -> str:
    """Fail at construction time, naming the option and the allowed values."""
    if net not in LPIPS_NETS:
        raise ValueError(f"lpips_net={net!r} is not supported; allowed values: {', '.join(LPIPS_NETS)}")
    return net


def build_lpips(net: str = "alex", backbone_path: str | None = None, random_init: bool = False) -> nn.Module:
    """LPIPS v0.1 (``lpips`` package) with its ImageNet trunk loaded offline.

    The calibrated linear heads ship inside the ``lpips`` wheel; only the torchvision trunk (AlexNet or VGG16)
    would be downloaded by ``lpips`` itself, so it is built random (``pnet_rand``) and filled here from the
    registry (``lpips_alex_backbone`` / ``lpips_vgg_backbone``).

    Args:
        net: trunk, one of ``alex`` (the metric, SPEC section 7) or ``vgg`` (the tokenizer loss).
        backbone_path: explicit path of the torchvision trunk weights.
        random_init: keep the trunk random (tests); the linear heads are still the calibrated ones.

    Returns an ``lpips.LPIPS`` in eval mode with ``requires_grad=False`` parameters; call it as
    ``lpips_net(x, y)`` with both in [-1, 1], shape [B, 3, H, W]; it returns [B, 1, 1, 1].
    """
    check_lpips_net(net)
    import lpips

    model = lpips.LPIPS(net=net, pretrained=True, pnet_rand=True, verbose=False)
    if not random_init:
        path = resolve_weight(_LPIPS_BACKBONE_WEIGHT[net], backbone_path)
        source = torch.load(path, map_location="cpu", weights_only=True)
        trunk = {}
        for key in model.net.state_dict():  # e.g. "slice2.3.weight" is torchvision's "features.3.weight"
            _, index, param = key.split(".")
            trunk[key] = source[f"features.{index}.{param}"]
        model.net.load_state_dict(trunk)
        model.weights_file = os.fspath(path)
    else:
        seeded_random_init_(model.net)
        model.weights_file = None
    model.requires_grad_(False)
    return model.eval()
