"""A small image classifier that judges generated samples on small datasets (Fashion-MNIST, docs/REPRODUCTION.md).

ImageNet protocols use Inception (features.py); on a 32×32 dataset a classifier trained on the dataset's own
train split is the better judge: its accuracy on generated samples says whether the requested class was drawn,
and its penultimate features give a dataset-specific Fréchet distance. `tools/train_classifier.py` trains it and
saves ``{"state_dict", "config", "metrics"}``; `load_classifier` rebuilds it, frozen.

Clip frames show a shrunken item anywhere on the canvas, so training mixes in `shrink_and_shift` copies
(the item shrunk and placed at a random position) and the same network classifies images and clip frames.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SmallClassifier(nn.Module):
    """Conv net for square RGB inputs in [-1, 1]: three conv stages (×2 down each), global average pool,
    a `feature_dim` penultimate layer (the Fréchet features) and a linear head.

    Args:
        num_classes: output classes.
        width: channels of the first stage (doubled per stage).
        feature_dim: width of the penultimate layer.
    """

    def __init__(self, num_classes: int = 10, width: int = 32, feature_dim: int = 128) -> None:
        super().__init__()
        if num_classes < 2 or width < 1 or feature_dim < 1:
            raise ValueError(f"need num_classes >= 2, width >= 1, feature_dim >= 1; got {num_classes}, {width}, {feature_dim}")
        self.config = dict(num_classes=num_classes, width=width, feature_dim=feature_dim)

        def stage(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                nn.Conv2d(cout, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            )  # fmt: skip

        self.trunk = nn.Sequential(stage(3, width), stage(width, 2 * width), stage(2 * width, 4 * width))
        self.features = nn.Sequential(nn.Flatten(), nn.Linear(4 * width, feature_dim), nn.ReLU(inplace=True))
        self.head = nn.Linear(feature_dim, num_classes)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """images [B, 3, H, W] in [-1, 1] -> (logits [B, K], penultimate features [B, feature_dim])."""
        pooled = self.trunk(images).mean(dim=(2, 3), keepdim=True)
        features = self.features(pooled)
        return self.head(features), features


def shrink_and_shift(images: torch.Tensor, item: int, canvas_item: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """The centred `canvas_item`-pixel item of each image shrunk to `item` pixels and pasted at a random position of
    a black canvas of the same size (what one frame of a moving clip looks like)."""
    b, c, h, w = images.shape
    top = (h - canvas_item) // 2
    crop = images[:, :, top : top + canvas_item, top : top + canvas_item]
    small = F.interpolate(crop, size=(item, item), mode="bicubic", align_corners=False).clamp(-1, 1)
    out = torch.full_like(images, -1.0)
    offsets = torch.randint(0, h - item + 1, (b, 2), generator=generator)
    for i, (y, x) in enumerate(offsets.tolist()):
        out[i, :, y : y + item, x : x + item] = small[i]
    return out


def save_classifier(path: str, model: SmallClassifier, metrics: dict) -> None:
    torch.save({"state_dict": model.state_dict(), "config": model.config, "metrics": metrics}, path)


def load_classifier(path: str, device: torch.device | str = "cpu") -> tuple[SmallClassifier, dict]:
    """(frozen classifier in eval mode, the metrics saved with it); a clear error when the file is missing."""
    import os

    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"classifier checkpoint {path!r} not found; train one with `python tools/train_classifier.py --out {path}`"
        )
    payload = torch.load(path, map_location="cpu", weights_only=True)
    model = SmallClassifier(**payload["config"])
    model.load_state_dict(payload["state_dict"])
    model.eval().requires_grad_(False)
    return model.to(device), dict(payload.get("metrics", {}))
