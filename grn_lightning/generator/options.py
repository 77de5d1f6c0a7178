"""Grouped, typed settings of the generator LightningModules (C2I: c2i/module.py, T2I/T2V/I2V: t2x/module.py).

The transformer, the tokenizer and the sampler are injected as objects (`class_path` / `init_args` in configs); what
is left is grouped here, one dataclass per concern, in the manner of litgpt's `TrainArgs`, so a config reads

    model:
      class_path: grn_lightning.generator.c2i.module.C2IModule
      init_args:
        transformer: {class_path: ...GRNC2ITransformer, init_args: {size: B, ...}}
        sampler:     {class_path: ...RefinementSampler, init_args: {cfg_scale: 2.4, ...}}
        corruption:  {ratio_mu: -0.8, ...}
        optimization: {base_lr: 5.0e-05, global_batch_size: 1024, ...}
        ema:         {decay: 0.9999, decay_2: 0.9996}
        parallelism: {compile: block}

Every field is typed and documented, so `grn fit --help` and `--print_config` list them. Values are checked in
`__post_init__`: a wrong value fails at construction naming the option and what is allowed.

Also here: `check_tokenizer_geometry` (the tokenizer is the one source of C and M; a transformer that states other
values is refused at construction) and `portable_hparams` (checkpoints keep plain hyper-parameters that both
`load_from_checkpoint` and `grn test/predict --ckpt_path` can rebuild the module from).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Literal

from torch import nn

from grn_lightning.generator import parallelize
from grn_lightning.training.optim import LR_DECAYS, scaled_lr

SAMPLE_WEIGHTS = ("ema", "ema2", "raw")


def _fail_unless(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


@dataclass(frozen=True)
class Corruption:
    """Training corruption of the refinement objective (SPEC §3): the kept fraction p and condition dropout.

    Args:
        ratio_distribution: distribution of p, "logit_normal" (release) or "uniform" (paper).
        ratio_mu: logit-normal mean (release C2I −0.8, T2I/T2V −1.3).
        ratio_sigma: logit-normal std (release C2I 0.8, T2I/T2V 1.3).
        condition_dropout: probability of training a sample on the null condition, for CFG (C2I: the null class,
            T2X: the empty caption; 10%).
        video_ratio_mu: T2X only: the logit-normal mean for clip samples (T2V and I2V); None: `ratio_mu`, as the
            release (one distribution for every sample).
        video_ratio_sigma: T2X only: the logit-normal std for clip samples; None: `ratio_sigma`.
    """

    ratio_distribution: Literal["logit_normal", "uniform"] = "logit_normal"
    ratio_mu: float = -0.8
    ratio_sigma: float = 0.8
    condition_dropout: float = 0.1
    video_ratio_mu: float | None = None
    video_ratio_sigma: float | None = None

    def __post_init__(self) -> None:
        value = self.condition_dropout
        _fail_unless(0.0 <= value < 1.0, f"model.corruption.condition_dropout must lie in [0, 1), got {value}")
        _fail_unless(
            not self.has_video_ratio or self.ratio_distribution == "logit_normal",
            "model.corruption.video_ratio_mu / video_ratio_sigma shape a logit-normal kept fraction: set "
            "ratio_distribution to logit_normal or leave them null",
        )

    @property
    def has_video_ratio(self) -> bool:
        """Whether clip samples have a kept-fraction distribution of their own (either video_ratio_* set)."""
        return self.video_ratio_mu is not None or self.video_ratio_sigma is not None

    @property
    def video_ratio_parameters(self) -> tuple[float, float]:
        """(mu, sigma) of the clip samples' logit-normal kept fraction."""
        mu, sigma = self.video_ratio_mu, self.video_ratio_sigma
        return (self.ratio_mu if mu is None else mu, self.ratio_sigma if sigma is None else sigma)


@dataclass(frozen=True)
class Optimization:
    """AdamW over decay / no-decay groups with a linear warm-up, then a constant learning rate (SPEC §3).

    Args:
        lr: learning rate; None applies the linear rule lr = base_lr · global_batch_size / 256 (C2I).
        base_lr: learning rate per 256 samples for the rule (5e-5 → 2e-4 at a global batch of 1024).
        global_batch_size: samples per optimiser step over all devices. The one place this number lives: the module
            gives the data module its per-device share (global / (devices × accumulation)); the LR rule and the
            epoch-based warm-up use it. None: the data module's own `batch_size` decides (then `lr` must be set and
            `warmup_epochs` 0).
        betas: AdamW betas (C2I (0.9, 0.95); T2X (0.9, 0.999)).
        weight_decay: AdamW weight decay on ≥2-D weights (C2I 0; T2X release 0.01).
        warmup_steps: linear warm-up length in optimiser steps (added to `warmup_epochs`).
        warmup_epochs: linear warm-up length in epochs of `epoch_size` samples (C2I: 5 in the paper).
        epoch_size: samples per epoch for `warmup_epochs` (1,281,167 for ImageNet train).
        lr_decay: "none" (the paper: constant after the warm-up) or "cosine" (annealed to zero at trainer.max_steps;
            for short runs such as the Fashion-MNIST reproduction).
    """

    lr: float | None = None
    base_lr: float = 5e-5
    global_batch_size: int | None = None
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = 0.0
    warmup_steps: int = 0
    warmup_epochs: float = 0.0
    epoch_size: int | None = None
    lr_decay: Literal["none", "cosine"] = "none"

    def __post_init__(self) -> None:
        object.__setattr__(self, "betas", tuple(float(b) for b in self.betas))
        _fail_unless(self.lr_decay in LR_DECAYS, f"model.optimization.lr_decay must be one of {LR_DECAYS}, got {self.lr_decay!r}")
        _fail_unless(self.lr is None or self.lr > 0, f"model.optimization.lr must be > 0 or null, got {self.lr}")
        _fail_unless(self.warmup_steps >= 0 and self.warmup_epochs >= 0,
                     "model.optimization.warmup_steps and warmup_epochs must be >= 0")  # fmt: skip
        _fail_unless(self.warmup_epochs == 0 or self.epoch_size is not None,
                     "model.optimization.warmup_epochs needs model.optimization.epoch_size (samples per epoch)")
        total = self.global_batch_size
        _fail_unless(total is None or total >= 1,
                     f"model.optimization.global_batch_size must be >= 1 or null, got {total}")  # fmt: skip
        needs_batch = self.lr is None or self.warmup_epochs > 0
        _fail_unless(not needs_batch or self.global_batch_size is not None,
                     "model.optimization.lr=null (the LR rule) and warmup_epochs need model.optimization."
                     "global_batch_size: set it (e.g. 1024), or give lr and warmup_steps")  # fmt: skip

    def learning_rate(self) -> float:
        if self.lr is not None:
            return float(self.lr)
        return scaled_lr(self.base_lr, self.global_batch_size)

    def warmup_total_steps(self) -> int:
        steps = self.warmup_steps
        if self.warmup_epochs > 0:
            steps += math.ceil(self.warmup_epochs * self.epoch_size / self.global_batch_size)
        return int(steps)


