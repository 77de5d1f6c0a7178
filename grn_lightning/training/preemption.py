"""`last.ckpt` holds the step where training stopped: at a preemption signal (`PreemptionCheckpoint`) and at the
normal end of a fit (`FinalCheckpoint`).

Preemption: SIGTERM or SIGUSR1 saves `last.ckpt` at the next step boundary, then the run stops cleanly.

Lightning already turns SIGTERM into a stop at the next step boundary (it raises `SIGTERMException`, a SystemExit,
after the current batch; with several ranks, rank 0's flag is broadcast so every rank stops at the same step), but
it saves nothing: a job killed by `timeout`, a scheduler or a spot-instance notice lost every step since the last
periodic checkpoint (issue 15: 95 of 200 steps). This callback saves the checkpoint at that stop, where
`grn fit --ckpt_path last` finds it (training/resume.py).

SIGUSR1 (the usual "about to be preempted" notice) takes the same path. Under SLURM with Lightning's
`SLURMEnvironment(auto_requeue=True)` (the default when SLURM runs the job), SIGUSR1 is left to Lightning, which
saves an `hpc_ckpt_*.ckpt` and requeues the job; `--ckpt_path last` finds that file too.

End of fit: a `ModelCheckpoint(every_n_train_steps=N, save_last=True)` saves only at multiples of N (and Lightning's
own end-of-training save only runs when it never saved), so a fit whose `max_steps` is no multiple of N left a
`last.ckpt` up to N − 1 steps behind the trained model, and `grn test --ckpt_path .../last.ckpt` evaluated that older
model (found by a GPU run of `make repro`: 2,500-step tokenizers tested at step 2,400).
"""

from __future__ import annotations

import signal
import threading
from pathlib import Path

import lightning as L
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.exceptions import SIGTERMException


def _last_in_folder(callback: ModelCheckpoint) -> Path:
    return Path(callback.dirpath) / f"{callback.CHECKPOINT_NAME_LAST}{callback.FILE_EXTENSION}"


def preemption_checkpoint_path(trainer: L.Trainer) -> Path:
    """`last.ckpt` in the first ModelCheckpoint's folder, else `<default_root_dir>/checkpoints/last.ckpt` (both are
    searched by `--ckpt_path last`)."""
    for callback in trainer.checkpoint_callbacks:
        if isinstance(callback, ModelCheckpoint) and callback.dirpath:
            return _last_in_folder(callback)
    return Path(trainer.default_root_dir) / "checkpoints" / "last.ckpt"


class PreemptionCheckpoint(Callback):
    """Always added by `grn` (cli.py); nothing to configure."""

    def __init__(self) -> None:
        self._previous_sigusr1 = None
        self._installed = False

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        environment = getattr(trainer.strategy, "cluster_environment", None)
        slurm_requeue = isinstance(environment, SLURMEnvironment) and environment.auto_requeue
        if stage != "fit" or slurm_requeue or threading.current_thread() is not threading.main_thread():
            return
        self._previous_sigusr1 = signal.signal(signal.SIGUSR1, self._forward_to_sigterm_handler)
        self._installed = True

    @staticmethod
    def _forward_to_sigterm_handler(signum: int, frame) -> None:
        # Lightning's SIGTERM handler (installed when fit starts) sets the flag that stops the run at the next step
        # boundary and, with several ranks, tells every rank; SIGUSR1 reuses it instead of a second mechanism.
        handler = signal.getsignal(signal.SIGTERM)
        if callable(handler):
            handler(signum, frame)

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self._installed:
            signal.signal(signal.SIGUSR1, self._previous_sigusr1 or signal.SIG_DFL)
            self._installed = False

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        # fn, not trainer.training: a signal during fit's validation also ends in SIGTERMException.
        if not isinstance(exception, SIGTERMException) or trainer.state.fn != "fit" or trainer.sanity_checking:
            return
        path = preemption_checkpoint_path(trainer)
        trainer.save_checkpoint(path, weights_only=False)  # every rank calls it: sharded checkpoints are written by all ranks
        rank_zero_info(
            f"Stopped by a termination signal after step {trainer.global_step}: saved {path}. "
            "Continue with `grn fit ... --ckpt_path last`."
        )


class FinalCheckpoint(Callback):
    """Always added by `grn` (cli.py): when a fit ends normally, every `ModelCheckpoint` with `save_last` whose last save
    is older than the final step rewrites its `last.ckpt` at the final step."""

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or trainer.fast_dev_run:
            return
        for callback in trainer.checkpoint_callbacks:
            if not isinstance(callback, ModelCheckpoint) or not callback.save_last or not callback.dirpath:
                continue
            # the step of its last save: Lightning keeps it in a private field (no public equivalent in 2.x)
            if getattr(callback, "_last_global_step_saved", -1) == trainer.global_step:
                continue
            path = Path(callback.last_model_path or _last_in_folder(callback))
            trainer.save_checkpoint(path, weights_only=callback.save_weights_only)  # every rank: sharded states
            callback.last_model_path = str(path)
            rank_zero_info(f"Saved {path} at the final step {trainer.global_step}")
