"""Token-shard records: HBQ index labels stored as packed bit planes (docs/CONTRACTS.md).

A 256x256 image with C=16, M=4 is 16x16x16 labels = 4096 labels x 4 bits = 2 KiB per record, so
C2I training reads tokens instead of paying for the VAE encoder every step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

TOKEN_LAYOUT = "hbq-bitplanes-packbits-v1"


def index_labels_to_bitplanes(labels: np.ndarray, num_rounds: int) -> np.ndarray:
    """[C, T, h, w] index labels (round 1 = MSB) -> uint8 bit planes [M, C, T, h, w]."""
    labels = np.asarray(labels)
    if labels.min() < 0 or labels.max() >= 2**num_rounds:
        raise ValueError(f"index labels must lie in [0, {2**num_rounds - 1}] for num_rounds={num_rounds}")
    shifts = np.arange(num_rounds - 1, -1, -1).reshape((num_rounds,) + (1,) * labels.ndim)
    return ((labels[None].astype(np.int64) >> shifts) & 1).astype(np.uint8)


def bitplanes_to_index_labels(planes: np.ndarray) -> np.ndarray:
    """uint8 bit planes [M, ...] -> index labels [...] in the smallest dtype that holds 2^M values (uint8 for M <= 8):
    an eighth of the int64 bytes to pin and copy to the device every step."""
    num_rounds = planes.shape[0]
    dtype = np.uint8 if num_rounds <= 8 else np.int64
    weights = (1 << np.arange(num_rounds - 1, -1, -1)).reshape((num_rounds,) + (1,) * (planes.ndim - 1))
    return (planes.astype(dtype) * weights.astype(dtype)).sum(axis=0, dtype=dtype)


def encode_token_record(
    labels: np.ndarray, num_rounds: int, flipped: np.ndarray | None = None, spatial_stride: int | None = None,
    resolution: int | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Fields of a token record (without __key__, cls, json) for `webdataset.TarWriter`. `tokens.json` records C (the
    shape's first entry), M (`num_rounds`) and, when given, the tokenizer's spatial stride and the pixel resolution,
    so a generator built for other values refuses the shard before training (`TokenGeometry.check_record`)."""
    labels = np.asarray(labels)
    if labels.ndim != 4:
        raise ValueError(f"expected index labels [C, T, h, w], got shape {tuple(labels.shape)}")
    record: dict[str, Any] = {
        "tokens.npy": np.packbits(index_labels_to_bitplanes(labels, num_rounds).reshape(-1)),
        "tokens.json": {"shape": list(labels.shape), "num_rounds": int(num_rounds), "layout": TOKEN_LAYOUT},
    }
    if spatial_stride is not None:
        record["tokens.json"]["spatial_stride"] = int(spatial_stride)
    if resolution is not None:
        record["tokens.json"]["resolution"] = int(resolution)
    if flipped is not None:
        if flipped.shape != labels.shape:
            raise ValueError(f"flipped labels {flipped.shape} must match labels {labels.shape}")
        record["tokens_flip.npy"] = np.packbits(index_labels_to_bitplanes(flipped, num_rounds).reshape(-1))
    return record


def decode_token_record(packed: np.ndarray, meta: dict[str, Any]) -> np.ndarray:
    """Inverse of `encode_token_record` for one of its arrays: index labels [C, T, h, w] (uint8 for M <= 8)."""
    if meta.get("layout") != TOKEN_LAYOUT:
        raise ValueError(f"unknown token layout {meta.get('layout')!r}; this version reads {TOKEN_LAYOUT!r}")
    shape = tuple(meta["shape"])
    num_rounds = int(meta["num_rounds"])
    count = num_rounds * int(np.prod(shape))
    planes = np.unpackbits(np.asarray(packed, dtype=np.uint8))[:count].reshape((num_rounds,) + shape)
    return bitplanes_to_index_labels(planes)


@dataclass(frozen=True)
class TokenGeometry:
    """What a generator expects of its tokens, given by the generator module to the data module (`connect`).

    channels: C and rounds: M of its tokenizer; spatial_stride: pixels per token side and temporal_stride: frames per
    latent frame after the first (None: no tokenizer given); grid: the token grid (h, w) of a fixed-size generator
    (C2I), None where sizes vary (T2X buckets).
    """

    channels: int
    rounds: int
    spatial_stride: int | None = None
    temporal_stride: int | None = None
    grid: tuple[int, int] | None = None

    def check_record(self, meta: dict[str, Any], source: str) -> None:
        """Refuse a token record (its `tokens.json`) made for another C, M, stride or grid, naming both values."""
        shape = list(meta["shape"])  # [C, T, h, w]
        found = {"channels": shape[0], "rounds": int(meta["num_rounds"]), "spatial_stride": meta.get("spatial_stride")}
        if self.grid is not None:
            found["grid"] = tuple(shape[2:])
        for name, value in found.items():
            wanted = getattr(self, name)
            if value is not None and wanted is not None and tuple(np.atleast_1d(value)) != tuple(np.atleast_1d(wanted)):
                raise ValueError(
                    f"{source}: token shards made with {name}={value}, the model expects {name}={wanted}; re-tokenize "
                    "the shards with the generator's tokenizer and resolution (tools/tokenize_shards.py) or use the "
                    "generator they were made for"
                )
