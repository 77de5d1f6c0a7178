"""Exact resume of the training data stream: where every reader stands, and every random generator's state.

Each training batch carries `stream_state`, the state of the reader (one per rank x DataLoader worker) that
made it, taken right after the batch was made: the shard order position, the shuffle buffer (as record
identities), the shuffle generator, the partly filled batches, and the worker's global generators. The data
module keeps the state of the last batch each reader delivered *to a training step* (prefetched batches do not
count), so a checkpoint holds exactly the position after the last step it covers. DataLoader workers are served
round-robin, so on resume the reader that would have made the next batch becomes worker 0.

States hold only ints, strings and lists, so checkpoints load with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterator

import numpy as np
import torch

from grn_lightning.data.splits import ReaderSlot, current_slot, rank_and_world

log = logging.getLogger(__name__)


def _python_state(rng: random.Random | None = None) -> list:
    version, internal, gauss = (rng or random).getstate()
    return [version, list(internal), gauss]


def _set_python_state(state: list, rng: random.Random | None = None) -> None:
    (rng or random).setstate((state[0], tuple(state[1]), state[2]))


def capture_rng_states(device: bool) -> dict:
    """Python, NumPy and torch CPU generators of this process (and the CUDA ones when `device` and in use)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    states = {
        "python": _python_state(),
        "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state().tolist(),
    }
    if device and torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = [state.tolist() for state in torch.cuda.get_rng_state_all()]
    return states


def restore_rng_states(states: dict) -> None:
    _set_python_state(states["python"])
    kind, keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(torch.tensor(states["torch"], dtype=torch.uint8))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in states["cuda"]])


def python_rng_state(rng: random.Random) -> list:
    return _python_state(rng)


def python_rng_from_state(state: list) -> random.Random:
    rng = random.Random()
    _set_python_state(state, rng)
    return rng


class ResumableStream(torch.utils.data.IterableDataset):
    """Wraps a training stream (`TrainStream` or `MixedStream`, each with `batches(slot, state)`): gives each
    DataLoader worker its reader (rotated so the reader due next starts), resumes it from `plan`, stamps
    every batch with the reader's state and restores the worker's global generators.

    plan: {"first_worker": w, "readers": {reader index: state}} from `StreamTracker.resume_plan`, or None.
    """

    def __init__(self, stream: torch.utils.data.IterableDataset, plan: dict | None = None) -> None:
        super().__init__()
        self.stream, self.plan = stream, plan or {"first_worker": 0, "readers": {}}

    def __iter__(self) -> Iterator[dict]:
        slot = current_slot()
        worker = (slot.worker + self.plan["first_worker"]) % slot.num_workers
        slot = ReaderSlot(slot.rank, slot.world_size, worker, slot.num_workers)
        saved = self.plan["readers"].get(slot.index)
        in_worker = torch.utils.data.get_worker_info() is not None
        if saved is not None and in_worker and saved.get("worker_rng"):
            restore_rng_states(saved["worker_rng"])  # nothing below draws from them while the stream fast-forwards
        for batch in self.stream.batches(slot, None if saved is None else saved["stream"]):
            batch["stream_state"] = {
                "reader": slot.index,
                "worker": slot.worker,
                "stream": batch.pop("stream_state"),
                # the main process's generators are the trainer's, saved by the data module instead
                "worker_rng": capture_rng_states(device=False) if in_worker else None,
            }
            yield batch


class StreamTracker:
    """Main-process side: the state of the last batch each reader delivered to a training step."""

    def __init__(self) -> None:
        self.readers: dict[int, dict] = {}
        self.last_worker: int | None = None

    def consumed(self, stream_state: dict) -> None:
        self.readers[stream_state["reader"]] = stream_state
        self.last_worker = stream_state["worker"]

    def local_state(self, num_workers: int) -> dict:
        return {"num_workers": num_workers, "last_worker": self.last_worker,
                "readers": [self.readers[k] for k in sorted(self.readers)]}  # fmt: skip

    def resume_plan(self, saved: dict | None, num_workers: int) -> dict | None:
        """The plan for `ResumableStream` from this rank's saved state, or None (fresh streams, with the reason
        logged) when the saved state does not match this run's readers."""
        if not saved or not saved["readers"]:
            return None
        if saved["num_workers"] != num_workers:
            log.warning(
                "data: the checkpoint's stream was read by %d DataLoader worker(s) per rank, this run uses %d; "
                "the training stream restarts from its beginning (set data.num_workers=%d to resume it exactly)",
                saved["num_workers"], num_workers, saved["num_workers"],
            )
            return None
        readers = {state["reader"]: state for state in saved["readers"]}
        self.readers, self.last_worker = dict(readers), saved["last_worker"]
        workers = max(num_workers, 1)
        first = 0 if saved["last_worker"] is None else (saved["last_worker"] + 1) % workers
        return {"first_worker": first, "readers": readers}


def gather_per_rank(local: dict) -> list[dict]:
    """Every rank's `local` (rank order); a collective, called on all ranks at once when distributed."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        gathered: list = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(gathered, local)
        return gathered
    return [local]


def this_ranks(per_rank: list[dict], what: str) -> dict | None:
    """This rank's entry of a per-rank list saved by `gather_per_rank`, or None (logged) if the world changed."""
    rank, world = rank_and_world()
    if len(per_rank) != world:
        log.warning("data: the checkpoint's %s was saved by %d rank(s), this run has %d; it is not restored",
                    what, len(per_rank), world)  # fmt: skip
        return None
    return per_rank[rank]
