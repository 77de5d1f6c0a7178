"""`ThreadBudget`: a running fit takes up the CPU threads that another job has freed.

On a CPU machine shared by several trainings (tools/repro.py runs two side by side on 2 cores, one thread each),
each process fixes its thread count when it starts (OMP_NUM_THREADS). When one training ends, the other could use
its core, but would keep running on one thread to its end. This callback re-reads a small file, holding one integer
(the threads this process may use now), at the start of the fit and every `every_n_steps` training steps, and
applies it with `torch.set_num_threads`; whoever schedules the jobs rewrites the file. Without the file nothing
changes, so the callback is harmless in a run nobody schedules.
"""

from __future__ import annotations

import logging
from pathlib import Path

import lightning.pytorch as pl
import torch

log = logging.getLogger(__name__)


def write_thread_budget(path: str | Path, threads: int) -> None:
    """Write `threads` to a `ThreadBudget` file atomically (a reader never sees a half-written number)."""
    if threads < 1:
        raise ValueError(f"a thread budget must be >= 1, got {threads}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(f"{threads}\n")
    partial.replace(path)


class ThreadBudget(pl.Callback):
    """Apply the thread count written in `path` (one integer >= 1) with `torch.set_num_threads`.

    Args:
        path: the budget file (`write_thread_budget`); absent: the process keeps its threads.
        every_n_steps: re-read it every this many training steps (a read costs microseconds).
    """

    def __init__(self, path: str, every_n_steps: int = 20) -> None:
        if every_n_steps < 1:
            raise ValueError(f"ThreadBudget.every_n_steps must be >= 1, got {every_n_steps}")
        self.path, self.every = Path(path), every_n_steps
        self._refused: str | None = None

    def apply(self) -> int:
        """Read the budget and apply it; returns the threads the process uses afterwards."""
        try:
            text = self.path.read_text().strip()
        except FileNotFoundError:
            return torch.get_num_threads()
        try:
            threads = int(text)
            if threads < 1:
                raise ValueError
        except ValueError:
            if text != self._refused:  # say it once per bad value, not every few steps
                log.warning("ThreadBudget: %s holds %r, not a thread count >= 1; keeping %d thread(s)",
                            self.path, text, torch.get_num_threads())  # fmt: skip
                self._refused = text
            return torch.get_num_threads()
        if threads != torch.get_num_threads():
            log.info("ThreadBudget: %d -> %d thread(s) (%s)", torch.get_num_threads(), threads, self.path)
            torch.set_num_threads(threads)
        return threads

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.apply()

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch, batch_idx: int) -> None:
        if trainer.global_step % self.every == 0:
            self.apply()
