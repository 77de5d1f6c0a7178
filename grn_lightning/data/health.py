"""Make skipped records visible: `data/skipped` in the logger and the progress bar."""

from __future__ import annotations

import lightning as L


class SkippedSamplesLogger(L.Callback):
    """Logs the data module's running count of skipped (corrupt / unusable) records.

    The count is summed over this rank's DataLoader workers (each batch reports its workers' new skips);
    with `sync_dist` the logged value is the total over ranks.
    """

    def __init__(self, log_every_n_steps: int = 50) -> None:
        """
        Args:
            log_every_n_steps: how often to log the counter during training.
        """
        super().__init__()
        self.log_every_n_steps = log_every_n_steps

    def _count(self, trainer: L.Trainer) -> int | None:
        datamodule = getattr(trainer, "datamodule", None)
        return getattr(datamodule, "skipped_total", None)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        count = self._count(trainer)
        if count is not None and trainer.global_step % self.log_every_n_steps == 0:
            pl_module.log("data/skipped", float(count), prog_bar=True, reduce_fx="sum", sync_dist=True)

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        count = self._count(trainer)
        if count is not None and not trainer.sanity_checking:
            pl_module.log("data/skipped_total", float(count), reduce_fx="sum", sync_dist=True)
