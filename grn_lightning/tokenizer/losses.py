"""Tokenizer losses (SPEC §2): L1/L2 reconstruction + LPIPS-VGG + PatchGAN adversarial terms.

Generator:      λ_rec·|x − x̂| + λ_lpips·LPIPS_vgg(x, x̂) (per frame) + λ_gan·g(D(x̂))
Discriminator:  hinge 0.5·(E[relu(1 − D(x))] + E[relu(1 + D(x̂))])  (or non-saturating, an option)
with g = −mean(D(x̂)) for hinge (the release) and softplus(−D(x̂)) for non-saturating.
Weight presets: "image" 1.0 / 1.0 / 0.3, "joint" (image+video tokenizer) 1.0 / 0.2 / 0.005.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "LOSS_PRESETS",
    "TokenizerLoss",
    "adaptive_gan_weight",
    "discriminator_loss",
    "frames_as_images",
    "generator_adversarial_loss",
    "reconstruction_loss",
]

# (λ_rec, λ_lpips, λ_gan), SPEC §2
LOSS_PRESETS: dict[str, tuple[float, float, float]] = {"image": (1.0, 1.0, 0.3), "joint": (1.0, 0.2, 0.005)}
REC_LOSSES = ("l1", "l2", "l1+l2")
GAN_LOSSES = ("hinge", "non_saturating")


def frames_as_images(x: torch.Tensor) -> torch.Tensor:
    """[B, C, T, H, W] → [B·T, C, H, W] (per-frame perceptual terms); 4-D input is returned as is."""
    if x.ndim == 4:
        return x
    b, c, t, h, w = x.shape
    return x.transpose(1, 2).reshape(b * t, c, h, w)


def reconstruction_loss(x: torch.Tensor, x_hat: torch.Tensor, kind: str = "l1") -> torch.Tensor:
    """Mean absolute (``l1``, the release) or squared (``l2``) error over every element, or their sum (``l1+l2``:
    the L2 term weighs the large errors that PSNR counts most, the L1 term keeps the small ones from flattening)."""
    if kind == "l1":
        return (x_hat - x).abs().mean()
    if kind == "l2":
        return F.mse_loss(x_hat, x)
    if kind == "l1+l2":
        return (x_hat - x).abs().mean() + F.mse_loss(x_hat, x)
    raise ValueError(f"reconstruction loss {kind!r} is not supported; allowed values: {REC_LOSSES}")


def discriminator_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor, kind: str = "hinge") -> torch.Tensor:
    """Hinge: 0.5·(E[relu(1 − D(x))] + E[relu(1 + D(x̂))]); non-saturating: 0.5·(E[softplus(−D(x))] +
    E[softplus(D(x̂))])."""
    if kind == "hinge":
        return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())
    if kind == "non_saturating":
        return 0.5 * (F.softplus(-logits_real).mean() + F.softplus(logits_fake).mean())
    raise ValueError(f"GAN loss {kind!r} is not supported; allowed values: {GAN_LOSSES}")


def generator_adversarial_loss(logits_fake: torch.Tensor, kind: str = "hinge") -> torch.Tensor:
    """Hinge generator loss −mean(D(x̂)) (the release); non-saturating E[softplus(−D(x̂))]."""
    if kind == "hinge":
        return -logits_fake.mean()
    if kind == "non_saturating":
        return F.softplus(-logits_fake).mean()
    raise ValueError(f"GAN loss {kind!r} is not supported; allowed values: {GAN_LOSSES}")


def adaptive_gan_weight(
    nll_loss: torch.Tensor, gan_loss: torch.Tensor, last_layer: torch.Tensor, max_weight: float = 1e4
) -> torch.Tensor:
    """VQGAN's balance ‖∇_last nll‖ / (‖∇_last gan‖ + 1e-4), clamped to [0, max_weight], no gradient.

    Not in the release (SPEC §2); off by default in ``TokenizerLoss``.
    """
    nll_grad = torch.autograd.grad(nll_loss, last_layer, retain_graph=True)[0]
    gan_grad = torch.autograd.grad(gan_loss, last_layer, retain_graph=True)[0]
    return (nll_grad.norm() / (gan_grad.norm() + 1e-4)).clamp(0.0, max_weight).detach()


class TokenizerLoss(nn.Module):
    """Weighted generator and discriminator losses of the tokenizer.

    The LPIPS-VGG network is frozen and deliberately NOT a registered submodule: it has no place in optimisers,
    DDP buckets, FSDP units or checkpoints (DESIGN.md), so it is held outside the module tree and moved to the
    input's device on first use. Its trunk weights come from the offline registry (``lpips_vgg_backbone``:
    explicit ``lpips_path`` → ``$GRN_WEIGHTS`` → torch hub cache; a missing file raises ``MissingWeightsError``
    naming it); the calibrated linear heads ship inside the ``lpips`` wheel.

    Args:
        preset: weight preset, "image" (λ_rec 1.0, λ_lpips 1.0, λ_gan 0.3) or "joint" (1.0 / 0.2 / 0.005).
        rec_weight: overrides the preset's λ_rec.
        perceptual_weight: overrides the preset's λ_lpips (0 skips LPIPS and never builds the network).
        gan_weight: overrides the preset's λ_gan.
        rec_loss: "l1" (release), "l2", or "l1+l2" (their sum).
        gan_loss: "hinge" (release) or "non_saturating".
        gan_start_step: generator step from which the adversarial terms (both networks) are switched on;
            0 = from the start, as in the release.
        adaptive_gan_weight: multiply λ_gan by the VQGAN gradient-norm balance at the decoder's last layer
            (not in the release).
        lpips_path: explicit path of ``vgg16-397923af.pth`` (the torchvision VGG16 trunk), or a folder holding it.
        random_backbone: random VGG trunk instead of the ImageNet one; tests and benchmarks only.
    """

    def __init__(
        self,
        preset: Literal["image", "joint"] = "image",
        rec_weight: float | None = None,
        perceptual_weight: float | None = None,
        gan_weight: float | None = None,
        rec_loss: Literal["l1", "l2", "l1+l2"] = "l1",
        gan_loss: Literal["hinge", "non_saturating"] = "hinge",
        gan_start_step: int = 0,
        adaptive_gan_weight: bool = False,
        lpips_path: str | None = None,
        random_backbone: bool = False,
    ) -> None:
        super().__init__()
        if preset not in LOSS_PRESETS:
            raise ValueError(f"loss preset={preset!r} is not supported; allowed values: {sorted(LOSS_PRESETS)}")
        if rec_loss not in REC_LOSSES:
            raise ValueError(f"rec_loss={rec_loss!r} is not supported; allowed values: {REC_LOSSES}")
        if gan_loss not in GAN_LOSSES:
            raise ValueError(f"gan_loss={gan_loss!r} is not supported; allowed values: {GAN_LOSSES}")
        if gan_start_step < 0:
            raise ValueError(f"gan_start_step must be >= 0, got {gan_start_step}")
        rec, perc, gan = LOSS_PRESETS[preset]
        self.rec_weight = rec if rec_weight is None else float(rec_weight)
        self.perceptual_weight = perc if perceptual_weight is None else float(perceptual_weight)
        self.gan_weight = gan if gan_weight is None else float(gan_weight)
        for name in ("rec_weight", "perceptual_weight", "gan_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        self.rec_loss, self.gan_loss = rec_loss, gan_loss
        self.gan_start_step = gan_start_step
        self.use_adaptive_weight = adaptive_gan_weight
        self.lpips_path, self.random_backbone = lpips_path, random_backbone
        self._lpips: list[nn.Module] = []  # a list hides it from the module tree (see class docstring)

    @property
    def lpips(self) -> nn.Module:
        """The frozen LPIPS-VGG network, built on first access."""
        if not self._lpips:
            from grn_lightning.eval.features import build_lpips

            self._lpips.append(build_lpips("vgg", backbone_path=self.lpips_path, random_init=self.random_backbone))
        return self._lpips[0]

    def lpips_per_frame(self, x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
        """LPIPS-VGG of every image / video frame, ``[B·T]``; gradients reach ``x_hat`` only."""
        net = self.lpips
        if next(net.parameters()).device != x.device:
            net.to(x.device)
        return net(frames_as_images(x_hat), frames_as_images(x).detach()).flatten()

    def perceptual(self, x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
        """Mean LPIPS-VGG over images / video frames (SPEC §2: per frame for videos)."""
        return self.lpips_per_frame(x, x_hat).mean()

    def gan_factor(self, step: int) -> float:
        return 1.0 if step >= self.gan_start_step else 0.0

    def generator_loss(
        self,
        x: torch.Tensor,
        x_hat: torch.Tensor,
        logits_fake: torch.Tensor | None,
        step: int,
        last_layer: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Total generator loss and its (detached) terms. ``logits_fake`` = D(x̂) with gradients to x̂ only, or None
        when λ_gan = 0 (no adversarial term at all: the discriminator was not run).

        Before ``gan_start_step`` the adversarial term is multiplied by 0 rather than dropped, so every parameter
        stays in the graph (DDP without ``find_unused_parameters``)."""
        if logits_fake is None and self.gan_weight > 0:
            raise ValueError("generator_loss needs D(x̂) (logits_fake) when gan_weight > 0")
        rec = reconstruction_loss(x, x_hat, self.rec_loss)
        perc = self.perceptual(x, x_hat) if self.perceptual_weight > 0 else rec.new_zeros(())
        adv = rec.new_zeros(()) if logits_fake is None else generator_adversarial_loss(logits_fake, self.gan_loss)
        nll = self.rec_weight * rec + self.perceptual_weight * perc
        weight = torch.tensor(self.gan_weight * self.gan_factor(step), device=x.device)
        if self.use_adaptive_weight and logits_fake is not None and self.gan_factor(step) > 0:
            if last_layer is None:
                raise ValueError("adaptive_gan_weight needs the decoder's last layer weight")
            weight = weight * adaptive_gan_weight(nll, adv, last_layer)
        total = nll + weight * adv
        logs = {"rec": rec.detach(), "lpips": perc.detach(), "g_adv": adv.detach(), "gan_weight": weight.detach()}
        return total, logs

    def discriminator_loss(
        self, logits_real: torch.Tensor, logits_fake: torch.Tensor, step: int
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Discriminator loss (× 0 before ``gan_start_step``) and logs (loss, mean real/fake logits)."""
        loss = discriminator_loss(logits_real, logits_fake, self.gan_loss)
        logs = {
            "d_loss": loss.detach(),
            "logits_real": logits_real.detach().float().mean(),
            "logits_fake": logits_fake.detach().float().mean(),
        }
        return self.gan_factor(step) * loss, logs
