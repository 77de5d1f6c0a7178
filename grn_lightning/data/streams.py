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
from grn_lightning.data.resume import python_rng_from_state, python_rng_state
from grn_lightning.data.splits import ReaderSlot, assign_shards, current_slot

log = logging.getLogger(__name__)
_MAX_LOGGED_SKIPS = 20  # per reader; the counter keeps counting after that


class SkipCounter:
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


def iterate_records(urls: list[str], counter: SkipCounter) -> Iterator[dict]:
    """Records of the shards in order (webdataset's tar reader; members grouped by key)."""
    return wds.tarfile_to_samples(handler=counter.tar_handler)(iter({"url": u} for u in urls))


class TrainStream(torch.utils.data.IterableDataset):
    """Infinite, shuffled, split by node and worker; yields whole batches of one geometry.

    Batching happens in the worker so a batch never mixes buckets/frame counts, and the DataLoader must use
    batch_size=None. Every choice is a function of (seed, reader, epoch, record position), so a reader's
    position (`stream_state` of each batch, see data/resume.py) is enough to continue it exactly.
    """

    def __init__(self, urls: list[str], spec: SampleSpec, batch_size: int, shuffle_buffer: int, seed: int) -> None:
        super().__init__()
        self.urls, self.spec, self.batch_size = urls, spec, batch_size
        self.shuffle_buffer, self.seed = shuffle_buffer, seed

    def __iter__(self) -> Iterator[dict]:
        return self.batches(current_slot(), None)

    def batches(self, slot: ReaderSlot, state: dict | None) -> Iterator[dict]:
        """This reader's batches, from the start or from `state` (a batch's `stream_state`)."""
        return _Reader(self, slot, state).batches()


class _Reader:
    """One reader of a `TrainStream`: shards in a per-epoch order -> shuffle buffer -> decode -> batches.

    Position fields (epoch, shard, offset, index) say which record comes next; buffered and pending records are
    remembered by identity (shard number in `urls`, ordinal within the shard) and read again on resume. The
    shuffle buffer is emptied at the end of each epoch, so a resumed reader never needs an earlier epoch.
    """

    def __init__(self, stream: TrainStream, slot: ReaderSlot, state: dict | None) -> None:
        self.stream, self.slot = stream, slot
        self.urls, self.sample_split = assign_shards(stream.urls, slot)
        self.counter = SkipCounter()
        self.groups: dict[tuple, list[tuple[tuple[int, int], int, dict]]] = {}  # shape -> [(identity, j, sample)]
        self.epoch = self.shard = self.offset = self.index = self.next_j = 0
        self.buffer: list[dict] = []
        self.shuffle_rng = self._rng("shuffle", 0)
        if state is not None and state.get("shards") != len(self.urls):
            log.warning("reader %s: the checkpoint's stream read %s shard(s), this run gives it %d; it restarts from "
                        "the beginning", slot, state.get("shards"), len(self.urls))  # fmt: skip
        elif state is not None:
            self._restore(state)

    def _rng(self, purpose: str, number: int) -> random.Random:
        return random.Random(f"{purpose}/{self.stream.seed}/{self.slot.index}/{number}")

    def _order(self) -> list[int]:
        order = list(range(len(self.urls)))
        self._rng("order", self.epoch).shuffle(order)
        return order

    def _source(self) -> Iterator[dict]:
        """This epoch's records from the current position; the position fields advance as records leave."""
        order = self._order()
        while self.shard < len(order):
            number = order[self.shard]
            for ordinal, record in enumerate(iterate_records([self.urls[number]], self.counter)):
                if ordinal < self.offset:
                    continue  # read before the checkpoint
                self.offset, index = ordinal + 1, self.index
                self.index += 1
                if self.sample_split is not None and index % self.sample_split[1] != self.sample_split[0]:
                    continue
                record["__identity__"] = (number, ordinal)
                yield record
            self.shard, self.offset = self.shard + 1, 0

    def _shuffled(self) -> Iterator[dict]:
        while True:
            fresh_epoch = self.shard == 0 and self.offset == 0 and not self.buffer
            produced = 0
            for record in self._source():
                produced += 1
                if len(self.buffer) < self.stream.shuffle_buffer:
                    self.buffer.append(record)
                    continue
                index = self.shuffle_rng.randrange(len(self.buffer))
                self.buffer[index], record = record, self.buffer[index]
                yield record
            while self.buffer:  # drain in random order: the next epoch starts with an empty buffer
                index = self.shuffle_rng.randrange(len(self.buffer))
                self.buffer[index], self.buffer[-1] = self.buffer[-1], self.buffer[index]
                yield self.buffer.pop()
            if fresh_epoch and produced == 0:
                raise RuntimeError(
                    f"reader {self.slot} found no records in its {len(self.urls)} shard(s) (epoch {self.epoch}); "
                    "the shards are empty or unreadable"
                )
            self.epoch, self.shard, self.offset, self.index = self.epoch + 1, 0, 0, 0
            self.shuffle_rng = self._rng("shuffle", self.epoch)

    def _decode(self, record: dict, j: int) -> dict | None:
        try:
            return decode_record(record, self.stream.spec, self._rng("decode", j))
        except (MediaDecodeError, ValueError, KeyError, OSError) as err:
            self.counter.skip(f"record {record.get('__key__')} of {record.get('__url__')}", err)
            return None

    def _add(self, record: dict, j: int, sample: dict) -> list[dict] | None:
        """Put a sample into its shape's group; the group's samples when it is full."""
        tensor = sample.get("pixels", sample.get("tokens"))
        group = self.groups.setdefault(tuple(tensor.shape), [])
        group.append((record["__identity__"], j, sample))
        if len(group) < self.stream.batch_size:
            return None
        samples = [entry[2] for entry in group]
        group.clear()
        return samples

    def batches(self) -> Iterator[dict]:
        decoded_any, failures_in_a_row = bool(self.next_j), 0
        for record in self._shuffled():
            j = self.next_j
            self.next_j += 1
            sample = self._decode(record, j)
            if sample is None:
                failures_in_a_row += 1
                if not decoded_any and failures_in_a_row >= 1000:
                    raise RuntimeError(f"reader {self.slot}: the first 1000 records all failed to decode")
                continue
            decoded_any, failures_in_a_row = True, 0
            samples = self._add(record, j, sample)
            if samples is not None:
                batch = collate(samples)
                batch["num_skipped"] = torch.tensor(self.counter.take())
                batch["stream_state"] = self.state()
                yield batch

    def state(self) -> dict:
        return {
            "shards": len(self.urls), "epoch": self.epoch, "shard": self.shard, "offset": self.offset,
            "index": self.index, "next_j": self.next_j, "shuffle_rng": python_rng_state(self.shuffle_rng),
            "buffer": [list(record["__identity__"]) for record in self.buffer],
            "pending": [[*identity, j] for group in self.groups.values() for identity, j, _ in group],
        }  # fmt: skip

    def _restore(self, state: dict) -> None:
        self.epoch, self.shard, self.offset = state["epoch"], state["shard"], state["offset"]
        self.index, self.next_j = state["index"], state["next_j"]
        self.shuffle_rng = python_rng_from_state(state["shuffle_rng"])
        wanted = [tuple(identity) for identity in state["buffer"]] + [tuple(p[:2]) for p in state["pending"]]
        records = self._fetch(wanted)
        self.buffer = [records[tuple(identity)] for identity in state["buffer"]]
        for number, ordinal, j in state["pending"]:
            sample = self._decode(records[(number, ordinal)], j)  # the same sample: decoding is seeded by j
            if sample is not None:
                self._add(records[(number, ordinal)], j, sample)

    def _fetch(self, identities: list[tuple[int, int]]) -> dict[tuple[int, int], dict]:
        """Read the records with these identities again (each shard once, up to the last one wanted)."""
        by_shard: dict[int, set[int]] = {}
        for number, ordinal in identities:
            by_shard.setdefault(number, set()).add(ordinal)
        found = {}
        for number, ordinals in sorted(by_shard.items()):
            last = max(ordinals)
            for ordinal, record in enumerate(iterate_records([self.urls[number]], SkipCounter())):
                if ordinal in ordinals:
                    record["__identity__"] = (number, ordinal)
                    found[(number, ordinal)] = record
                if ordinal >= last:
                    break
            if len(ordinals - {o for n, o in found if n == number}):
                raise RuntimeError(
                    f"cannot resume the data stream: shard {self.urls[number]} no longer holds the records the "
                    "checkpoint's shuffle buffer refers to (were the shards rewritten?)"
                )
        return found


