"""Lightning callbacks that evaluate during ``fit`` / ``validate`` / ``test`` (SPEC section 7).

The frozen feature networks are attributes of the callback, not of the LightningModule, so they never enter
checkpoints, optimisers or FSDP units; they move to the module's device the first time they are needed.
Per-batch work is local to each rank (no collective calls), so ranks with different amounts of data do not
hang; the metrics' ``compute()`` (which syncs) runs on every rank at the end of the epoch.
Every result is logged together with its protocol (``metrics_protocol.json`` in the log directory and a
TensorBoard text entry).
"""

from __future__ import annotations

from collections.abc import Mapping

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_info

from grn_lightning.eval.evaluators import GenerationEvaluator, ReconstructionEvaluator, generate_and_update
from grn_lightning.eval.features import check_lpips_net
from grn_lightning.eval.protocol import append_protocol, log_protocol_text, software_versions

__all__ = ["GenerationMetrics", "ReconstructionMetrics"]


def _log_dir(trainer: pl.Trainer) -> str:
    return trainer.log_dir or trainer.default_root_dir


def _check_positive(**values: int) -> None:
    for name, value in values.items():
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")


class _EveryNValidationRuns(pl.Callback):
    """Counts real validation runs (sanity checks excluded); active on runs N, 2N, ... The count is saved in
    the checkpoint so a resumed run keeps the same schedule."""

    def __init__(self, every_n_val_runs: int):
        _check_positive(every_n_val_runs=every_n_val_runs)
        self.every_n_val_runs = every_n_val_runs
        self._val_runs = 0

    def _start_validation_run(self, trainer: pl.Trainer) -> bool:
        if trainer.sanity_checking:
            return False
        self._val_runs += 1
        return self._val_runs % self.every_n_val_runs == 0

    def state_dict(self) -> dict:
        return {"val_runs": self._val_runs}

    def load_state_dict(self, state_dict: dict) -> None:
        self._val_runs = int(state_dict.get("val_runs", 0))

    def _record(self, trainer, pl_module, stage: str, prefix: str, results: dict, protocol: dict) -> None:
        for name, value in results.items():
            # Values are already synced by compute(): identical on every rank, no further reduction needed.
            pl_module.log(f"{stage}/{prefix}_{name}", float(value), sync_dist=False)
        entry = {
            "callback": type(self).__name__, "stage": stage, "global_step": trainer.global_step,
            "epoch": trainer.current_epoch, "world_size": trainer.world_size, "metrics": results,
            "protocol": protocol, "versions": software_versions(),
        }  # fmt: skip
        log_dir = _log_dir(trainer)  # on EVERY rank: Trainer.log_dir broadcasts, rank 0 alone would hang
        if trainer.is_global_zero:
            path = append_protocol(log_dir, entry)
            log_protocol_text(trainer, f"{stage}/{prefix}_protocol", entry)
            summary = ", ".join(f"{k}={v:.4f}" for k, v in results.items())
            rank_zero_info(f"{type(self).__name__} [{stage}] {summary} (protocol: {path})")


