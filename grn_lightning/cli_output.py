"""What `grn` prints: no third-party advertising or known-harmless deprecation warnings, and a progress bar that
counts the steps GRN runs are driven by (issue 15, item 9).

GRN training streams are infinite (resampled shards, `max_epochs=-1`, stopped by `max_steps`), which Lightning's bar
showed as "Epoch 0/-2 ... 4/4", and after a resume as "5/1": batches of an epoch that does not exist, and an index
that restarts at 0 while the counter it is compared with does not.
"""

from __future__ import annotations

import logging
import warnings

from lightning.pytorch.callbacks import RichProgressBar

# Lightning's rank-zero info loggers carry "💡 Tip: ... try installing litlogger / litmodels" advertisements.
_TIP_LOGGERS = ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero")
# Known, harmless warnings of our dependencies (the message start, as a regex). Each says why it is harmless.
_HARMLESS_WARNINGS = (
    # lightning's pytree helper with torch >= 2.10; fixed upstream, no effect on results.
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",
    # lpips builds its VGG with torchvision's old `pretrained=` argument; weights are loaded explicitly by lpips.
    r"The parameter 'pretrained' is deprecated",
    r"Arguments other than a weight enum or `None` for 'weights' are deprecated",
    # EMA copies, frozen tokenizers and text encoders are in eval mode on purpose (models are frozen by design).
    r"Found \d+ module\(s\) in eval mode at the start of training",
    # GRN modules compute labels in on_before_batch_transfer; GRNDataModule defines only on_after_batch_transfer.
    r"You have overridden `on_before_batch_transfer` in `LightningModule` but have passed in a `LightningDataModule`",
)


class _DropTips(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("💡 Tip")


def quiet_third_party_output() -> None:
    """Install the filters (idempotent: logging and warnings keep one copy of equal filters per call site)."""
    for name in _TIP_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropTips) for f in logger.filters):
            logger.addFilter(_DropTips())
    for message in _HARMLESS_WARNINGS:
        warnings.filterwarnings("ignore", message=message)


class StepProgressBar(RichProgressBar):
    """Lightning's rich bar, counting `trainer.global_step` up to `max_steps` in step-driven runs (the counter that
    stops them; it survives a resume). Epoch-driven runs keep Lightning's epoch bar."""

    def _step_driven(self) -> bool:
        return self.trainer.max_epochs in (None, -1) and (self.trainer.max_steps or -1) > 0

    @property
    def total_train_batches(self) -> int | float:
        return self.trainer.max_steps if self._step_driven() else super().total_train_batches

    def _get_train_description(self, current_epoch: int) -> str:
        if not self._step_driven():
            return super()._get_train_description(current_epoch)
        return f"{'Step':{len(self.validation_description)}}"

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        if self._step_driven():
            self._update(self.train_progress_bar_id, trainer.global_step)
            self.refresh()

    def get_metrics(self, trainer, pl_module) -> dict:
        metrics = super().get_metrics(trainer, pl_module)
        metrics.pop("v_num", None)  # the logger version is in the log path; the bar printed it as "v_num: 0.000"
        return metrics