class MixedStream(torch.utils.data.IterableDataset):
    """Image batches and video batches from two training streams; each batch is a video batch with
    probability `video_ratio` (joint image/video training, SPEC §2)."""

    def __init__(self, images: TrainStream, videos: TrainStream, video_ratio: float, seed: int) -> None:
        super().__init__()
        self.images, self.videos, self.video_ratio, self.seed = images, videos, video_ratio, seed

    def __iter__(self) -> Iterator[dict]:
        return self.batches(current_slot(), None)

    def batches(self, slot: ReaderSlot, state: dict | None) -> Iterator[dict]:
        state = state or {"choice_rng": None, "images": None, "videos": None}
        rng = random.Random(f"mixed/{self.seed}/{slot.index}")
        if state["choice_rng"] is not None:
            rng = python_rng_from_state(state["choice_rng"])
        latest = {"images": state["images"], "videos": state["videos"]}
        streams = {"images": self.images.batches(slot, latest["images"]),
                   "videos": self.videos.batches(slot, latest["videos"])}  # fmt: skip
        while True:
            name = "videos" if rng.random() < self.video_ratio else "images"
            batch = next(streams[name])
            latest[name] = batch.pop("stream_state")
            batch["stream_state"] = {"choice_rng": python_rng_state(rng), **latest}
            yield batch


class UnreadableShardError(ValueError):
    """An evaluation shard cannot be read to its end (truncated, not a tar): evaluation would miss records."""


def count_records(urls: list[str]) -> int:
    """Number of records (distinct consecutive keys) in the shards, read from tar headers only where
    the shard is a local file. An unreadable shard raises `UnreadableShardError` naming it."""
    total = 0
    for url in urls:
        try:
            total += _count_shard_records(url)
        except (tarfile.TarError, OSError, EOFError) as err:
            raise UnreadableShardError(
                f"shard {url} is unreadable ({type(err).__name__}: {err}); it is truncated or not a tar file: "
                "rebuild it with tools/make_shards.py or leave it out"
            ) from err
    return total


def _count_shard_records(url: str) -> int:
    count, previous = 0, None
    opener = tarfile.open(url, "r:*") if "://" not in url and not url.startswith("pipe:") else None
    stream = opener if opener is not None else tarfile.open(fileobj=wds.gopen(url), mode="r|*")
    with stream:
        for member in stream:
            if not member.isfile():
                continue
            parts = base_plus_ext(member.name)
            if parts is None or parts[0] is None:
                continue
            if parts[0] != previous:
                count += 1
                previous = parts[0]
    return count


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
        counter = SkipCounter()
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
