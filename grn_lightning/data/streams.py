"""Iterable datasets over WebDataset shards: an infinite training stream and an exactly-once evaluation stream.

Broken input never stops a run: a tar-level error (truncated shard) or a record that fails to decode is
logged, skipped and counted. Each emitted item carries `num_skipped`, the number of records this reader
dropped since its previous item, so the main process can add them up (`SkippedSamplesLogger`).
"""

from __future__ import annotations

import logging
import random
import tarfile
from collections.abc import Iterator

import torch
import webdataset as wds
from webdataset.tariterators import base_plus_ext

from grn_lightning.data.media import MediaDecodeError
from grn_lightning.data.records import SampleSpec, collate, decode_record
from grn_lightning.data.splits import ReaderSlot, assign_shards, current_slot

log = logging.getLogger(__name__)
_MAX_LOGGED_SKIPS = 20  # per reader; the counter keeps counting after that


class _SkipCounter:
    """Counts skipped records of one reader and hands out the count since the last emitted item."""

    def __init__(self) -> None:
        self.total = 0
        self.pending = 0

    def skip(self, what: str, err: Exception) -> None:
        self.total += 1
        self.pending += 1
        if self.total <= _MAX_LOGGED_SKIPS:
            log.warning("skipping %s: %s", what, err)

    def tar_handler(self, err: Exception) -> bool:
        self.skip("unreadable shard data", err)
        return True  # keep going with the next member / shard

    def take(self) -> int:
        pending, self.pending = self.pending, 0
        return pending


def iterate_records(urls: list[str], counter: _SkipCounter) -> Iterator[dict]:
    """Records of the shards in order (webdataset's tar reader; members grouped by key)."""
    return wds.tarfile_to_samples(handler=counter.tar_handler)(iter({"url": u} for u in urls))


class TrainStream(torch.utils.data.IterableDataset):
    """Infinite, shuffled, split by node and worker; yields whole batches of one geometry.

    Batching happens in the worker so a batch never mixes buckets/frame counts, and the DataLoader must use
    batch_size=None.
    """

    def __init__(self, urls: list[str], spec: SampleSpec, batch_size: int, shuffle_buffer: int, seed: int) -> None:
        super().__init__()
        self.urls, self.spec, self.batch_size = urls, spec, batch_size
        self.shuffle_buffer, self.seed = shuffle_buffer, seed

    def _records(self, slot: ReaderSlot, rng: random.Random, counter: _SkipCounter) -> Iterator[dict]:
        urls, sample_split = assign_shards(self.urls, slot)
        epoch = 0
        while True:
            order = list(urls)
            rng.shuffle(order)
            produced = 0
            for index, record in enumerate(iterate_records(order, counter)):
                if sample_split is not None and index % sample_split[1] != sample_split[0]:
                    continue
                produced += 1
                yield record
            if produced == 0:
                raise RuntimeError(
                    f"reader {slot} found no records in its {len(urls)} shard(s) (epoch {epoch}); "
                    "the shards are empty or unreadable"
                )
            epoch += 1

    def _shuffled(self, records: Iterator[dict], rng: random.Random) -> Iterator[dict]:
        buffer: list[dict] = []
        for record in records:
            if len(buffer) < self.shuffle_buffer:
                buffer.append(record)
                continue
            index = rng.randrange(len(buffer))
            buffer[index], record = record, buffer[index]
            yield record
        # unreachable for the infinite source; kept so a finite source drains its buffer
        rng.shuffle(buffer)
        yield from buffer

    def __iter__(self) -> Iterator[dict]:
        slot = current_slot()
        rng = random.Random(self.seed * 1_000_003 + slot.index)
        counter = _SkipCounter()
        by_shape: dict[tuple, list[dict]] = {}
        decoded_any, failures_in_a_row = False, 0
        for record in self._shuffled(self._records(slot, rng, counter), rng):
            try:
                sample = decode_record(record, self.spec, rng)
            except (MediaDecodeError, ValueError, KeyError, OSError) as err:
                counter.skip(f"record {record.get('__key__')} of {record.get('__url__')}", err)
                failures_in_a_row += 1
                if not decoded_any and failures_in_a_row >= 1000:
                    raise RuntimeError(f"reader {slot}: the first 1000 records all failed to decode") from err
                continue
            decoded_any, failures_in_a_row = True, 0
            tensor = sample.get("pixels", sample.get("tokens"))
            group = by_shape.setdefault(tuple(tensor.shape), [])
            group.append(sample)
            if len(group) == self.batch_size:
                batch = collate(group)
                batch["num_skipped"] = torch.tensor(counter.take())
                group.clear()
                yield batch


