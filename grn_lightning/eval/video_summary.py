"""Clips into TensorBoard as videos (animated GIFs in an image summary), without moviepy.

TensorBoard's `SummaryWriter.add_video` encodes the GIF with moviepy, an optional package; without it, it prints a
notice and logs nothing, so clip samples silently never reached TensorBoard (issue 15). The summary it writes is an
ordinary image summary whose encoded bytes are a GIF (TensorBoard's image dashboard animates it); Pillow, already a
dependency, encodes the same GIF here.
"""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image


def tile_clips(clips: torch.Tensor, columns: int | None = None, padding: int = 2) -> np.ndarray:
    """clips [B, T, 3, H, W] in [0, 1] → uint8 frames [T, rows·(H+p)-p, cols·(W+p)-p, 3], one clip per tile."""
    b, t, c, h, w = clips.shape
    if c != 3:
        raise ValueError(f"clips must be [B, T, 3, H, W], got {tuple(clips.shape)}")
    columns = min(b, columns or b)
    rows = -(-b // columns)
    frames = np.zeros((t, rows * (h + padding) - padding, columns * (w + padding) - padding, 3), dtype=np.uint8)
    pixels = (clips.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 1, 3, 4, 2).cpu().numpy()
    for index in range(b):
        top, left = (index // columns) * (h + padding), (index % columns) * (w + padding)
        frames[:, top : top + h, left : left + w] = pixels[index]
    return frames


def gif_bytes(frames: np.ndarray, fps: float) -> bytes:
    """uint8 [T, H, W, 3] → an endlessly looping GIF at `fps` (GIF stores delays in hundredths of a second, so 16 fps
    plays at 1/0.06 = 16.7 fps)."""
    images = [Image.fromarray(frame) for frame in frames]
    buffer = io.BytesIO()
    images[0].save(buffer, format="GIF", save_all=True, append_images=images[1:], duration=round(1000 / fps), loop=0)
    return buffer.getvalue()


def log_video(
    experiment, tag: str, clips: torch.Tensor, global_step: int, fps: float = 16.0, columns: int | None = None
) -> None:
    """Write clips [B, T, 3, H, W] in [0, 1] as one tiled video (`columns` tiles per row, default all in one row) to
    a TensorBoard SummaryWriter."""
    from tensorboard.compat.proto.summary_pb2 import Summary

    frames = tile_clips(clips, columns)
    image = Summary.Image(height=frames.shape[1], width=frames.shape[2], colorspace=3,
                          encoded_image_string=gif_bytes(frames, fps))  # fmt: skip
    # The same writer call that add_video ends in (torch.utils.tensorboard.SummaryWriter.add_video).
    experiment._get_file_writer().add_summary(Summary(value=[Summary.Value(tag=tag, image=image)]), global_step)