@dataclass(frozen=True)
class EMATracks:
    """Exponential moving averages of the transformer (SPEC §3) and which weights sample.

    Args:
        decay: decay of the EMA used for sampling (C2I 0.9999, T2X 0.999).
        decay_2: decay of an optional second track (release C2I: 0.9996); None disables it.
        sample_weights: the weights sampling and evaluation use: "ema", "ema2" (needs decay_2) or "raw".
    """

    decay: float = 0.9999
    decay_2: float | None = None
    sample_weights: Literal["ema", "ema2", "raw"] = "ema"

    def __post_init__(self) -> None:
        for name in ("decay", "decay_2"):
            value = getattr(self, name)
            _fail_unless(value is None or 0.0 <= value < 1.0, f"model.ema.{name} must lie in [0, 1), got {value}")
        _fail_unless(self.sample_weights in SAMPLE_WEIGHTS,
                     f"model.ema.sample_weights={self.sample_weights!r} is not one of {SAMPLE_WEIGHTS}")  # fmt: skip
        _fail_unless(self.sample_weights != "ema2" or self.decay_2 is not None,
                     "model.ema.sample_weights='ema2' needs model.ema.decay_2")  # fmt: skip

    @property
    def decays(self) -> tuple[float, ...]:
        return (self.decay,) if self.decay_2 is None else (self.decay, self.decay_2)


@dataclass(frozen=True)
class Parallelism:
    """How `configure_model` scales the transformer (parallelize.py: AC → compile → FSDP2).

    Args:
        activation_checkpointing: recompute each block in backward (saves activation memory).
        compile: torch.compile the trained transformer per "block", as a whole "model", or "none" (its EMA
            copies, which only sample, stay eager: sampling shapes change every step).
        fsdp_bf16_params: under FSDP2, gather parameters in bf16 with fp32 gradient reduction.
        fsdp_reshard_after_forward: under FSDP2, free gathered block weights after forward (ZeRO-3).
    """

    activation_checkpointing: bool = False
    compile: Literal["none", "block", "model"] = "none"
    fsdp_bf16_params: bool = True
    fsdp_reshard_after_forward: bool = True

    def __post_init__(self) -> None:
        modes = parallelize.COMPILE_MODES
        _fail_unless(self.compile in modes, f"model.parallelism.compile={self.compile!r} is not one of {modes}")


def check_tokenizer_geometry(transformer: nn.Module, tokenizer: nn.Module | None) -> None:
    """The tokenizer is the one source of C (latent channels) and M (HBQ rounds): a transformer built for other values
    is refused here, at construction, naming both values and the fix."""
    if tokenizer is None:
        return
    for ours, theirs in (("channels", "latent_channels"), ("rounds", "num_rounds")):
        mine, given = getattr(transformer, ours), getattr(tokenizer, theirs)
        _fail_unless(mine == given,
                     f"model.transformer.init_args.{ours}={mine} differs from the tokenizer's {theirs}={given}: set "
                     f"model.transformer.init_args.{ours} to {given} (or give the tokenizer the transformer was "
                     "trained with)")  # fmt: skip


def class_config(obj: object) -> dict:
    """{"class_path", "init_args"} of an injected part that records its init arguments in `obj.config`."""
    init_args = getattr(obj, "config", None)
    if not isinstance(init_args, dict):
        raise TypeError(f"{type(obj).__name__} must record its init arguments in `.config` to be saved in hparams")
    return {"class_path": f"{type(obj).__module__}.{type(obj).__qualname__}", "init_args": dict(init_args)}


def portable_hparams(hparams: dict) -> None:
    """Make hyper-parameters saved by a module built in Python (not by the CLI) look like the CLI's: injected parts
    as {"class_path", "init_args"}, dataclasses as dicts, and the CLI's instantiator named, so
    `Module.load_from_checkpoint(path)` rebuilds the parts through jsonargparse and a checkpoint loads with
    `weights_only=True` (no pickled objects)."""
    for key, value in list(hparams.items()):
        if isinstance(value, nn.Module):
            hparams[key] = class_config(value)
        elif dataclasses.is_dataclass(value) and not isinstance(value, type):
            hparams[key] = {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(value).items()}
    hparams.setdefault("_instantiator", "lightning.pytorch.cli.instantiate_module")