class MixedStream(torch.utils.data.IterableDataset):
    """Image batches and video batches from two training streams; each batch is a video batch with
    probability `video_ratio` (joint image/video training, SPEC §2)."""

    def __init__(self, images: TrainStream, videos: TrainStream, video_ratio: float, seed: int) -> None:
        super().__init__()
        self.images, self.videos, self.video_ratio, self.seed = images, videos, video_ratio, seed

    def __iter__(self) -> Iterator[dict]:
        rng = random.Random(self.seed * 7_919 + current_slot().index)
        images, videos = iter(self.images), iter(self.videos)
        while True:
            yield next(videos) if rng.random() < self.video_ratio else next(images)


def count_records(urls: list[str]) -> int:
    """Number of records (distinct consecutive keys) in the shards, read from tar headers only where
    the shard is a local file."""
    total = 0
    for url in urls:
        opener = tarfile.open(url, "r:*") if "://" not in url and not url.startswith("pipe:") else None
        stream = opener if opener is not None else tarfile.open(fileobj=wds.gopen(url), mode="r|*")
        with stream:
            previous = None
            for member in stream:
                if not member.isfile():
                    continue
                parts = base_plus_ext(member.name)
                if parts is None or parts[0] is None:
                    continue
                if parts[0] != previous:
                    total += 1
                    previous = parts[0]
    return total


class EvalStream(torch.utils.data.IterableDataset):
    """Every record exactly once over all ranks, the same number of items on every rank.

    Record i goes to rank i % world_size; each rank yields ceil(N / world_size) items, topping up with
    padding items (valid=False). A record that fails to decode also becomes a padding item, so counts stay
    equal and no rank waits for another in a collective. Use with the DataLoader's own batch_size: every
    worker then holds the same number of items on every rank, so every rank sees the same number of batches.
    """

    def __init__(self, urls: list[str], spec: SampleSpec, num_records: int, token_shape: tuple | None) -> None:
        super().__init__()
        self.urls, self.spec, self.num_records, self.token_shape = urls, spec, num_records, token_shape

    def per_rank(self, world_size: int) -> int:
        return -(-self.num_records // world_size)

    def __iter__(self) -> Iterator[dict]:
        slot = current_slot()
        counter = _SkipCounter()
        per_rank = self.per_rank(slot.world_size)
        padding = self.spec.padding_sample(self.token_shape)

        def mine(local: int) -> bool:
            return local % slot.num_workers == slot.worker

        index = -1
        for index, record in enumerate(iterate_records(self.urls, counter)):
            local = index // slot.world_size
            if index % slot.world_size != slot.rank or not mine(local) or local >= per_rank:
                continue  # not ours (or more records than counted at setup: never give one rank extra work)
            try:
                sample = decode_record(record, self.spec, rng=None)
            except (MediaDecodeError, ValueError, KeyError, OSError) as err:
                counter.skip(f"record {record.get('__key__')} of {record.get('__url__')}", err)
                sample = dict(padding)
            yield {**sample, "num_skipped": counter.take()}
        seen_on_rank = (index + 1 - slot.rank + slot.world_size - 1) // slot.world_size if index >= 0 else 0
        for local in range(max(seen_on_rank, 0), per_rank):
            if mine(local):
                yield {**padding, "num_skipped": counter.take()}
