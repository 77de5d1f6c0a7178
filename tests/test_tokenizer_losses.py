"""PatchGAN discriminator and tokenizer losses (SPEC §2)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from grn_lightning.tokenizer.discriminator import PatchDiscriminator
from grn_lightning.tokenizer.losses import (
    LOSS_PRESETS,
    TokenizerLoss,
    adaptive_gan_weight,
    discriminator_loss,
    generator_adversarial_loss,
    reconstruction_loss,
)
from grn_lightning.weights import MissingWeightsError


def test_patchgan_structure_shapes_and_init():
    torch.manual_seed(0)
    d = PatchDiscriminator()
    convs = [m for m in d.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.stride[0]) for c in convs] == [
        (3, 64, 2), (64, 128, 2), (128, 256, 2), (256, 512, 1), (512, 1, 1)
    ]
    assert all(c.kernel_size == (4, 4) for c in convs)
    assert convs[0].bias is not None and convs[1].bias is None  # bias only where no norm follows
    assert sum(p.numel() for p in d.parameters()) == 2_765_633  # pix2pix n_layers=3 with BatchNorm
    w = torch.cat([c.weight.flatten() for c in convs])
    assert abs(w.mean().item()) < 1e-3 and abs(w.std().item() - 0.02) < 1e-3
    assert [m.negative_slope for m in d.modules() if isinstance(m, nn.LeakyReLU)] == [0.2] * 4
    assert d(torch.randn(2, 3, 1, 256, 256)).shape == (2, 1, 1, 30, 30)
    assert d(torch.randn(2, 3, 64, 64)).shape == (2, 1, 1, 6, 6)


def test_video_frames_are_judged_one_by_one():
    torch.manual_seed(0)
    d = PatchDiscriminator(norm="group", base_channels=8).eval()
    video = torch.randn(2, 3, 5, 32, 32)
    out = d(video)
    assert out.shape == (2, 1, 5, 2, 2)
    for t in range(5):
        torch.testing.assert_close(out[:, :, t], d(video[:, :, t]).squeeze(2))


def test_discriminator_options_and_errors():
    d3 = PatchDiscriminator(dims=3, norm="none", base_channels=8)
    assert d3(torch.randn(1, 3, 17, 64, 64)).shape == (1, 1, 3, 6, 6)
    assert not any(isinstance(m, nn.BatchNorm3d) for m in d3.modules())
    with pytest.raises(ValueError, match="norm.*allowed values"):
        PatchDiscriminator(norm="instance")
    with pytest.raises(ValueError, match="dims"):
        PatchDiscriminator(dims=1)


def test_gan_and_reconstruction_losses_on_known_inputs():
    real = torch.tensor([2.0, 0.5, -1.0])
    fake = torch.tensor([-2.0, 0.0, 1.0])
    # relu(1 - real) = [0, .5, 2] -> 5/6; relu(1 + fake) = [0, 1, 2] -> 1
    assert discriminator_loss(real, fake).item() == pytest.approx(0.5 * (5 / 6 + 1))
    sp = torch.nn.functional.softplus
    assert discriminator_loss(real, fake, "non_saturating").item() == pytest.approx(
        0.5 * (sp(-real).mean() + sp(fake).mean()).item()
    )
    assert generator_adversarial_loss(fake).item() == pytest.approx(1 / 3)
    assert generator_adversarial_loss(fake, "non_saturating").item() == pytest.approx(sp(-fake).mean().item())
    x, y = torch.zeros(2, 3), torch.tensor([[1.0, -2.0, 0.0], [0.0, 0.0, 3.0]])
    assert reconstruction_loss(x, y, "l1").item() == pytest.approx(1.0)
    assert reconstruction_loss(x, y, "l2").item() == pytest.approx(14 / 6)
    assert reconstruction_loss(x, y, "l1+l2").item() == pytest.approx(1.0 + 14 / 6)  # |.| sum 6/6, squares 14/6
    with pytest.raises(ValueError, match="allowed values"):
        discriminator_loss(real, fake, "wgan")


def test_presets_and_overrides():
    assert LOSS_PRESETS == {"image": (1.0, 1.0, 0.3), "joint": (1.0, 0.2, 0.005)}
    loss = TokenizerLoss("joint", gan_weight=0.02)
    assert (loss.rec_weight, loss.perceptual_weight, loss.gan_weight) == (1.0, 0.2, 0.02)
    with pytest.raises(ValueError, match="preset.*allowed values"):
        TokenizerLoss("video")


def _images(n=2, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, 1, size, size, generator=g) * 2 - 1


def test_lpips_is_frozen_outside_parameters_and_state_dict():
    loss = TokenizerLoss("image", random_backbone=True)
    x = _images()
    x_hat = (x + 0.3 * torch.randn_like(x)).requires_grad_(True)
    value = loss.perceptual(x, x_hat)
    value.backward()
    assert value.item() > 0 and x_hat.grad is not None
    assert all(not p.requires_grad and p.grad is None for p in loss.lpips.parameters())
    assert list(loss.parameters()) == [] and loss.state_dict() == {}
    holder = nn.Module()
    holder.loss, holder.lin = loss, nn.Linear(2, 2)
    assert set(holder.state_dict()) == {"lin.weight", "lin.bias"}


def test_video_lpips_is_mean_over_frames():
    loss = TokenizerLoss("joint", random_backbone=True)
    g = torch.Generator().manual_seed(1)
    x = torch.rand(2, 3, 3, 32, 32, generator=g) * 2 - 1
    y = torch.rand(2, 3, 3, 32, 32, generator=g) * 2 - 1
    per_frame = torch.stack([loss.perceptual(x[:, :, t : t + 1], y[:, :, t : t + 1]) for t in range(3)])
    torch.testing.assert_close(loss.perceptual(x, y), per_frame.mean())


def test_missing_vgg_weights_name_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("GRN_WEIGHTS", str(tmp_path))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "hub"))
    with pytest.raises(MissingWeightsError, match="vgg16-397923af.pth"):
        TokenizerLoss("image").lpips


def test_generator_loss_weights_and_gan_start():
    loss = TokenizerLoss("image", perceptual_weight=0.0, gan_start_step=10)
    x = _images()
    x_hat = x + 0.1
    logits = torch.full((2, 1, 1, 2, 2), -2.0)
    total, logs = loss.generator_loss(x, x_hat, logits, step=9)
    assert total.item() == pytest.approx(0.1, abs=1e-6) and logs["g_adv"].item() == pytest.approx(2.0)
    total, _ = loss.generator_loss(x, x_hat, logits, step=10)
    assert total.item() == pytest.approx(0.1 + 0.3 * 2.0, abs=1e-6)
    d_before, _ = loss.discriminator_loss(torch.ones(3), -torch.ones(3) * 0.5, step=0)
    d_after, logs = loss.discriminator_loss(torch.ones(3), -torch.ones(3) * 0.5, step=10)
    assert d_before.item() == 0.0 and d_after.item() == pytest.approx(0.25)


def test_adaptive_gan_weight_is_gradient_norm_ratio():
    last = nn.Parameter(torch.tensor([1.0, 2.0]))
    nll = (3.0 * last).sum()  # grad (3, 3), norm 3√2
    gan = (last**2).sum()  # grad (2, 4), norm √20
    w = adaptive_gan_weight(nll, gan, last)
    assert w.item() == pytest.approx(3 * 2**0.5 / (20**0.5 + 1e-4), rel=1e-6)
    assert not w.requires_grad
