"""`grn validate / test / predict --ckpt_path`: results at the checkpoint's training step, not at step 0.

Lightning restores only the weights (and callback states) for evaluation, so the loop counters stay at zero:
TensorBoard got the test metrics of a 200-step checkpoint at step 0, apart from the training curves they belong to
(issue 15). The fit loop's saved progress is restored here, so `trainer.global_step` and the logger's step are the
checkpoint's (the fit loop itself never runs in these commands).
"""

from __future__ import annotations

import lightning as L
from lightning.pytorch.callbacks import Callback


class EvaluateAtCheckpointStep(Callback):
    """Always added by `grn` (cli.py); nothing to configure."""

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        fit_state = (checkpoint.get("loops") or {}).get("fit_loop")
        if trainer.state.fn != "fit" and fit_state:
            trainer.fit_loop.load_state_dict(fit_state)
