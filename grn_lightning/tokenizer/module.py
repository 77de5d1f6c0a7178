"""`TokenizerModule`: stage 1, training the HBQ tokenizer against a PatchGAN (SPEC §2).

One training step = one generator step and one discriminator step, in ONE backward pass:

    x̂ = tokenizer(x)
    L_G = λ_rec·rec + λ_lpips·LPIPS + λ_gan·g(D_frozen(x̂))     D_frozen: D with detached parameters
    L_D = hinge(D(x), D(stopgrad x̂))
    backward(L_G + L_D)  →  tokenizer grads come only from L_G, discriminator grads only from L_D

Why one backward: every parameter of both networks receives exactly one gradient per step, so DDP works without
``find_unused_parameters`` (two backward passes after one DDP forward leave the tokenizer unreduced in the second)
and the gradients are all-reduced once. The numbers are those of the release's two-pass scheme.

With λ_gan = 0 for the whole run (``loss.gan_weight: 0``) neither D pass runs and D is never stepped: its term would be
multiplied by 0 at every step, so the tokenizer trains exactly as with it (tests/test_tokenizer_module.py checks that).

Step counting: Lightning's manual optimisation adds 1 to ``global_step`` for every ``LightningOptimizer.step``;
with two optimisers ``max_steps`` would count both. The discriminator's optimiser is therefore stepped through
the raw torch optimiser (``opt_d.optimizer.step()``), so ``global_step`` = generator steps. This is exact for
32-bit and bf16-mixed precision (no loss scaler); fp16 ("16-mixed") is refused at setup for that reason.

DDP: some tokenizer parameters legitimately get no gradient in a step — the temporal convs of the resamplers on
image batches (T = 1), and the released no-op middle attention — and which ones changes between image and video
batches. DDP therefore needs ``find_unused_parameters=True`` (``trainer.strategy: ddp_find_unused_parameters_true``);
plain ``ddp`` is refused at setup with that message rather than failing at the second step. Parameters unused in
a step keep ``grad=None`` and are skipped by AdamW, as on one device.
"""

from __future__ import annotations

from contextlib import ExitStack
from typing import Literal

import lightning as L
import torch
from lightning.pytorch.cli import OptimizerCallable
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.strategies import DDPStrategy
from lightning.pytorch.utilities import rank_zero_info
from torch import nn
from torchmetrics import MeanMetric
from torchmetrics.functional.image import structural_similarity_index_measure

from grn_lightning.hbq import bit_balance
from grn_lightning.tokenizer.discriminator import PatchDiscriminator
from grn_lightning.tokenizer.losses import TokenizerLoss, frames_as_images
from grn_lightning.tokenizer.vae import HBQTokenizer
from grn_lightning.training.ema import EMA
from grn_lightning.training.optim import LR_DECAYS, decay_length, decay_param_groups, warmup_scheduler

__all__ = ["TokenizerModule", "default_tokenizer_optimizer"]

_EVAL_METRICS = ("psnr", "ssim", "lpips_vgg")


def default_tokenizer_optimizer(params) -> torch.optim.Optimizer:
    """The release's tokenizer optimiser (SPEC §2): AdamW, lr 1e-4, betas (0.9, 0.95), weight decay 0.01 (applied
    to ≥2-D weights only, by the param groups the module passes)."""
    return torch.optim.AdamW(params, lr=1e-4, betas=(0.9, 0.95), weight_decay=0.01)


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


