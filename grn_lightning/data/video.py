"""Video decoding for the data pipeline: clip selection (`ClipRule`) and three decoder backends.

Backends (`GRNDataModule(video_backend=...)`):
- "decord": the default, fast seeking decoder the release uses.
- "torchcodec": PyTorch's FFmpeg decoder (the successor of torchvision's video reader, which torchvision 0.28
  dropped). Optional: `pip install grn-lightning[torchcodec]`; it needs FFmpeg 4-7 shared libraries and a
  torchcodec build that matches the installed torch (the PyPI wheel is the CUDA build).
- "av": PyAV (FFmpeg bundled in the wheel), the fallback that decodes everything, slowest.
- "auto": decord, then torchcodec, then PyAV, each tried where the previous is missing or fails (decord
  cannot decode some streams, e.g. frame widths 24 and 48).
Every backend returns uint8 [T, H, W, 3] RGB for the same frame indices.
"""

from __future__ import annotations

import functools
import io
from dataclasses import dataclass

import numpy as np
import torch

from grn_lightning.data.media import MediaDecodeError

VIDEO_BACKENDS = ("auto", "decord", "torchcodec", "av")


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
        if last_start < -1e-9 and self.short == "skip":  # tolerance: 5 frames at 10 fps fill 0.5 s exactly
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


def _read_frames_torchcodec(data: bytes, rule: ClipRule, start: float | None) -> torch.Tensor:
    from torchcodec.decoders import VideoDecoder

    # seek_mode "exact" scans the stream once, so frame counts and indices match decord's and PyAV's
    decoder = VideoDecoder(data, dimension_order="NHWC", num_ffmpeg_threads=1, seek_mode="exact")
    indices = rule.frame_indices(len(decoder), float(decoder.metadata.average_fps), start)
    return decoder.get_frames_at(indices=indices).data.contiguous()


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


_READERS = {"decord": _read_frames_decord, "torchcodec": _read_frames_torchcodec, "av": _read_frames_av}


@functools.cache
def backend_unavailable(backend: str) -> str | None:
    """Why `backend` cannot run here (the import error), or None when it can."""
    module = {"decord": "decord", "torchcodec": "torchcodec.decoders", "av": "av"}[backend]
    try:
        __import__(module)
    except Exception as err:  # torchcodec raises OSError/RuntimeError when its FFmpeg or torch libraries miss
        return f"{backend} cannot be imported: {type(err).__name__}: {err}"
    return None


def decode_video(data: bytes, rule: ClipRule, start: float | None, backend: str = "auto") -> torch.Tensor:
    """Video bytes (any container FFmpeg reads: mp4, avi, mov, mkv, webm) -> uint8 [T, H, W, 3] following `rule`."""
    if backend not in VIDEO_BACKENDS:
        raise ValueError(f"video_backend must be one of {VIDEO_BACKENDS}, got {backend!r}")
    names = ("decord", "torchcodec", "av") if backend == "auto" else (backend,)
    if backend == "auto":  # an absent library is no failure of this video; try the next one without the import cost
        names = tuple(name for name in names if backend_unavailable(name) is None) or ("av",)
    errors = []
    for name in names:
        try:
            return _READERS[name](data, rule, start)
        except MediaDecodeError:
            raise  # a rule violation (too short / too long) does not improve with another decoder
        except Exception as err:  # decoder libraries raise their own error types (and ImportError when absent)
            errors.append(f"{name}: {type(err).__name__}: {err}")
    raise MediaDecodeError("undecodable video: " + "; ".join(errors))
