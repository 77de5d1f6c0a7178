"""`GeneratorModule`: what every GRN generator LightningModule shares (C2I in c2i/module.py, T2I/T2V/I2V in
t2x/module.py).

- EMA tracks: frozen copies of the transformer registered as submodules (`ema`, optional `ema2`). They are sharded
  exactly like the trained model under FSDP2 (so the update is a local foreach lerp on matching shards), saved in
  full or sharded checkpoints by the strategy without extra code, and called directly for sampling.
- Scale: `configure_model` applies activation checkpointing → compile → FSDP2 to the model and its EMA tracks in
  one place (parallelize.py); FSDP1 (`FSDPStrategy`) gets its norm clipping through the root wrapper.
- Optimiser: AdamW over decay/no-decay groups, fused on plain CUDA tensors, linear warm-up then constant LR.
- The frozen HBQ tokenizer is NOT a submodule (frozen; outside optimisers, checkpoints and FSDP units; see
  frozen_tokenizer.py): subclasses keep it in `__dict__` and reach it through `_require_tokenizer`.

Subclasses set `self.model` (a transformer with an `nn.ModuleList` named `blocks`) and call `_init_ema_tracks`; their
hparams must include ema_decay, ema_decay_2, lr, betas, weight_decay, warmup_steps, compile,
activation_checkpointing, fsdp_bf16_params and fsdp_reshard_after_forward.
"""

from __future__ import annotations

import contextlib
import copy

import lightning as L
import torch
from torch import nn

from grn_lightning.generator import parallelize
from grn_lightning.generator.sampling.lockstep import distributed_lockstep
from grn_lightning.training.optim import decay_param_groups, warmup_constant_scheduler


class GeneratorModule(L.LightningModule):
    """Base LightningModule of the GRN generators (EMA, parallelism, optimiser, tokenizer access); not used alone."""

    # -- EMA ------------------------------------------------------------------------------------------------
    def _init_ema_tracks(self, ema_decay: float, ema_decay_2: float | None) -> None:
        for name, decay in (("ema_decay", ema_decay), ("ema_decay_2", ema_decay_2)):
            if decay is not None and not 0.0 <= decay < 1.0:
                raise ValueError(f"model.{name} must lie in [0, 1), got {decay}")
        self.ema = self._frozen_copy(self.model)
        self.ema2 = self._frozen_copy(self.model) if ema_decay_2 is not None else None

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

    @torch.no_grad()
    def update_ema(self) -> None:
        """ema ← decay·ema + (1 − decay)·model on each rank's local shards (sharded alike, see module doc)."""
        params = [_local(p) for p in self.model.parameters()]
        for ema, decay in self._ema_tracks():
            torch._foreach_lerp_([_local(p) for p in ema.parameters()], params, 1.0 - decay)

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
    def learning_rate(self) -> float:
        return float(self.hparams.lr)

    def warmup_total_steps(self) -> int:
        return int(self.hparams.warmup_steps)

    def configure_optimizers(self):
        hp = self.hparams
        groups = decay_param_groups(self.model, hp.weight_decay)
        for group in groups:
            group.pop("names", None)
        # Fused AdamW on plain CUDA tensors; the foreach implementation for FSDP2's DTensors.
        fused = {"fused": True} if self.device.type == "cuda" and not parallelize.is_sharded(self.model) else {}
        optimizer = torch.optim.AdamW(groups, lr=self.learning_rate(), betas=tuple(hp.betas), **fused)
        # A fused AdamW announces that it unscales AMP gradients itself, and Lightning then refuses gradient
        # clipping (the recipes clip at 0.1). Unset, a GradScaler (fp16 only; bf16 has none) unscales before the
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


def _local(t: torch.Tensor) -> torch.Tensor:
    """Rank-local shard of an FSDP2 DTensor parameter (in-place ops on it update the parameter)."""
    t = t.data if isinstance(t, nn.Parameter) else t
    return t.to_local() if hasattr(t, "to_local") else t
