"""Token-shard records: HBQ index labels stored as packed bit planes (docs/CONTRACTS.md).

A 256x256 image with C=16, M=4 is 16x16x16 labels = 4096 labels x 4 bits = 2 KiB per record, so
C2I training reads tokens instead of paying for the VAE encoder every step.
"""

from __future__ import annotations

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


def encode_token_record(labels: np.ndarray, num_rounds: int, flipped: np.ndarray | None = None) -> dict[str, Any]:
    """Fields of a token record (without __key__, cls, json) for `webdataset.TarWriter`."""
    labels = np.asarray(labels)
    if labels.ndim != 4:
        raise ValueError(f"expected index labels [C, T, h, w], got shape {tuple(labels.shape)}")
    record: dict[str, Any] = {
        "tokens.npy": np.packbits(index_labels_to_bitplanes(labels, num_rounds).reshape(-1)),
        "tokens.json": {"shape": list(labels.shape), "num_rounds": int(num_rounds), "layout": TOKEN_LAYOUT},
    }
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
