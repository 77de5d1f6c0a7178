"""Turn one raw WebDataset record (a dict of bytes) into one training sample (docs/CONTRACTS.md).

Record members: an image (jpg, png, webp or any other extension webdataset's image decoder knows) or a video
(mp4, avi, mov, mkv, webm), or a token record (`tokens.npy`, `tokens.json`, optional `tokens_flip.npy`, optional
cached text states `text.npy`, `null_text.npy`, `text.json`); then optional metadata, read the way the ecosystem's
tools write it:
- caption: a `txt` member (img2dataset / video2dataset layout: LAION, DataComp, WebVid) or the `json` member's
  "caption" field (tools/make_shards.py). `caption_source` says which one wins when both are present and
  non-empty ("txt" by default); an absent, empty or null one falls back to the other, and neither gives "".
- class id: a `cls` or `cls.txt` member (text), else the `json` member's "cls" field, else -1.
A bad record raises `MediaDecodeError` (the stream skips and counts it).
"""

from __future__ import annotations

import io
import json
import random
from dataclasses import dataclass, field

import numpy as np
import torch

from grn_lightning.data.buckets import nearest_aspect_ratio, nearest_bucket
from grn_lightning.data.media import (
    IMAGE_EXTENSIONS,
    VIDEO_EXTENSIONS,
    MediaDecodeError,
    ZoomOut,
    adm_center_crop,
    decode_image,
    image_to_tensor,
    resize_cover_crop_frames,
    resize_cover_crop_image,
)
from grn_lightning.data.text_states import collate_text, decode_text_fields
from grn_lightning.data.tokens import decode_token_record
from grn_lightning.data.video import ClipRule, decode_video

KINDS = ("image", "video", "tokens")
CAPTION_SOURCES = ("txt", "json")


@dataclass(frozen=True)
class SampleSpec:
    """What one sample of a stream must look like.

    kind: "image" (records must hold an image), "video" (an mp4 clip), "tokens" (token records).
    resolution: square side for ADM centre crop (images) / resize-cover + centre crop (video frames).
    pixel_budget: if set (e.g. "0.25M"), images use aspect-ratio buckets instead of the square crop.
    clip: frame selection for videos.
    random_flip: horizontal flip with probability 0.5 (training only; tokens pick their flipped copy).
    zoom_out: images only, training only: shrink and move them at random (media.ZoomOut); None leaves them as is.
    video_backend: "auto", "decord", "torchcodec" or "av" (data/video.py).
    caption_source: which caption wins when a record has both a `txt` member and a json "caption": "txt" or "json".
    """

    kind: str = "image"
    resolution: int = 256
    pixel_budget: str | None = None
    clip: ClipRule = field(default_factory=ClipRule)
    random_flip: bool = False
    zoom_out: ZoomOut | None = None
    video_backend: str = "auto"
    caption_source: str = "txt"

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"sample kind must be one of {KINDS}, got {self.kind!r}")
        if self.caption_source not in CAPTION_SOURCES:
            raise ValueError(f"caption_source must be one of {CAPTION_SOURCES}, got {self.caption_source!r}")

    def padding_sample(self, token_shape: tuple[int, ...] | None = None) -> dict:
        """A zero sample of this spec's fixed geometry, marked invalid (used to equalise evaluation)."""
        if self.kind == "tokens":
            if token_shape is None:
                raise ValueError("padding a token stream needs the token shape")
            body = {"tokens": torch.zeros(token_shape, dtype=torch.uint8)}
        else:
            frames = 1 if self.kind == "image" else self.clip.num_frames
            body = {"pixels": torch.zeros(3, frames, self.resolution, self.resolution, dtype=torch.uint8)}
        return {**body, "cls": -1, "caption": "", "key": "", "valid": False, "aspect_ratio": 1.0}


def _field(record: dict, extensions: tuple[str, ...]) -> bytes | None:
    for ext in extensions:
        if ext in record:
            return record[ext]
    return None


def _text(record: dict, member: str) -> str | None:
    if member not in record:
        return None
    try:
        return record[member].decode("utf-8").strip()
    except UnicodeDecodeError as err:
        raise MediaDecodeError(f"{member} member is not UTF-8 text: {err}") from err


