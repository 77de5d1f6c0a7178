"""Test helper loaded by `grn fit` subprocesses (tests/test_data_resume.py): SIGKILL the process itself at the
start of the first training step after a checkpoint was saved, i.e. mid-run, as a preempted job dies."""

from __future__ import annotations

import os
import signal

import lightning as L


class KillAfterCheckpoint(L.Callback):
    def __init__(self) -> None:
        super().__init__()
        self.saved = False

    def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        self.saved = True

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.saved:
            os.kill(os.getpid(), signal.SIGKILL)
