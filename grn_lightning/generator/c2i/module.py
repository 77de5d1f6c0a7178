"""`C2IModule`: trains and samples the GRN class-to-image generator (SPEC §3, §4, §6).

    batch["tokens"] (token shards)  ─┐
    batch["pixels"] ─ frozen HBQ tokenizer ─┴▶ index labels [B,C,1,h,w] ─ layout ─▶ y [B,N,G]
    p ~ ratio distribution; F = corrupt(y, p); class dropout 10% → null class
    logits = transformer(F, class, p);  loss = CE over all elements;  EMA tracks updated after every optimiser step
    sample_images: RefinementSampler on the EMA weights → labels → tokenizer.detokenize → images in [-1, 1]

EMA tracks, parallelism (AC → compile → FSDP2), the optimiser and FSDP1 clipping come from `GeneratorModule`
(generator/module.py), shared with the T2I/T2V module. The tokenizer is NOT a submodule (frozen; outside
optimisers, checkpoints and FSDP units; see frozen_tokenizer.py).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from grn_lightning.generator import parallelize
from grn_lightning.generator.frozen_tokenizer import load_frozen_tokenizer
from grn_lightning.generator.module import GeneratorModule
from grn_lightning.generator.refinement import RatioDistribution, corrupt, ratio_bin_accuracy, refinement_loss
from grn_lightning.generator.sampling.options import build_sampler, merge_sampling
from grn_lightning.generator.token_layout import TokenLayout
from grn_lightning.generator.c2i.model import GRN_C2I, GRNC2ITransformer
from grn_lightning.hbq import VARIANTS
from grn_lightning.training.optim import scaled_lr

SAMPLE_WEIGHTS = ("ema", "ema2", "raw")


class C2IModule(GeneratorModule):
    """GRN class-to-image training and sampling.

    Args:
        size: transformer size, a key of `GRN_C2I` ("tiny", "B", "L", "H", "G"; SPEC §4).
        variant: "ind" (index labels, K = 2^M) or "bit" (bit labels, K = 2), SPEC §1.
        channels: tokenizer latent channels C (16).
        rounds: HBQ rounds M (4).
        num_classes: number of classes (1000 for ImageNet); class `num_classes` is the null class.
        grid_size: token grid side h = w (16 for 256² images with a stride-16 tokenizer).
        in_context_tokens: in-context class tokens (32).
        tokenizer: the frozen HBQ tokenizer (e.g. `grn_lightning.tokenizer.vae.HBQTokenizer`); needed for media
            batches (`pixels`), sampling to images and edits; token-shard training alone works without it.
        tokenizer_ckpt: weights for `tokenizer` (plain state dict, converted release file or a tokenizer
            LightningModule checkpoint; EMA weights preferred); None keeps the tokenizer's own weights.
        ratio_distribution: training kept-fraction distribution, "logit_normal" (release) or "uniform" (paper).
        ratio_mu: logit-normal mean (release C2I: −0.8).
        ratio_sigma: logit-normal std (release C2I: 0.8).
        label_dropout: probability of replacing the class by the null class (10%, for CFG).
        lr: learning rate; None applies the linear rule lr = base_lr · global_batch / 256.
        base_lr: learning rate per 256 samples for the rule (5e-5 → 2e-4 at batch 1024, SPEC §3).
        global_batch_size: global batch for the rule and for epoch-based warm-up; None = per-device batch of the
            data module × world size × gradient accumulation.
        betas: AdamW betas ((0.9, 0.95)).
        weight_decay: AdamW weight decay on ≥2-D weights (0 for C2I).
        warmup_steps: linear warm-up length in optimiser steps (added to `warmup_epochs`).
        warmup_epochs: linear warm-up length in epochs of `epoch_size` samples (5 in the paper).
        epoch_size: samples per epoch for `warmup_epochs` (1,281,167 for ImageNet train).
        ema_decay: decay of the EMA used for sampling (0.9999).
        ema_decay_2: decay of an optional second EMA track (release: 0.9996); None disables it.
        sample_weights: weights `sample_images` uses: "ema", "ema2" or "raw".
        sampling: default sampling arguments (steps, schedule, cfg_scale, cfg_interval, temperature,
            selection, adaptive {k, b, t_min, t_max, t0, cool_temperature}); `sample_images` overrides per call.
        accuracy_bins: number of kept-fraction bins for the logged per-bin accuracy.
        activation_checkpointing: recompute each block in backward (saves memory; `configure_model`).
        compile: torch.compile the transformer per "block", as a whole "model", or "none".
        fsdp_bf16_params: under FSDP2, gather parameters in bf16 with fp32 gradient reduction.
        fsdp_reshard_after_forward: under FSDP2, free gathered block weights after forward (ZeRO-3).
    """

    def __init__(
        self,
        size: str = "B",
        variant: str = "ind",
        channels: int = 16,
        rounds: int = 4,
        num_classes: int = 1000,
        grid_size: int = 16,
        in_context_tokens: int = 32,
        tokenizer: nn.Module | None = None,
        tokenizer_ckpt: str | None = None,
        ratio_distribution: str = "logit_normal",
        ratio_mu: float = -0.8,
        ratio_sigma: float = 0.8,
        label_dropout: float = 0.1,
        lr: float | None = None,
        base_lr: float = 5e-5,
        global_batch_size: int | None = None,
        betas: tuple[float, float] = (0.9, 0.95),
        weight_decay: float = 0.0,
        warmup_steps: int = 0,
        warmup_epochs: float = 0.0,
        epoch_size: int | None = None,
        ema_decay: float = 0.9999,
        ema_decay_2: float | None = None,
        sample_weights: str = "ema",
        sampling: dict | None = None,
        accuracy_bins: int = 10,
        activation_checkpointing: bool = False,
        compile: str = "none",
        fsdp_bf16_params: bool = True,
        fsdp_reshard_after_forward: bool = True,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["tokenizer"])
        if size not in GRN_C2I:
            raise ValueError(f"model.size={size!r} is not one of {sorted(GRN_C2I)}")
        if variant not in VARIANTS:
            raise ValueError(f"model.variant={variant!r} is not one of {VARIANTS}")
        if not 0.0 <= label_dropout < 1.0:
            raise ValueError(f"model.label_dropout must lie in [0, 1), got {label_dropout}")
        if sample_weights not in SAMPLE_WEIGHTS:
            raise ValueError(f"model.sample_weights={sample_weights!r} is not one of {SAMPLE_WEIGHTS}")
        if sample_weights == "ema2" and ema_decay_2 is None:
            raise ValueError("model.sample_weights='ema2' needs model.ema_decay_2")
        if compile not in parallelize.COMPILE_MODES:
            raise ValueError(f"model.compile={compile!r} is not one of {parallelize.COMPILE_MODES}")
        if warmup_steps < 0 or warmup_epochs < 0:
            raise ValueError("model.warmup_steps and model.warmup_epochs must be >= 0")
        if warmup_epochs > 0 and epoch_size is None:
            raise ValueError("model.warmup_epochs needs model.epoch_size (samples per epoch)")
        if accuracy_bins < 1:
            raise ValueError(f"model.accuracy_bins must be >= 1, got {accuracy_bins}")
        self.ratio = RatioDistribution(ratio_distribution, ratio_mu, ratio_sigma)
        self.sampling = merge_sampling(sampling)
        build_sampler(self.sampling)  # fail at construction on a bad sampling option
        self.num_classes = num_classes
        self.model = GRNC2ITransformer(
            size=size, variant=variant, channels=channels, rounds=rounds, num_classes=num_classes,
            grid_size=grid_size, in_context_tokens=in_context_tokens,
        )  # fmt: skip
        self.layout = TokenLayout(variant, channels, rounds)
        self._init_ema_tracks(ema_decay, ema_decay_2)
        # Held in __dict__, not _modules: no state_dict entries, no .to()/FSDP/optimiser involvement.
        object.__setattr__(self, "tokenizer", None)
        if tokenizer is not None:
            object.__setattr__(self, "tokenizer", load_frozen_tokenizer(tokenizer, tokenizer_ckpt))
        self._acc_hits = torch.zeros(accuracy_bins, dtype=torch.float64)
        self._acc_counts = torch.zeros(accuracy_bins, dtype=torch.float64)

    # -- optimisation -------------------------------------------------------------------------------------
    def global_batch_size(self) -> int:
        if self.hparams.global_batch_size is not None:
            return int(self.hparams.global_batch_size)
        trainer = self.trainer
        datamodule = getattr(trainer, "datamodule", None)
        per_device = getattr(getattr(datamodule, "hparams", None), "batch_size", None)
        if per_device is None:
            raise ValueError("set model.global_batch_size: the data module does not report its batch_size")
        return int(per_device) * trainer.world_size * trainer.accumulate_grad_batches

    def learning_rate(self) -> float:
        if self.hparams.lr is not None:
            return float(self.hparams.lr)
        return scaled_lr(self.hparams.base_lr, self.global_batch_size())

    def warmup_total_steps(self) -> int:
        hp = self.hparams
        steps = hp.warmup_steps
        if hp.warmup_epochs > 0:
            steps += math.ceil(hp.warmup_epochs * hp.epoch_size / self.global_batch_size())
        return int(steps)

    # -- labels -------------------------------------------------------------------------------------------
    @torch.no_grad()
    def index_labels(self, batch: dict) -> torch.Tensor:
        """int64 [B, C, 1, h, w] index labels from a token batch or (frozen tokenizer) a media batch."""
        if "tokens" in batch:
            return batch["tokens"].long()
        pixels = batch["pixels"]
        if pixels.shape[2] != 1:
            raise ValueError(f"C2I trains on images (T = 1), got pixels {tuple(pixels.shape)}")
        return self._require_tokenizer("training on media batches").tokenize(pixels.float())

    def model_labels(self, index_labels: torch.Tensor) -> torch.Tensor:
        """[B, C, 1, h, w] index labels → [B, N, G] labels of this variant."""
        tokens = self.layout.to_tokens(index_labels)
        if tokens.shape[1:] != (self.model.num_tokens, self.model.groups):
            raise ValueError(
                f"labels {tuple(index_labels.shape)} give tokens {tuple(tokens.shape)}, the model expects "
                f"[B, {self.model.num_tokens}, {self.model.groups}] (check channels / rounds / grid_size)"
            )
        return tokens

    def index_from_model_labels(self, tokens: torch.Tensor) -> torch.Tensor:
        """[B, N, G] labels of this variant → [B, C, 1, h, w] index labels."""
        return self.layout.to_index_labels(tokens, (1, *self.model.grid))

    # -- training -----------------------------------------------------------------------------------------
    def on_before_batch_transfer(self, batch, dataloader_idx: int):
        # Class ids are checked here, on the host, so the training step never waits on a device-to-host sync.
        if isinstance(batch, dict) and "cls" in batch and "valid" in batch:
            cls = torch.as_tensor(batch["cls"])[torch.as_tensor(batch["valid"]).bool()]
            if bool(((cls < 0) | (cls >= self.num_classes)).any()):
                raise ValueError(f"class ids must lie in [0, {self.num_classes}) for C2I, got {cls.tolist()}")
        return batch

    def _class_ids(self, batch: dict) -> torch.Tensor:
        return batch["cls"].long()

    def refinement_step(self, batch: dict, generator: torch.Generator | None = None, dropout: bool = True):
        """One corrupted forward: returns (loss, logits, labels, ratio)."""
        labels = self.model_labels(self.index_labels(batch))
        cls = self._class_ids(batch)
        b = labels.shape[0]
        if dropout and self.hparams.label_dropout > 0:
            drop = torch.rand(b, device=cls.device, generator=generator) < self.hparams.label_dropout
            cls = torch.where(drop, torch.full_like(cls, self.num_classes), cls)
        ratio = self.ratio.sample(b, device=labels.device, generator=generator)
        state, _ = corrupt(labels, ratio, self.model.classes, generator=generator)
        net = self.model if self.training else self._sampling_model()
        logits = net(state, cls, ratio)
        return refinement_loss(logits, labels), logits, labels, ratio

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss, logits, labels, ratio = self.refinement_step(batch)
        b = labels.shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=b)
        self.log("train/uniform_loss", self._uniform_loss(loss.device), batch_size=b)
        hits, counts = ratio_bin_accuracy(logits.detach(), labels, ratio, self.hparams.accuracy_bins)
        self._acc_hits = self._acc_hits.to(hits.device) + hits
        self._acc_counts = self._acc_counts.to(counts.device) + counts
        if (self.global_step + 1) % max(1, self.trainer.log_every_n_steps) == 0:
            self._flush_bin_accuracy("train")
        return loss

    def _uniform_loss(self, device: torch.device) -> torch.Tensor:
        """ln K, the loss of a uniform guess (a reference line next to train/loss), made on the device once: a Python
        float given to `self.log` becomes `torch.tensor(value, device=cuda)` every step, a blocking host-to-device
        copy that waits for the queued forward and leaves the GPU idle while the backward is launched."""
        cached = getattr(self, "_uniform_loss_cache", None)
        if cached is None or cached.device != device:
            cached = torch.tensor(math.log(self.model.classes), device=device)
            self._uniform_loss_cache = cached  # a plain tensor attribute: not a buffer, not in checkpoints
        return cached

    def _flush_bin_accuracy(self, stage: str) -> None:
        # Every rank reaches this on the same step, so the sum over ranks is a safe collective.
        stats = self.trainer.strategy.reduce(torch.stack([self._acc_hits, self._acc_counts]), reduce_op="sum")
        bins = self.hparams.accuracy_bins
        for index in range(bins):
            if stats[1, index] > 0:
                name = f"{stage}/acc_p{index / bins:.2f}-{(index + 1) / bins:.2f}"
                self.log(name, float(stats[0, index] / stats[1, index]), rank_zero_only=True)
        self._acc_hits.zero_()
        self._acc_counts.zero_()

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluation_step(batch, batch_idx, "val")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        """`grn test --ckpt_path ...`: the refinement loss of the sampling weights on the test split, logged as
        `test/loss`; a configured `GenerationMetrics` callback adds gFID / IS at the end of the test epoch."""
        self._evaluation_step(batch, batch_idx, "test")

    def _evaluation_step(self, batch: dict, batch_idx: int, stage: str) -> None:
        # A fixed generator per batch: the validation loss of the sampling weights is comparable across runs.
        # Padding rows (valid=False, cls −1) that equalise evaluation across ranks are left out of the loss. A batch
        # of padding only still runs one forward (FSDP ranks must stay in step) but logs nothing.
        valid = batch["valid"].bool()
        count = int(valid.sum())
        rows = valid if count else torch.arange(valid.shape[0], device=valid.device) == 0
        key = "tokens" if "tokens" in batch else "pixels"
        sub = {key: batch[key][rows], "cls": batch["cls"][rows].clamp(min=0)}
        generator = torch.Generator(device=self.device).manual_seed(10_000 + batch_idx)
        loss = self.refinement_step(sub, generator=generator, dropout=False)[0]
        if count:
            self.log(f"{stage}/loss", loss, batch_size=count, sync_dist=True)

    # -- sampling -----------------------------------------------------------------------------------------
    def _sampling_model(self) -> nn.Module:
        return {"ema": self.ema, "ema2": self.ema2, "raw": self.model}[self.hparams.sample_weights]

    @staticmethod
    def seeds_from(generator: torch.Generator | None, count: int) -> torch.Tensor:
        """Per-sample int64 seeds drawn from `generator` (per-sample randomness, SPEC §6 / sampling/sampler.py)."""
        return torch.randint(0, 2**62, (count,), generator=generator, device=generator.device if generator else "cpu")

    @torch.no_grad()
    def sample_labels(self, class_ids: torch.Tensor, generator: torch.Generator | None = None, **overrides):
        """Run the refinement sampler with the sampling weights; returns the sampler's result."""
        sampler = build_sampler(merge_sampling(self.sampling, overrides))
        model = self._sampling_model()
        seeds = self.seeds_from(generator, class_ids.shape[0])
        with self._autocast():
            return sampler.sample(model, class_ids.to(self.device), seeds.cpu(), lockstep=self._lockstep(model))

    @torch.no_grad()
    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        """[B, N, G] labels → images [B, 3, H, W] in [-1, 1] through the frozen tokenizer."""
        tokenizer = self._require_tokenizer("decoding samples")
        images = tokenizer.detokenize(self.index_from_model_labels(tokens).to(self.device))
        return images[:, :, 0].float().clamp(-1, 1)

    @torch.no_grad()
    def sample_images(self, class_ids: torch.Tensor, generator: torch.Generator | None = None, **overrides):
        """`GenerationMetrics` entry: images [B, 3, H, W] in [-1, 1] for `class_ids` (EMA weights)."""
        return self.decode(self.sample_labels(class_ids, generator, **overrides).labels)

    @torch.no_grad()
    def edit_images(
        self, pixels: torch.Tensor, region: torch.Tensor, class_ids: torch.Tensor,
        generator: torch.Generator | None = None, rounds: int = 1, **overrides,
    ) -> torch.Tensor:  # fmt: skip
        """Region edit ("sketch and revise", SPEC §6): encode `pixels` [B,3,1,H,W], regenerate the tokens where
        `region` (bool [B, h, w] over the token grid) is True for `class_ids`, keep the rest, decode."""
        tokens = self.model_labels(self.index_labels({"pixels": pixels}))
        mask = region.reshape(region.shape[0], -1).to(tokens.device)
        sampler = build_sampler(merge_sampling(self.sampling, overrides))
        seeds = self.seeds_from(generator, tokens.shape[0])
        with self._autocast():
            model = self._sampling_model()
            result = sampler.edit(model, tokens, mask, class_ids.to(self.device), seeds.cpu(), rounds,
                                  lockstep=self._lockstep(model))
        return self.decode(result.labels)

    def predict_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> dict:
        """Requests from `C2IPredictRequests` (predict.py): class samples or region edits; `SampleWriter` (generator/writers.py)
        writes the returned images as PNGs and a grid."""
        generator = torch.Generator(device=self.device).manual_seed(int(batch["seed"]))
        overrides = dict(batch.get("sampling") or {})
        if "pixels" in batch:
            pixels, region, rounds = batch["pixels"], batch["region"], int(batch.get("rounds", 1))
            images = self.edit_images(pixels, region, batch["class_ids"], generator, rounds, **overrides)
        else:
            images = self.sample_images(batch["class_ids"], generator, **overrides)
        return {"images": images, "names": batch["names"]}

