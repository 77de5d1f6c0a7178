"""`C2IModule`: trains and samples the GRN class-to-image generator (SPEC §3, §4, §6).

    batch["tokens"] (token shards)  ─┐
    batch["pixels"] ─ frozen HBQ tokenizer ─┴▶ index labels [B,C,1,h,w] ─ layout ─▶ y [B,N,G]
    p ~ ratio distribution; F = corrupt(y, p); class dropout 10% → null class
    logits = transformer(F, class, p);  loss = CE over all elements;  EMA tracks updated after every optimiser step
    sample_images: RefinementSampler on the EMA weights → labels → tokenizer.detokenize → images in [-1, 1]

The EMA tracks are frozen copies of the transformer registered as submodules (`ema`, `ema2`): they are sharded
exactly like the trained model under FSDP2 (so the update is a local foreach lerp on matching shards), saved in
full or sharded checkpoints by the strategy without extra code, and called directly for sampling. The tokenizer is
NOT a submodule (frozen; outside optimisers, checkpoints and FSDP units; see frozen_tokenizer.py).
"""

from __future__ import annotations

import contextlib
import copy
import math

import lightning as L
import torch
from torch import nn

from grn_lightning.generator import parallelize
from grn_lightning.generator.frozen_tokenizer import load_frozen_tokenizer
from grn_lightning.generator.lockstep import distributed_lockstep
from grn_lightning.generator.refinement import RatioDistribution, corrupt, ratio_bin_accuracy, refinement_loss
from grn_lightning.generator.sampling_options import build_sampler, merge_sampling
from grn_lightning.generator.token_layout import TokenLayout
from grn_lightning.generator.transformer import GRN_C2I, VARIANTS, GRNC2ITransformer
from grn_lightning.training.optim import decay_param_groups, scaled_lr, warmup_constant_scheduler

SAMPLE_WEIGHTS = ("ema", "ema2", "raw")


