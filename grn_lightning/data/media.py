"""Image decoding (every PIL mode to 8-bit RGB) plus the geometric transforms of SPEC §8 (videos: video.py).

Everything here runs inside DataLoader workers, on raw bytes taken out of WebDataset shards, and returns
uint8 tensors (normalisation to [-1, 1] happens after the batch reaches the device: 4x less IPC traffic).
Any failure raises `MediaDecodeError`, which the pipeline counts and skips.
"""

from __future__ import annotations

import io
import math
import random
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from webdataset.autodecode import IMAGE_EXTENSIONS as _WDS_IMAGE_EXTENSIONS

VIDEO_EXTENSIONS = ("mp4", "avi", "mov", "mkv", "webm")
# Record members read as images: the common ones first (a record holding two picks the first), then every other
# extension webdataset's image decoder hands to PIL, so shards written by the ecosystem's tools read as they do
# there. "mpg"/"mpeg" are left out: PIL reads only MPEG-1 stills, and those names mean video in a shard.
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp") + tuple(
    ext for ext in _WDS_IMAGE_EXTENSIONS if ext not in ("jpg", "jpeg", "png", "webp", "mpg", "mpeg")
)


class MediaDecodeError(ValueError):
    """A record's media could not be decoded (corrupt, truncated, too short, too long, ...)."""


_SIXTEEN_BIT_MODES = ("I", "I;16", "I;16L", "I;16B", "I;16N")
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode -> 8-bit RGB, keeping what the pixels mean.

    PIL's own `convert("RGB")` clips 16-bit grey ("I;16", and "I" as 16-bit PNGs and TIFFs load) to 255, so a
    16-bit photo turns white; here its full range maps onto 0..255 (v / 257, rounded). Transparent pixels
    ("RGBA", "LA", "PA", palette images with a transparent colour) are composited over white, the usual page
    background, instead of showing the colour stored under alpha 0 (often black). Palette, 1-bit, CMYK
    ((255 - c)(255 - k) / 255 per channel) and YCbCr use PIL's conversion, which is exact for them.
    """
    if image.mode in _SIXTEEN_BIT_MODES:
        grey = np.asarray(image).astype(np.float64).clip(0, 65535) / 257.0
        return Image.fromarray(np.rint(grey).astype(np.uint8), "L").convert("RGB")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in _ALPHA_MODES:
        rgba = image.convert("RGBA") if image.mode != "La" else image.convert("LA").convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


def decode_image(data: bytes) -> Image.Image:
    """Bytes of any image PIL reads -> RGB PIL image (fully loaded, so truncation is detected here)."""
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
        return to_rgb(image)
    except Exception as err:  # PIL raises many types for broken files
        raise MediaDecodeError(f"undecodable image: {err}") from err


def adm_center_crop(image: Image.Image, size: int) -> Image.Image:
    """ADM / guided-diffusion centre crop (SPEC §8): box-downsample by 2 while the short side is >= 2x the
    target, then bicubic-resize the short side to `size`, then centre-crop `size` x `size`."""
    while min(image.size) >= 2 * size:
        image = image.resize(tuple(s // 2 for s in image.size), resample=Image.BOX)
    scale = size / min(image.size)
    image = image.resize(tuple(round(s * scale) for s in image.size), resample=Image.BICUBIC)
    left = (image.size[0] - size) // 2
    top = (image.size[1] - size) // 2
    return image.crop((left, top, left + size, top + size))


def resize_cover_crop_image(image: Image.Image, height: int, width: int) -> Image.Image:
    """Resize so the image covers height x width (aspect kept), then centre-crop (bucket mode, SPEC §8)."""
    scale = max(height / image.size[1], width / image.size[0])
    new_size = (max(width, math.ceil(image.size[0] * scale)), max(height, math.ceil(image.size[1] * scale)))
    image = image.resize(new_size, resample=Image.BICUBIC, reducing_gap=2.0)
    left = (image.size[0] - width) // 2
    top = (image.size[1] - height) // 2
    return image.crop((left, top, left + width, top + height))


@dataclass(frozen=True)
class ZoomOut:
    """Training-image augmentation: with `probability`, the whole image is shrunk by a factor drawn from `scale` and
    pasted, moved from the centre by up to `shift` of each side (what leaves the canvas is cut), on a canvas of the
    original size filled with `fill`. It shows an object smaller and off-centre, as it appears in clips where it
    moves (Moving Fashion-MNIST: configs/repro/t2x.yaml).

    scale: (min, max) factor in (0, 1].
    shift: largest move from the centred position, as a fraction of the side (each axis drawn uniformly).
    probability: chance that an image is transformed (else it is returned as is).
    fill: canvas grey level 0-255 (0: black, the background of Fashion-MNIST).
    """

    scale: tuple[float, float] = (0.9, 1.0)
    shift: float = 0.1
    probability: float = 0.5
    fill: int = 0

    def __post_init__(self) -> None:
        low, high = self.scale
        if not 0.0 < low <= high <= 1.0:
            raise ValueError(f"zoom-out scale must satisfy 0 < min <= max <= 1, got {self.scale}")
        if not 0.0 <= self.shift <= 1.0 or not 0.0 <= self.probability <= 1.0 or not 0 <= self.fill <= 255:
            raise ValueError(f"zoom-out needs shift and probability in [0, 1] and fill in 0-255, got {self}")

    def __call__(self, image: Image.Image, rng: random.Random) -> Image.Image:
        if rng.random() >= self.probability:
            return image
        width, height = image.size
        factor = rng.uniform(*self.scale)
        small_w, small_h = max(1, round(width * factor)), max(1, round(height * factor))
        left = round((width - small_w) / 2 + rng.uniform(-self.shift, self.shift) * width)
        top = round((height - small_h) / 2 + rng.uniform(-self.shift, self.shift) * height)
        canvas = Image.new("RGB", (width, height), (self.fill,) * 3)
        canvas.paste(image.resize((small_w, small_h), Image.BICUBIC), (left, top))  # PIL cuts what falls outside
        return canvas


def image_to_tensor(image: Image.Image) -> torch.Tensor:
    """PIL RGB -> uint8 [3, 1, H, W] (an image is a 1-frame video)."""
    array = np.asarray(image, dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).unsqueeze(1)


def resize_cover_crop_frames(frames: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """uint8 [T, H, W, 3] -> uint8 [3, T, height, width]: resize to cover (antialiased bicubic), centre-crop."""
    video = frames.permute(0, 3, 1, 2).float()  # [T, 3, H, W]
    scale = max(height / video.shape[-2], width / video.shape[-1])
    size = (max(height, math.ceil(video.shape[-2] * scale)), max(width, math.ceil(video.shape[-1] * scale)))
    if size != tuple(video.shape[-2:]):
        video = F.interpolate(video, size=size, mode="bicubic", antialias=True, align_corners=False)
    top = (video.shape[-2] - height) // 2
    left = (video.shape[-1] - width) // 2
    video = video[..., top : top + height, left : left + width]
    return video.round_().clamp_(0, 255).to(torch.uint8).permute(1, 0, 2, 3).contiguous()