class TokenizerModule(L.LightningModule):
    """Trains an :class:`HBQTokenizer` with L1 + LPIPS + PatchGAN losses, two optimisers and an EMA.

    Batches follow docs/CONTRACTS.md: ``batch["pixels"]`` float ``[B, 3, T, H, W]`` in [-1, 1] (T = 1 for images),
    so mixed image/video training (whole image batches and whole video batches) needs nothing special here.

    Args:
        tokenizer: the HBQ tokenizer (VAE + quantizer) to train.
        discriminator: PatchGAN; default ``PatchDiscriminator()`` (2D, per frame, BatchNorm).
        loss: loss weights and options; default ``TokenizerLoss("image")``.
        optimizer: generator optimiser factory (LightningCLI ``OptimizerCallable``); it receives two param groups,
            ≥2-D weights (the optimiser's ``weight_decay`` applies) and the rest (weight decay 0).
            Default: AdamW lr 1e-4, betas (0.9, 0.95), weight decay 0.01.
        disc_optimizer: discriminator optimiser factory, same convention and default.
        warmup_steps: linear LR warm-up steps of both optimisers, then constant (release: constant, 0).
        lr_decay: "none" (release: constant after the warm-up) or "cosine" (both optimisers annealed to zero at
            trainer.max_steps; short runs such as the Fashion-MNIST reproduction end several dB higher).
        grad_clip: max gradient norm of the tokenizer (release 1.0); 0 disables.
        disc_grad_clip: max gradient norm of the discriminator (release 1.0); 0 disables.
        ema_decay: decay of the tokenizer EMA (release 0.9999), used for validation/test and saved in
            checkpoints under ``"ema"``; None disables it (evaluation then uses the raw weights).
        eval_with_ema: evaluate with the EMA weights (when ``ema_decay`` is set).
        num_logged_samples: samples of the first validation/test batch of each dataloader shown in TensorBoard
            (inputs next to reconstructions); 0 disables.
        max_logged_frames: frames per clip shown in those grids (evenly spaced).
        eval_lpips: also report LPIPS-VGG in validation/test (beside PSNR and SSIM). False where its VGG trunk is
            random-initialised (`loss.random_backbone`: no weights offline), so its number would mean nothing; at
            32² on a CPU that metric is most of a test's compute (two VGG16 trunks per frame).
    """

    def __init__(
        self,
        tokenizer: HBQTokenizer,
        discriminator: PatchDiscriminator | None = None,
        loss: TokenizerLoss | None = None,
        optimizer: OptimizerCallable | None = None,
        disc_optimizer: OptimizerCallable | None = None,
        warmup_steps: int = 0,
        lr_decay: Literal["none", "cosine"] = "none",
        grad_clip: float = 1.0,
        disc_grad_clip: float = 1.0,
        ema_decay: float | None = 0.9999,
        eval_with_ema: bool = True,
        num_logged_samples: int = 4,
        max_logged_frames: int = 8,
        eval_lpips: bool = True,
    ) -> None:
        super().__init__()
        for name, value in (("warmup_steps", warmup_steps), ("num_logged_samples", num_logged_samples),
                            ("grad_clip", grad_clip), ("disc_grad_clip", disc_grad_clip)):  # fmt: skip
            if value < 0:
                raise ValueError(f"model.{name} must be >= 0, got {value}")
        if max_logged_frames < 1:
            raise ValueError(f"model.max_logged_frames must be >= 1, got {max_logged_frames}")
        if lr_decay not in LR_DECAYS:
            raise ValueError(f"model.lr_decay={lr_decay!r} is not supported; allowed values: {LR_DECAYS}")
        self.save_hyperparameters(ignore=["tokenizer", "discriminator", "loss", "optimizer", "disc_optimizer"])
        self.automatic_optimization = False  # two optimisers, one backward (module docstring)
        self.tokenizer = tokenizer
        self.discriminator = discriminator if discriminator is not None else PatchDiscriminator()
        self.loss = loss if loss is not None else TokenizerLoss("image")
        self.optimizer_factory = optimizer or default_tokenizer_optimizer
        self.disc_optimizer_factory = disc_optimizer or default_tokenizer_optimizer
        self.ema = EMA((ema_decay,)) if ema_decay is not None else None
        self._eval_stack = ExitStack()
        self.eval_metric_names = tuple(m for m in _EVAL_METRICS if eval_lpips or m != "lpips_vgg")
        # Per stage and dataloader (image / video validation sets) means over valid frames; not in checkpoints.
        self.eval_metrics = nn.ModuleDict(
            {f"{stage}{i}_{m}": MeanMetric() for stage in ("val", "test") for i in range(2) for m in self.eval_metric_names}
        )
        parts = {n: _count(m) for n, m in self.tokenizer.named_children() if _count(m)}
        self.num_tokenizer_parameters = _count(self.tokenizer)
        rank_zero_info(
            f"TokenizerModule: tokenizer {self.num_tokenizer_parameters:,} parameters "
            f"({', '.join(f'{n} {c:,}' for n, c in parts.items())}); discriminator {_count(self.discriminator):,}"
        )

    # -- optimisation ---------------------------------------------------------------------------------------
    def configure_optimizers(self):
        opt_g = self.optimizer_factory(decay_param_groups(self.tokenizer))
        opt_d = self.disc_optimizer_factory(decay_param_groups(self.discriminator))
        warmup, decay = self.hparams.warmup_steps, self.hparams.get("lr_decay", "none")
        total = decay_length(self, decay)
        return [opt_g, opt_d], [warmup_scheduler(opt_g, warmup, decay, total), warmup_scheduler(opt_d, warmup, decay, total)]

    def setup(self, stage: str) -> None:
        precision = str(getattr(self.trainer, "precision", ""))
        if precision.startswith("16"):
            raise ValueError(
                f"trainer.precision={precision!r} is not supported by TokenizerModule (the discriminator step "
                "bypasses Lightning's loss scaler); use 'bf16-mixed' or '32-true'"
            )
        strategy = self.trainer.strategy
        if stage == "fit" and isinstance(strategy, DDPStrategy) and strategy.world_size > 1:
            if not getattr(strategy, "_ddp_kwargs", {}).get("find_unused_parameters", False):
                raise ValueError(
                    "TokenizerModule under DDP needs find_unused_parameters=True (temporal convs get no gradient on "
                    "image batches); use trainer.strategy=ddp_find_unused_parameters_true"
                )

    def _last_decoder_weight(self) -> torch.Tensor:
        weights = [p for n, p in self.tokenizer.named_parameters() if p.ndim >= 2 and "decoder" in n]
        if not weights:
            raise ValueError("adaptive_gan_weight needs tokenizer parameters named '*decoder*'")
        return weights[-1]

    def _judge_frozen(self, x_hat: torch.Tensor) -> torch.Tensor:
        """D(x̂) with gradients to x̂ only (the generator's adversarial term)."""
        detached = {n: p.detach() for n, p in self.discriminator.named_parameters()}
        return torch.func.functional_call(self.discriminator, detached, (x_hat,))

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        opt_g, opt_d = self.optimizers()
        sched_g, sched_d = self.lr_schedulers()
        x = batch["pixels"]
        step = self.global_step  # generator steps completed so far
        x_hat, quant = self.tokenizer(x)
        x_hat = x_hat.float()  # losses in fp32 under bf16 autocast
        last = self._last_decoder_weight() if self.loss.use_adaptive_weight else None
        # λ_gan = 0 for the whole run (e.g. the Fashion-MNIST recipes): D can never reach the tokenizer, so neither
        # network's adversarial pass runs (8-10% of a repro tokenizer's step, docs/REPRODUCTION.md) and D stays
        # untrained.
        adversarial = self.loss.gan_weight > 0
        judged = self._judge_frozen(x_hat).float() if adversarial else None
        g_loss, g_logs = self.loss.generator_loss(x, x_hat, judged, step, last)
        d_loss, d_logs = g_loss.new_zeros(()), {}
        if adversarial:
            # Real and fake in separate calls, as in pix2pix/taming: BatchNorm sees unmixed batches.
            logits_real = self.discriminator(x).float()
            logits_fake = self.discriminator(x_hat.detach()).float()
            d_loss, d_logs = self.loss.discriminator_loss(logits_real, logits_fake, step)

        opt_g.zero_grad(set_to_none=True)
        opt_d.zero_grad(set_to_none=True)
        self.manual_backward(g_loss + d_loss)
        if self.hparams.grad_clip > 0:
            self.clip_gradients(opt_g, gradient_clip_val=self.hparams.grad_clip, gradient_clip_algorithm="norm")
        if adversarial and self.hparams.disc_grad_clip > 0:
            self.clip_gradients(opt_d, gradient_clip_val=self.hparams.disc_grad_clip, gradient_clip_algorithm="norm")
        opt_g.step()  # counted: global_step += 1
        sched_g.step()
        if adversarial:  # an unstepped D's scheduler would only warn "lr_scheduler.step() before optimizer.step()"
            opt_d.optimizer.step()  # not counted (module docstring)
            sched_d.step()
        if self.ema is not None:
            self.ema.update(self.tokenizer)

        kind = "video" if x.shape[2] > 1 else "image"
        logs = {"train/g_loss": g_loss.detach(), **{f"train/{k}": v for k, v in g_logs.items() if k != "rec"}}
        logs.update({f"train/{k}": v for k, v in d_logs.items()})
        logs[f"train/{kind}_rec"] = g_logs["rec"]
        logs["train/commitment"] = quant.commitment.detach().float()
        if quant.bits is not None:
            for i, frac in enumerate(bit_balance(quant.bits)):
                logs[f"train/bit_balance_r{i + 1}"] = frac
        logs["train/lr"] = torch.tensor(opt_g.param_groups[0]["lr"])
        self.log_dict(logs, on_step=True, on_epoch=False, batch_size=x.shape[0])
        self.log("train/rec", g_logs["rec"], prog_bar=True, on_step=True, batch_size=x.shape[0])
        return g_loss.detach()

    # -- EMA checkpointing ---------------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        if self.ema is not None:
            checkpoint["ema"] = self.ema.state_dict()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        if self.ema is not None and "ema" in checkpoint:
            self.ema.load_state_dict(checkpoint["ema"])

    # -- evaluation -----------------------------------------------------------------------------------------
    def _enter_eval_weights(self) -> None:
        if self.ema is not None and self.hparams.eval_with_ema:
            self._eval_stack.enter_context(self.ema.swap(self.tokenizer))

    def _exit_eval_weights(self) -> None:
        # Restored in *_epoch_end, i.e. before ModelCheckpoint saves in on_validation_end.
        self._eval_stack.close()

    def on_validation_epoch_start(self) -> None:
        self._enter_eval_weights()

    def on_test_epoch_start(self) -> None:
        self._enter_eval_weights()

    def _eval_step(self, stage: str, batch: dict, batch_idx: int, dataloader_idx: int) -> dict:
        x = batch["pixels"]
        valid = batch.get("valid", torch.ones(x.shape[0], dtype=torch.bool, device=x.device))
        x_hat, _ = self.tokenizer(x)
        x_hat = x_hat.float().clamp(-1, 1)
        frames_real = (frames_as_images(x).float() + 1) / 2
        frames_fake = (frames_as_images(x_hat) + 1) / 2
        mask = valid.repeat_interleave(x.shape[2])  # frames of valid rows (padding rows are ignored)
        if mask.any():
            real, fake = frames_real[mask], frames_fake[mask]
            # Metrics in fp32 whatever the trainer's precision: under bf16 autocast SSIM's Gaussian filter (a conv)
            # ran in bf16 and read 0.922 for reconstructions whose fp32 SSIM is 0.937 (PSNR is not a conv: unchanged)
            with torch.autocast(device_type=x.device.type, enabled=False):
                mse = ((fake - real) ** 2).flatten(1).mean(1).clamp_min(1e-10)
                values = {
                    "psnr": 10 * torch.log10(1.0 / mse),  # PSNR on [0, 1] per frame (SPEC §7)
                    "ssim": structural_similarity_index_measure(fake, real, data_range=1.0, reduction="none"),
                }
                if "lpips_vgg" in self.eval_metric_names:
                    values["lpips_vgg"] = self.loss.lpips_per_frame(real * 2 - 1, fake * 2 - 1)
            for name, value in values.items():
                self.eval_metrics[f"{stage}{min(dataloader_idx, 1)}_{name}"].update(value.float())
        for name in self.eval_metric_names:
            metric = self.eval_metrics[f"{stage}{min(dataloader_idx, 1)}_{name}"]
            self.log(f"{stage}/{name}", metric, on_step=False, on_epoch=True, batch_size=int(valid.sum()))
        if batch_idx == 0 and self.hparams.num_logged_samples > 0:
            self._log_reconstructions(f"{stage}/reconstructions_{dataloader_idx}", x, x_hat)
        return {"real": x, "fake": x_hat, "valid": valid}

    def validation_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> dict:
        return self._eval_step("val", batch, batch_idx, dataloader_idx)

    def test_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> dict:
        return self._eval_step("test", batch, batch_idx, dataloader_idx)

    def on_validation_epoch_end(self) -> None:
        self._exit_eval_weights()

    def on_test_epoch_end(self) -> None:
        self._exit_eval_weights()

    @torch.no_grad()
    def _log_reconstructions(self, tag: str, x: torch.Tensor, x_hat: torch.Tensor) -> None:
        """Image grid: images → row of inputs over row of reconstructions; clips → per clip a row of input
        frames over a row of reconstructed frames, and a video (`<tag>_video`: input | reconstruction per clip)."""
        if not self.trainer.is_global_zero or self.trainer.sanity_checking:
            return
        loggers = [lg for lg in self.loggers if isinstance(lg, TensorBoardLogger)]
        if not loggers:
            return
        from torchvision.utils import make_grid

        n = min(self.hparams.num_logged_samples, x.shape[0])
        t = x.shape[2]
        frames = torch.linspace(0, t - 1, min(t, self.hparams.max_logged_frames)).round().long().tolist()
        real = ((x[:n, :, frames].float() + 1) / 2).clamp(0, 1).cpu()
        fake = ((x_hat[:n, :, frames].float() + 1) / 2).clamp(0, 1).cpu()
        if t == 1:
            tiles, nrow = torch.cat([real[:, :, 0], fake[:, :, 0]]), n
        else:  # [n, 2, F, 3, H, W] → rows alternate input / reconstruction
            tiles = torch.stack([real, fake], 1).permute(0, 1, 3, 2, 4, 5).reshape(-1, *real.shape[1:2], *real.shape[3:])
            nrow = len(frames)
        grid = make_grid(tiles, nrow=nrow, padding=2)
        for logger in loggers:
            logger.experiment.add_image(tag, grid, self.global_step)
        if t > 1:  # every frame, input and reconstruction side by side; at the data's frame rate
            from grn_lightning.eval.video_summary import log_video

            pairs = torch.stack([x[:n], x_hat[:n]], 1).flatten(0, 1).transpose(1, 2)  # [2n, T, 3, H, W]
            clips = ((pairs.float() + 1) / 2).clamp(0, 1).cpu()
            data_hparams = getattr(self.trainer.datamodule, "hparams", None) or {}
            fps = float(data_hparams.get("fps", 16.0))
            for logger in loggers:
                log_video(logger.experiment, f"{tag}_video", clips, self.global_step, fps, columns=2)

