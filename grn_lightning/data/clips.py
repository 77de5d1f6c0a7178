"""Cut long videos into clips of a fixed length for shards (tools/make_shards.py --clip-seconds).

A 80 s video as one record gives one 17-frame window per epoch out of 80 s of footage; cut into 5 s clips it
gives 16 records, each a training sample. Frames are decoded and re-encoded (H.264, the source frame rate) in
one streaming pass, so memory holds one frame at a time and every clip starts on a frame of its own (a stream
copy could only cut at key frames).
"""

from __future__ import annotations

import io
from fractions import Fraction

from grn_lightning.data.media import MediaDecodeError


def _encoder(output, rate: Fraction, width: int, height: int):
    stream = output.add_stream("libx264", rate=rate)
    # yuv420p needs even sides; odd ones lose their last row / column
    stream.width, stream.height, stream.pix_fmt = width - width % 2, height - height % 2, "yuv420p"
    stream.options = {"crf": "18", "preset": "veryfast"}  # near-transparent quality: the shards are sources
    return stream


def cut_clips(data: bytes, seconds: float, min_seconds: float | None = None) -> list[bytes]:
    """Consecutive clips of `seconds` each (mp4, H.264). The last, shorter piece is kept if it lasts at least
    `min_seconds` (default: half a clip). A video no longer than `seconds` comes back as one clip."""
    import av

    if seconds <= 0:
        raise ValueError(f"clip length must be positive, got {seconds}")
    min_seconds = seconds / 2 if min_seconds is None else min_seconds
    clips: list[tuple[io.BytesIO, int]] = []
    try:
        with av.open(io.BytesIO(data)) as source:
            stream = source.streams.video[0]
            rate = stream.average_rate or stream.guessed_rate or Fraction(25)
            per_clip = max(1, round(float(rate) * seconds))
            output = encoder = None
            count = 0
            for frame in source.decode(stream):
                if count % per_clip == 0:
                    if output is not None:
                        output.mux(encoder.encode(None))
                        output.close()
                    clips.append((io.BytesIO(), 0))
                    output = av.open(clips[-1][0], "w", format="mp4")
                    encoder = _encoder(output, rate, frame.width, frame.height)
                image = frame.reformat(width=encoder.width, height=encoder.height, format="yuv420p")
                image.pts, image.time_base = clips[-1][1], 1 / Fraction(rate)  # frame n of this clip, at n / rate
                output.mux(encoder.encode(image))
                clips[-1] = (clips[-1][0], clips[-1][1] + 1)
                count += 1
            if output is not None:
                output.mux(encoder.encode(None))
                output.close()
    except av.FFmpegError as err:
        raise MediaDecodeError(f"cannot cut video into clips: {err}") from err
    if not clips:
        raise MediaDecodeError("video has no decodable frames")
    if len(clips) > 1 and clips[-1][1] < min_seconds * float(rate):
        clips.pop()
    return [buffer.getvalue() for buffer, _ in clips]