class ReconstructionMetrics(_EveryNValidationRuns):
    """Tokenizer metrics: PSNR, SSIM, LPIPS, rFID and (videos) rFVD on the evaluation split.

    Consumes what the LightningModule's ``validation_step`` / ``test_step`` returns:
    ``{"real": x, "fake": x_hat, "valid": bool[B]}`` with x, x_hat in [-1, 1] shaped [B, 3, T, H, W] (T = 1 for
    images); rows with valid=False are padding and are ignored. Runs on every ``every_n_val_runs``-th
    validation and on every ``test``. Logged as ``{stage}/{log_prefix}_{psnr,ssim,lpips,rfid,rfvd}`` for the first
    evaluation dataloader and ``{stage}/{log_prefix}_dl{k}_...`` for dataloader k > 0 (each set scored alone).

    Args:
        every_n_val_runs: evaluate on validation runs N, 2N, ... (sanity checks excluded).
        lpips_net: LPIPS trunk, ``alex`` (the paper's metric) or ``vgg``.
        lpips: compute LPIPS; False where no trained trunk exists (a random one's number means nothing).
        rfid: compute rFID (Inception features of inputs vs reconstructions).
        rfvd: compute rFVD (I3D) for video batches of at least 9 frames.
        inception_weights: explicit path of ``pt_inception-2015-12-05-6726825d.pth``; None resolves offline.
        i3d_weights: explicit path of ``i3d_pretrained_400.pt``; None resolves offline.
        lpips_backbone: explicit path of the torchvision trunk for LPIPS; None resolves offline.
        random_init: random feature networks of the true structure (tests without weights; numbers are not
            comparable with published ones).
        feature_batch_size: frames per feature-network call.
        log_prefix: metric name prefix.
    """

    def __init__(
        self,
        every_n_val_runs: int = 1,
        lpips_net: str = "alex",
        rfid: bool = True,
        rfvd: bool = True,
        inception_weights: str | None = None,
        i3d_weights: str | None = None,
        lpips_backbone: str | None = None,
        random_init: bool = False,
        feature_batch_size: int = 32,
        log_prefix: str = "recon",
        lpips: bool = True,
    ):
        super().__init__(every_n_val_runs)
        check_lpips_net(lpips_net)
        _check_positive(feature_batch_size=feature_batch_size)
        self.options = dict(
            lpips_net=lpips_net, rfid=rfid, rfvd=rfvd, inception_weights=inception_weights, i3d_weights=i3d_weights,
            lpips_backbone=lpips_backbone, random_init=random_init, feature_batch_size=feature_batch_size, lpips=lpips,
        )  # fmt: skip
        self.log_prefix = log_prefix
        self._networks: ReconstructionEvaluator | None = None
        self._evaluators: list[ReconstructionEvaluator] = []  # one metric set per evaluation dataloader

    def _start(self, pl_module: pl.LightningModule, num_batches: list) -> None:
        if self._networks is None:  # built lazily: no weight loading when the callback is only configured
            self._networks = ReconstructionEvaluator(**self.options)
        self._networks.to(pl_module.device)
        # Separate metrics per dataloader (e.g. the image and the video validation sets of the joint
        # tokenizer): an rFID over image inputs mixed with video frames would describe neither set.
        count = max(1, len(num_batches))
        self._evaluators = [self._networks] + [self._networks.with_fresh_metrics() for _ in range(count - 1)]
        for evaluator in self._evaluators:
            evaluator.to(pl_module.device).reset()

    def _consume(self, outputs, dataloader_idx: int) -> None:
        if not self._evaluators:
            return
        if not isinstance(outputs, Mapping) or "real" not in outputs or "fake" not in outputs:
            raise TypeError(
                "ReconstructionMetrics needs validation_step/test_step to return "
                "{'real': x, 'fake': x_hat, 'valid': bool[B]}, got " + type(outputs).__name__
            )
        self._evaluators[dataloader_idx].update(outputs["real"], outputs["fake"], outputs.get("valid"))

    def _finish(self, trainer, pl_module, stage: str) -> None:
        evaluators, self._evaluators = self._evaluators, []
        for index, evaluator in enumerate(evaluators):  # same order on every rank: compute() syncs
            prefix = self.log_prefix if index == 0 else f"{self.log_prefix}_dl{index}"
            self._record(trainer, pl_module, stage, prefix, evaluator.compute(), evaluator.protocol())
            evaluator.reset()

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        if self._start_validation_run(trainer):
            self._start(pl_module, trainer.num_val_batches)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._consume(outputs, dataloader_idx)

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        self._finish(trainer, pl_module, "val")

    def on_test_epoch_start(self, trainer, pl_module) -> None:
        self._start(pl_module, trainer.num_test_batches)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._consume(outputs, dataloader_idx)

    def on_test_epoch_end(self, trainer, pl_module) -> None:
        self._finish(trainer, pl_module, "test")