class C2IModule(L.LightningModule):
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
        for name, decay in (("ema_decay", ema_decay), ("ema_decay_2", ema_decay_2)):
            if decay is not None and not 0.0 <= decay < 1.0:
                raise ValueError(f"model.{name} must lie in [0, 1), got {decay}")
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
        self.ema = self._frozen_copy(self.model)
        self.ema2 = self._frozen_copy(self.model) if ema_decay_2 is not None else None
        # Held in __dict__, not _modules: no state_dict entries, no .to()/FSDP/optimiser involvement.
        object.__setattr__(self, "tokenizer", None)
        if tokenizer is not None:
            object.__setattr__(self, "tokenizer", load_frozen_tokenizer(tokenizer, tokenizer_ckpt))
        self._acc_hits = torch.zeros(accuracy_bins, dtype=torch.float64)
        self._acc_counts = torch.zeros(accuracy_bins, dtype=torch.float64)

    @staticmethod
    def _frozen_copy(model: nn.Module) -> nn.Module:
        ema = copy.deepcopy(model)
        for p in ema.parameters():
            p.requires_grad_(False)
        return ema.eval()

    def _ema_tracks(self) -> list[tuple[nn.Module, float]]:
        tracks = [(self.ema, self.hparams.ema_decay)]
        if self.ema2 is not None:
            tracks.append((self.ema2, self.hparams.ema_decay_2))
        return tracks

    # -- scale: AC → compile → FSDP2 (parallelize.py) ------------------------------------------------------
    def configure_model(self) -> None:
        # Lightning calls this hook at the start of every fit/validate/test/predict: wrap only once.
        if getattr(self, "_parallelized", False) or parallelize.is_sharded(self.model):
            return
        self._parallelized = True
        hp = self.hparams
        if hp.activation_checkpointing:
            parallelize.apply_activation_checkpointing(self.model)
        if hp.compile != "none":
            for net in (self.model, *[m for m, _ in self._ema_tracks()]):
                parallelize.apply_compile(net, hp.compile)
        mesh = self._device_mesh
        if mesh is not None:
            dp_mesh = parallelize.data_parallel_mesh(mesh)
            for net in (self.model, *[m for m, _ in self._ema_tracks()]):
                parallelize.apply_fully_shard(net, dp_mesh, hp.fsdp_bf16_params, hp.fsdp_reshard_after_forward)

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

    def configure_optimizers(self):
        hp = self.hparams
        groups = decay_param_groups(self.model, hp.weight_decay)
        for group in groups:
            group.pop("names", None)
        # Fused AdamW on plain CUDA tensors; the foreach implementation for FSDP2's DTensors.
        fused = {"fused": True} if self.device.type == "cuda" and not parallelize.is_sharded(self.model) else {}
        optimizer = torch.optim.AdamW(groups, lr=self.learning_rate(), betas=tuple(hp.betas), **fused)
        # A fused AdamW announces that it unscales AMP gradients itself, and Lightning then refuses gradient
        # clipping (the recipe clips at 0.1). Unset, a GradScaler (fp16 only; bf16 has none) unscales before the
        # step as for any optimiser, so clipping sees true gradients and the fused kernel still does the update.
        optimizer._step_supports_amp_scaling = False
        scheduler = warmup_constant_scheduler(optimizer, self.warmup_total_steps())
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        # Lightning's FSDPPrecision (FSDPStrategy, FSDP1) refuses norm clipping ("not supported for FSDPPrecision"):
        # the norm of flat, sharded gradients needs the collective `clip_grad_norm_` of the ROOT FSDP wrapper.
        # DDP, one device and FSDP2 (DTensor gradients) go through Lightning's own clipping unchanged.
        root = self.trainer.strategy.model
        if gradient_clip_val and gradient_clip_algorithm in (None, "norm") and parallelize.is_fsdp1_wrapped(root):
            root.clip_grad_norm_(gradient_clip_val)
            return
        self.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)

    def optimizer_step(self, *args, **kwargs) -> None:
        super().optimizer_step(*args, **kwargs)
        self.update_ema()

    @torch.no_grad()
    def update_ema(self) -> None:
        """ema ← decay·ema + (1 − decay)·model on each rank's local shards (sharded alike, see module doc)."""
        params = [_local(p) for p in self.model.parameters()]
        for ema, decay in self._ema_tracks():
            torch._foreach_lerp_([_local(p) for p in ema.parameters()], params, 1.0 - decay)

    # -- labels -------------------------------------------------------------------------------------------
    def _require_tokenizer(self, why: str) -> nn.Module:
        if self.tokenizer is None:
            raise ValueError(f"{why} needs model.tokenizer (an HBQ tokenizer; see configs/c2i_grn_b.yaml)")
        tokenizer = self.tokenizer
        first = next(tokenizer.parameters(), None)
        if first is not None and first.device != self.device:
            tokenizer.to(self.device)
        return tokenizer

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

    def _autocast(self):
        """bf16 autocast for sampling when the trainer runs bf16 (callbacks call us outside Lightning's own
        autocast); otherwise leave the caller's autocast state alone (a disabled autocast would override it)."""
        precision = str(getattr(getattr(self, "_trainer", None), "precision", "32"))
        if "bf16" in precision:
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    @staticmethod
    def seeds_from(generator: torch.Generator | None, count: int) -> torch.Tensor:
        """Per-sample int64 seeds drawn from `generator` (per-sample randomness, SPEC §6 / sampler.py)."""
        return torch.randint(0, 2**62, (count,), generator=generator, device=generator.device if generator else "cpu")

    @torch.no_grad()
    def sample_labels(self, class_ids: torch.Tensor, generator: torch.Generator | None = None, **overrides):
        """Run the refinement sampler with the sampling weights; returns the sampler's result."""
        sampler = build_sampler(merge_sampling(self.sampling, overrides))
        model = self._sampling_model()
        seeds = self.seeds_from(generator, class_ids.shape[0])
        with self._autocast():
            return sampler.sample(model, class_ids.to(self.device), seeds.cpu(), lockstep=self._lockstep(model))

    def _lockstep(self, model: nn.Module):
        """Sharded sampling on several ranks: every FSDP2 / FSDP1 forward is a collective, but entropy-guided step counts
        (and request counts) differ per rank, so a finished rank keeps making dummy forwards until all are done
        (lockstep.py). None when the model is not sharded or the run is not distributed."""
        if not (parallelize.is_sharded(model) or parallelize.is_fsdp1_wrapped(model)):
            return None
        backend = torch.distributed.get_backend() if _world_size() > 1 else "gloo"
        return distributed_lockstep(self.device if backend == "nccl" else "cpu")

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
        """Requests from `C2IPredictRequests` (predict.py): class samples or region edits; `C2ISampleWriter`
        writes the returned images as PNGs and a grid."""
        generator = torch.Generator(device=self.device).manual_seed(int(batch["seed"]))
        overrides = dict(batch.get("sampling") or {})
        if "pixels" in batch:
            pixels, region, rounds = batch["pixels"], batch["region"], int(batch.get("rounds", 1))
            images = self.edit_images(pixels, region, batch["class_ids"], generator, rounds, **overrides)
        else:
            images = self.sample_images(batch["class_ids"], generator, **overrides)
        return {"images": images, "names": batch["names"]}


def _world_size() -> int:
    dist = torch.distributed
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _local(t: torch.Tensor) -> torch.Tensor:
    """Rank-local shard of an FSDP2 DTensor parameter (in-place ops on it update the parameter)."""
    t = t.data if isinstance(t, nn.Parameter) else t
    return t.to_local() if hasattr(t, "to_local") else t
