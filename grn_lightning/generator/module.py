"""`GeneratorModule`: what every GRN generator LightningModule shares (C2I in c2i/module.py, T2I/T2V/I2V in
t2x/module.py).

- EMA tracks: frozen copies of the transformer registered as submodules (`ema`, optional `ema2`), averaged by the
  one EMA of every stage (training/ema.py). They are sharded exactly like the trained model under FSDP2 (so the
  update is a local foreach lerp on matching shards), saved in full or sharded checkpoints by the strategy without
  extra code, and called directly for sampling.
- Scale: `configure_model` applies activation checkpointing → compile (the trained model only) → FSDP2 (the model
  and its EMA tracks) in one place (parallelize.py); FSDP1 (`FSDPStrategy`) gets its norm clipping through the root wrapper.
- Optimiser: AdamW over decay/no-decay groups, fused on plain CUDA tensors, linear warm-up then constant LR.
- The frozen HBQ tokenizer is NOT a submodule (frozen; outside optimisers, checkpoints and FSDP units; see
  frozen_tokenizer.py): subclasses keep it in `__dict__` and reach it through `_require_tokenizer`.
- Parts and settings: subclasses receive the transformer, the tokenizer and the sampler as objects and the rest as
  the grouped dataclasses of options.py, and hand them to `_init_generator`. The tokenizer is the one source of C
  and M (a transformer built for others is refused at construction); `setup` connects the data module (global
  batch, token geometry, token budget; `data.connect`, as in litgpt), so configuration flows down, never back up.
"""

from __future__ import annotations

import contextlib

import lightning as L
import torch
from torch import nn

from grn_lightning.data.tokens import TokenGeometry
from grn_lightning.generator import parallelize
from grn_lightning.generator.frozen_tokenizer import load_frozen_tokenizer
from grn_lightning.generator.options import (
    Corruption,
    EMATracks,
    Optimization,
    Parallelism,
    check_tokenizer_geometry,
    class_config,
    portable_hparams,
)
from grn_lightning.generator.refinement import RatioDistribution
from grn_lightning.generator.sampling.lockstep import distributed_lockstep
from grn_lightning.generator.sampling.sampler import RefinementSampler
from grn_lightning.generator.token_layout import TokenLayout
from grn_lightning.training.ema import EMA, frozen_copy
from grn_lightning.training.optim import decay_length, decay_param_groups, warmup_scheduler


