"""Memoised labels of a frozen tokenizer, keyed by the exact bytes of each sample's pixels.

A generator trained on media shards (T2X without token shards) encodes every batch with the frozen tokenizer.
When epochs repeat samples unchanged, as the Fashion-MNIST recipe's 6,000 training clips are seen about four
times, most of that encoding is repeated work: on the 2-core CPU host a batch of four 17-frame clips costs 0.04 s
of a 0.33 s T2X step (docs/REPRODUCTION.md). The cache answers a sample it has seen from memory.

The key is a digest of the pixel bytes, not the record's key: a flipped, cropped or zoomed sample is a different
input and is encoded anew, so augmentation cannot return stale labels, and records of different shards that
share a key cannot collide. Labels are stored on the CPU in the smallest integer dtype that holds them. Once the
byte budget is full, new samples are encoded but no longer stored (uniformly shuffled epochs gain nothing from
evicting). A cached sample was encoded in another batch, so its labels can differ from a fresh encoding wherever
the tokenizer's batched kernels round differently; both are encodings of the same pixels.

Hashing needs the pixels on the host: on a GPU, where the encoding is cheap and the copy is a sync, leave it off.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import torch

MIB = 1 << 20


class TokenCache:
    """Per-sample memo of `tokenize(pixels) -> int labels [B, ...]` up to `max_bytes` of stored labels.

    Args:
        max_bytes: budget for the stored labels (the digests' own ~100 bytes per entry are not counted).
    """

    def __init__(self, max_bytes: int) -> None:
        if max_bytes <= 0:
            raise ValueError(f"a token cache needs a positive byte budget, got {max_bytes}")
        self.max_bytes = int(max_bytes)
        self.stored_bytes = 0
        self.hits = 0
        self.misses = 0
        self._labels: dict[bytes, torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self._labels)

    @staticmethod
    def _digest(sample: torch.Tensor) -> bytes:
        # shape and dtype are part of the key: equal bytes of a different geometry are a different input
        head = f"{tuple(sample.shape)}{sample.dtype}".encode()
        body = sample.contiguous().view(torch.uint8).numpy().tobytes()
        return hashlib.blake2b(head + body, digest_size=16).digest()

    def tokenize(self, pixels: torch.Tensor, tokenize: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """Labels of `pixels` [B, ...] as `tokenize` gives them (int64, on its device); only unseen samples are
        encoded, in one call, in batch order."""
        digests = [self._digest(sample) for sample in pixels.detach().cpu()]
        missing = [i for i, digest in enumerate(digests) if digest not in self._labels]
        self.misses += len(missing)
        self.hits += len(digests) - len(missing)
        if not missing:
            return self._stacked(digests).to(pixels.device)
        fresh = tokenize(pixels[missing])
        out = torch.empty((len(digests), *fresh.shape[1:]), dtype=fresh.dtype, device=fresh.device)
        out[missing] = fresh
        seen = sorted(set(range(len(digests))) - set(missing))
        if seen:
            out[seen] = self._stacked([digests[i] for i in seen]).to(fresh.device, fresh.dtype)
        self._store([digests[i] for i in missing], fresh)
        return out

    def _stacked(self, digests: list[bytes]) -> torch.Tensor:
        # rows may be stored in different dtypes (each batch is compacted by its own range)
        return torch.stack([self._labels[digest].long() for digest in digests])

    def _store(self, digests: list[bytes], labels: torch.Tensor) -> None:
        compact = _compact(labels.detach().cpu())
        for digest, row in zip(digests, compact):
            if digest in self._labels:  # the same sample twice in one batch
                continue
            if self.stored_bytes + row.nbytes > self.max_bytes:
                return
            self._labels[digest] = row.clone()  # its own storage: a view would keep the whole batch alive
            self.stored_bytes += row.nbytes


def _compact(labels: torch.Tensor) -> torch.Tensor:
    """Labels in uint8 / int16 / int32 when their range allows (HBQ index labels of M ≤ 8 rounds fit uint8)."""
    if labels.numel() == 0:
        return labels
    low, high = int(labels.min()), int(labels.max())
    for dtype in (torch.uint8, torch.int16, torch.int32):
        info = torch.iinfo(dtype)
        if info.min <= low and high <= info.max:
            return labels.to(dtype)
    return labels
