"""Image and video decoding plus the geometric transforms of SPEC §8.

Everything here runs inside DataLoader workers, on raw bytes taken out of WebDataset shards, and returns
uint8 tensors (normalisation to [-1, 1] happens after the batch reaches the device: 4x less IPC traffic).
Any failure raises `MediaDecodeError`, which the pipeline counts and skips.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
VIDEO_EXTENSIONS = ("mp4", "avi", "mov", "webm", "mkv")


class MediaDecodeError(ValueError):
    """A record's media could not be decoded (corrupt, truncated, too short, too long, ...)."""


def decode_image(data: bytes) -> Image.Image:
    """Bytes of a jpg/png/webp -> RGB PIL image (fully loaded, so truncation is detected here)."""
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
        return image.convert("RGB")
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


@dataclass(frozen=True)
class ClipRule:
    """How to pick `num_frames` frames at `fps` out of a source clip.

    num_frames: frames to return; must be 1 + 4k (causal VAE temporal stride 4, SPEC §2).
    fps: target frame rate the frames are resampled to (SPEC §8: 16).
    max_seconds: clips longer than this are dropped (release: 13 s); None keeps all.
    short: "skip" drops clips shorter than (num_frames-1)/fps seconds; "loop" plays them forward again.
    """

    num_frames: int = 17
    fps: float = 16.0
    max_seconds: float | None = None
    short: str = "skip"

    def __post_init__(self) -> None:
        if self.num_frames < 1 or (self.num_frames - 1) % 4:
            raise ValueError(f"num_frames must be 1 + 4k (1, 5, 9, 17, ...), got {self.num_frames}")
        if self.short not in ("skip", "loop"):
            raise ValueError(f"short_clip must be 'skip' or 'loop', got {self.short!r}")
        if self.fps <= 0:
            raise ValueError(f"fps must be positive, got {self.fps}")

    def frame_indices(self, source_frames: int, source_fps: float, start: float | None) -> list[int]:
        """Source frame indices for one clip. start in [0, 1] picks the window position (None: centred)."""
        duration = source_frames / source_fps
        if self.max_seconds is not None and duration > self.max_seconds:
            raise MediaDecodeError(f"clip of {duration:.2f}s exceeds max_video_seconds={self.max_seconds}")
        span = (self.num_frames - 1) / self.fps  # seconds covered from first to last returned frame
        last_start = duration - span - 1.0 / source_fps
        if last_start < 0 and self.short == "skip":
            raise MediaDecodeError(
                f"clip of {duration:.2f}s is shorter than the {span:.2f}s needed for {self.num_frames} frames at "
                f"{self.fps} fps (set short_clip='loop' to keep such clips)"
            )
        offset = max(0.0, last_start) * (0.5 if start is None else start)
        times = offset + np.arange(self.num_frames) / self.fps
        return [int(i) % source_frames for i in np.floor(times * source_fps + 1e-6).astype(np.int64)]


def _read_frames_decord(data: bytes, rule: ClipRule, start: float | None) -> torch.Tensor:
    import decord

    reader = decord.VideoReader(io.BytesIO(data), ctx=decord.cpu(0), num_threads=1)
    indices = rule.frame_indices(len(reader), float(reader.get_avg_fps()), start)
    return torch.from_numpy(reader.get_batch(indices).asnumpy())


def _read_frames_av(data: bytes, rule: ClipRule, start: float | None) -> torch.Tensor:
    import av

    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(stream)]
        fps = float(stream.average_rate or stream.guessed_rate or 25)
    if not frames:
        raise MediaDecodeError("video has no decodable frames")
    indices = rule.frame_indices(len(frames), fps, start)
    return torch.from_numpy(np.stack([frames[i] for i in indices]))


def decode_video(data: bytes, rule: ClipRule, start: float | None, backend: str = "auto") -> torch.Tensor:
    """mp4 bytes -> uint8 [T, H, W, 3] following `rule`.

    backend "auto" uses decord and falls back to PyAV where decord is missing or fails: decord cannot decode
    some streams (e.g. frame widths 24 and 48) and has no wheels for some platforms.
    """
    if backend not in ("auto", "decord", "av"):
        raise ValueError(f"video_backend must be 'auto', 'decord' or 'av', got {backend!r}")
    errors = []
    readers = {"decord": [_read_frames_decord], "av": [_read_frames_av]}.get(
        backend, [_read_frames_decord, _read_frames_av]
    )
    for reader in readers:
        try:
            return reader(data, rule, start)
        except MediaDecodeError:
            raise  # a rule violation (too short / too long) does not improve with another decoder
        except Exception as err:  # decoder libraries raise their own error types
            errors.append(f"{reader.__name__}: {err}")
    raise MediaDecodeError("undecodable video: " + "; ".join(errors))