class GeneratorModule(L.LightningModule):
    """Base LightningModule of the GRN generators (EMA, parallelism, optimiser, tokenizer access); not used alone."""

    def _init_generator(
        self, transformer: nn.Module, tokenizer: nn.Module | None, tokenizer_ckpt: str | None,
        sampler: RefinementSampler, corruption: Corruption, optimization: Optimization, ema: EMATracks,
        parallelism: Parallelism,
    ) -> None:  # fmt: skip
        """Keep the injected parts and grouped settings; call after `save_hyperparameters` (whose saved copy is
        made portable here: injected parts as class_path/init_args, dataclasses as dicts)."""
        self._hparams["transformer"] = class_config(transformer)  # saved like the CLI saves it, in both cases
        portable_hparams(self._hparams)
        check_tokenizer_geometry(transformer, tokenizer)
        self.model = transformer
        self.sampler = sampler
        self.corruption, self.optimization = corruption, optimization
        self.ema_options, self.parallelism = ema, parallelism
        self.ratio = RatioDistribution(corruption.ratio_distribution, corruption.ratio_mu, corruption.ratio_sigma)
        self.layout = TokenLayout(transformer.variant, transformer.channels, transformer.rounds)
        self.ema = frozen_copy(self.model)
        self.ema2 = frozen_copy(self.model) if ema.decay_2 is not None else None
        self._averager = EMA(ema.decays)  # the one EMA (training/ema.py); the shadows are the tracks above
        # Held in __dict__, not _modules: no state_dict entries, no .to()/FSDP/optimiser involvement.
        frozen = None if tokenizer is None else load_frozen_tokenizer(tokenizer, tokenizer_ckpt)
        object.__setattr__(self, "tokenizer", frozen)

    # -- configuration flows down: the data module is told what the model needs ---------------------------
    def token_geometry(self, grid: tuple[int, int] | None = None) -> TokenGeometry:
        """C and M of the transformer (checked against the tokenizer at construction), the tokenizer's strides."""
        vae = getattr(self.tokenizer, "vae", None)
        return TokenGeometry(channels=self.model.channels, rounds=self.model.rounds,
                             spatial_stride=getattr(vae, "spatial_stride", None),
                             temporal_stride=getattr(vae, "temporal_stride", None), grid=grid)  # fmt: skip

    def data_settings(self) -> dict:
        """Keyword arguments of the data module's `connect` (subclasses add theirs): the token geometry and, when
        `optimization.global_batch_size` is set, its per-device share."""
        settings = {"geometry": self.token_geometry()}
        total = self.optimization.global_batch_size
        if total is not None:
            trainer = self.trainer
            shares = trainer.world_size * trainer.accumulate_grad_batches
            if total % shares:
                raise ValueError(
                    f"model.optimization.global_batch_size={total} is not divisible by devices × accumulation = "
                    f"{trainer.world_size} × {trainer.accumulate_grad_batches}: change one of them"
                )
            settings["batch_size"] = total // shares
        return settings

    def setup(self, stage: str) -> None:
        # Lightning runs the data module's setup first and builds the loaders after this hook, so what is connected
        # here shapes the first batch and a token shard made for another model is refused before any step.
        connect = getattr(getattr(self._trainer, "datamodule", None), "connect", None)
        if connect is not None:
            connect(**self.data_settings())

    # -- EMA ------------------------------------------------------------------------------------------------

    def _ema_tracks(self) -> list[tuple[nn.Module, float]]:
        return list(zip([self.ema, self.ema2][: len(self.ema_options.decays)], self.ema_options.decays))

    def _sampling_model(self) -> nn.Module:
        return {"ema": self.ema, "ema2": self.ema2, "raw": self.model}[self.ema_options.sample_weights]

    def update_ema(self) -> None:
        """ema ← decay·ema + (1 − decay)·model on each rank's local shards (sharded alike, see module doc)."""
        self._averager.update(self.model, tracks=[track for track, _ in self._ema_tracks()])

    # -- scale: AC → compile → FSDP2 (parallelize.py) ------------------------------------------------------
    def configure_model(self) -> None:
        # Lightning calls this hook at the start of every fit/validate/test/predict: wrap only once.
        if getattr(self, "_parallelized", False) or parallelize.is_sharded(self.model):
            return
        self._parallelized = True
        par = self.parallelism
        if par.activation_checkpointing:
            parallelize.apply_activation_checkpointing(self.model)
        if par.compile != "none":
            # The trained net only. The EMA tracks only sample, with shapes that change with every sampler step,
            # slot batch and task: compiled, one T2X validation (T2I + T2V + I2V samples) passed dynamo's recompile
            # limit and the fullgraph compile stopped the run (`make repro`, fourteenth session). Compiled sampling
            # wants fixed shapes: `RefinementSampler(static_shapes=True)` with blocks compiled by the caller
            # (benchmarks/c2i_sample.py).
            parallelize.apply_compile(self.model, par.compile)
        mesh = self._device_mesh
        if mesh is not None:
            dp_mesh = parallelize.data_parallel_mesh(mesh)
            for net in (self.model, *[m for m, _ in self._ema_tracks()]):
                parallelize.apply_fully_shard(net, dp_mesh, par.fsdp_bf16_params, par.fsdp_reshard_after_forward)

    # -- optimisation -------------------------------------------------------------------------------------
    def learning_rate(self) -> float:
        return self.optimization.learning_rate()

    def warmup_total_steps(self) -> int:
        return self.optimization.warmup_total_steps()

    def configure_optimizers(self):
        opt = self.optimization
        groups = decay_param_groups(self.model, opt.weight_decay)
        for group in groups:
            group.pop("names", None)
        # Fused AdamW on plain CUDA tensors; the foreach implementation for FSDP2's DTensors.
        fused = {"fused": True} if self.device.type == "cuda" and not parallelize.is_sharded(self.model) else {}
        optimizer = torch.optim.AdamW(groups, lr=self.learning_rate(), betas=tuple(opt.betas), **fused)
        # A fused AdamW announces that it unscales AMP gradients itself, and Lightning then refuses gradient
        # clipping (the recipes clip at 0.1). Unset, a GradScaler (fp16 only; bf16 has none) unscales before the
        # step as for any optimiser, so clipping sees true gradients and the fused kernel still does the update.
        optimizer._step_supports_amp_scaling = False
        scheduler = warmup_scheduler(optimizer, self.warmup_total_steps(), opt.lr_decay, decay_length(self, opt.lr_decay))
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

    # -- tokenizer and sampling helpers ------------------------------------------------------------------
    def _require_tokenizer(self, why: str) -> nn.Module:
        if self.tokenizer is None:
            raise ValueError(f"{why} needs model.tokenizer (an HBQ tokenizer; see the configs in configs/)")
        return self._frozen_on_device(self.tokenizer)

    def _frozen_on_device(self, helper: nn.Module) -> nn.Module:
        """A frozen helper held outside the module tree (tokenizer, text encoder), moved to this module's device on
        first use: Lightning's `.to()` never reaches it."""
        first = next(helper.parameters(), None)
        if first is not None and first.device != self.device:
            helper.to(self.device)
        return helper

    def _autocast(self):
        """bf16 autocast for sampling when the trainer runs bf16 (callbacks call us outside Lightning's own
        autocast); otherwise leave the caller's autocast state alone (a disabled autocast would override it)."""
        precision = str(getattr(getattr(self, "_trainer", None), "precision", "32"))
        if "bf16" in precision:
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _lockstep(self, model: nn.Module):
        """Sharded sampling on several ranks: every FSDP2 / FSDP1 forward is a collective, but entropy-guided step counts
        (and request counts) differ per rank, so a finished rank keeps making dummy forwards until all are done
        (sampling/lockstep.py). None when the model is not sharded or the run is not distributed."""
        if not (parallelize.is_sharded(model) or parallelize.is_fsdp1_wrapped(model)):
            return None
        backend = torch.distributed.get_backend() if _world_size() > 1 else "gloo"
        return distributed_lockstep(self.device if backend == "nccl" else "cpu")


def _world_size() -> int:
    dist = torch.distributed
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