class GenerationMetrics(_EveryNValidationRuns):
    """Class-to-image generation metrics: gFID against reference statistics and Inception Score.

    Generates ``num_samples`` images, exactly ``num_samples / num_classes`` per class, in batches dealt out to ranks,
    by calling ``pl_module.sample_images(class_ids, generator=..., **sampling)`` (the module applies its EMA
    weights) and reading ``pl_module.num_classes``. Logs ``{stage}/{log_prefix}_{gfid,is,is_std}`` and a grid of
    the first samples to TensorBoard. Runs after every ``every_n_val_runs``-th validation and on ``test``.

    Args:
        num_samples: total samples (50,000 for the ImageNet protocol, SPEC section 7).
        batch_size: samples per ``sample_images`` call on each rank.
        reference_stats: ``.npz`` with ``mu``/``sigma`` (ImageNet-256 reference); None logs IS only.
        sampling: keyword overrides passed to ``sample_images`` (cfg scale, temperature, steps, ...).
        every_n_val_runs: evaluate on validation runs N, 2N, ... (sanity checks excluded).
        seed: base seed of the sampling generators (one per global batch: seed + 1_000_003 * batch number, so the
            samples and the metrics are the same on any number of ranks for a fixed batch_size).
        is_splits: Inception Score splits.
        inception_weights: explicit path of ``pt_inception-2015-12-05-6726825d.pth``; None resolves offline.
        random_init: random Inception of the true structure (tests; numbers not comparable).
        grid_size: number of samples in the TensorBoard grid (0 disables it).
        save_dir: also write every sample as PNG here (``{global_index:06d}.png``).
        run_on_test: also evaluate at the end of ``trainer.test``.
        show_progress: progress bar on rank 0 while generating.
        log_prefix: metric name prefix.
    """

    def __init__(
        self,
        num_samples: int = 50000,
        batch_size: int = 50,
        reference_stats: str | None = None,
        sampling: dict | None = None,
        every_n_val_runs: int = 1,
        seed: int = 0,
        is_splits: int = 10,
        inception_weights: str | None = None,
        random_init: bool = False,
        grid_size: int = 16,
        save_dir: str | None = None,
        run_on_test: bool = True,
        show_progress: bool = True,
        log_prefix: str = "gen",
    ):
        super().__init__(every_n_val_runs)
        _check_positive(num_samples=num_samples, batch_size=batch_size, is_splits=is_splits)
        if is_splits > num_samples:
            raise ValueError(f"is_splits={is_splits} cannot exceed num_samples={num_samples}")
        if reference_stats is not None:
            from grn_lightning.eval.metrics import load_reference_stats

            load_reference_stats(reference_stats)  # fail at construction, not after an hour of sampling
        self.num_samples, self.batch_size, self.seed = num_samples, batch_size, seed
        self.reference_stats, self.sampling = reference_stats, dict(sampling or {})
        self.is_splits, self.inception_weights, self.random_init = is_splits, inception_weights, random_init
        self.grid_size, self.save_dir, self.run_on_test = grid_size, save_dir, run_on_test
        self.show_progress, self.log_prefix = show_progress, log_prefix
        self._evaluator: GenerationEvaluator | None = None

    def _evaluate(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        for needed in ("sample_images", "num_classes"):
            if not hasattr(pl_module, needed):
                raise AttributeError(f"GenerationMetrics needs pl_module.{needed} ({type(pl_module).__name__} lacks it)")
        if self._evaluator is None:
            self._evaluator = GenerationEvaluator(
                self.reference_stats, self.inception_weights, self.random_init, self.is_splits
            )
        self._evaluator.to(pl_module.device).reset()
        was_training = pl_module.training
        pl_module.eval()
        with torch.no_grad():
            grid = generate_and_update(
                pl_module.sample_images, self._evaluator, self.num_samples, int(pl_module.num_classes),
                self.batch_size, pl_module.device, trainer.global_rank, trainer.world_size, self.seed,
                self.sampling, self.save_dir, keep=self.grid_size if trainer.is_global_zero else 0,
                progress=self.show_progress and trainer.is_global_zero,
            )  # fmt: skip
        pl_module.train(was_training)
        results = self._evaluator.compute()
        protocol = {
            "num_samples": self.num_samples, "per_class": self.num_samples // int(pl_module.num_classes),
            "num_classes": int(pl_module.num_classes), "batch_size_per_rank": self.batch_size, "seed": self.seed,
            "sampling": self.sampling, "ema": "sample_images applies the module's EMA weights",
            "png_dir": self.save_dir, **self._evaluator.protocol(),
        }  # fmt: skip
        self._record(trainer, pl_module, stage, self.log_prefix, results, protocol)
        if trainer.is_global_zero and grid.numel():
            self._log_grid(trainer, f"{stage}/{self.log_prefix}_samples", grid)

    @staticmethod
    def _log_grid(trainer: pl.Trainer, tag: str, images: torch.Tensor) -> None:
        from torchvision.utils import make_grid

        grid = make_grid((images.clamp(-1, 1) + 1) / 2, nrow=max(1, int(images.shape[0] ** 0.5)))
        for logger in trainer.loggers:
            experiment = getattr(logger, "experiment", None)
            if hasattr(experiment, "add_image"):
                experiment.add_image(tag, grid, global_step=trainer.global_step)

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if self._start_validation_run(trainer):
            self._evaluate(trainer, pl_module, "val")

    def on_test_epoch_end(self, trainer, pl_module) -> None:
        if self.run_on_test:
            self._evaluate(trainer, pl_module, "test")