def record_labels(record: dict, caption_source: str) -> tuple[int, str]:
    """(class id or -1, caption) of a raw WebDataset record, read as training reads them (also the preflight's check);
    raises MediaDecodeError for a malformed json member, class id or caption."""
    meta = {}
    if "json" in record:
        try:
            meta = json.loads(record["json"])
        except (ValueError, UnicodeDecodeError) as err:
            raise MediaDecodeError(f"bad json member: {err}") from err
        if not isinstance(meta, dict):
            meta = {}  # a json member that is no object carries no fields we read
    cls_text = _text(record, "cls")
    cls_text = _text(record, "cls.txt") if cls_text is None else cls_text
    cls = meta.get("cls") if cls_text is None else cls_text
    try:
        cls = -1 if cls is None else int(cls)
    except (TypeError, ValueError) as err:
        raise MediaDecodeError(f"class id {cls!r} is not an integer") from err
    json_caption = meta.get("caption")
    if json_caption is not None and not isinstance(json_caption, str):
        raise MediaDecodeError(f"json caption must be a string or null, got {type(json_caption).__name__}")
    candidates = {"txt": _text(record, "txt"), "json": json_caption}
    preferred = candidates[caption_source]
    fallback = candidates["json" if caption_source == "txt" else "txt"]
    return cls, (preferred or fallback or "").strip()


def decode_record(record: dict, spec: SampleSpec, rng: random.Random | None) -> dict:
    """Raw record -> sample dict. rng is None in evaluation (deterministic: no flip, fixed clip start)."""
    cls, caption = record_labels(record, spec.caption_source)
    flip = spec.random_flip and rng is not None and rng.random() < 0.5
    if spec.kind == "tokens":
        if "tokens.npy" not in record or "tokens.json" not in record:
            raise MediaDecodeError("token record lacks tokens.npy / tokens.json")
        meta = json.loads(record["tokens.json"])
        packed_field = "tokens_flip.npy" if flip and "tokens_flip.npy" in record else "tokens.npy"
        packed = np.load(io.BytesIO(record[packed_field]), allow_pickle=False)
        tokens = torch.from_numpy(decode_token_record(packed, meta))
        # the bucket's template ratio h/w (3D RoPE canvas, SPEC §5); shards without it hold square crops or grids
        # whose nearest template is their bucket
        ratio = meta.get("aspect_ratio") or nearest_aspect_ratio(tokens.shape[-2], tokens.shape[-1])
        body = {"tokens": tokens, "aspect_ratio": float(ratio), **(decode_text_fields(record) or {})}
    elif spec.kind == "image":
        data = _field(record, IMAGE_EXTENSIONS)
        if data is None:
            raise MediaDecodeError(f"record has no image field (looked for {IMAGE_EXTENSIONS})")
        image = decode_image(data)
        ratio = 1.0  # square crop
        if spec.pixel_budget is None:
            image = adm_center_crop(image, spec.resolution)
        else:
            bucket = nearest_bucket(image.size[1], image.size[0], spec.pixel_budget)
            image = resize_cover_crop_image(image, bucket.height, bucket.width)
            ratio = bucket.ratio
        if spec.zoom_out is not None and rng is not None:
            image = spec.zoom_out(image, rng)
        pixels = image_to_tensor(image)
        body = {"pixels": pixels.flip(-1) if flip else pixels, "aspect_ratio": ratio}
    else:
        data = _field(record, VIDEO_EXTENSIONS)
        if data is None:
            raise MediaDecodeError(f"record has no video field (looked for {VIDEO_EXTENSIONS})")
        start = rng.random() if rng is not None else 0.0
        frames = decode_video(data, spec.clip, start, spec.video_backend)
        if spec.pixel_budget is None:
            height = width = spec.resolution
            ratio = 1.0
        else:
            bucket = nearest_bucket(frames.shape[1], frames.shape[2], spec.pixel_budget)
            height, width, ratio = bucket.height, bucket.width, bucket.ratio
        pixels = resize_cover_crop_frames(frames, height, width)
        body = {"pixels": pixels.flip(-1) if flip else pixels, "aspect_ratio": ratio}
    return {**body, "cls": cls, "caption": caption, "key": record.get("__key__", ""), "valid": True}


def collate(samples: list[dict]) -> dict:
    """Stack samples of one geometry into a batch (pixels stay uint8 until they reach the device)."""
    tensor_key = "tokens" if "tokens" in samples[0] else "pixels"
    return {
        tensor_key: torch.stack([s[tensor_key] for s in samples]),
        "cls": torch.tensor([s["cls"] for s in samples], dtype=torch.int64),
        "caption": [s["caption"] for s in samples],
        "key": [s["key"] for s in samples],
        "valid": torch.tensor([s["valid"] for s in samples], dtype=torch.bool),
        # the bucket's template h/w per sample (T2X 3D RoPE canvas, SPEC §5); a list, so it stays on the host
        "aspect_ratio": [float(s.get("aspect_ratio", 1.0)) for s in samples],
        "num_skipped": torch.tensor(sum(s.get("num_skipped", 0) for s in samples), dtype=torch.int64),
        **collate_text(samples),  # cached text-encoder states of token records (data/text_states.py)
    }
