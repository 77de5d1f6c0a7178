"""Causal 3D VAE (SPEC §2): causality, chunked == full, strides/shapes, images as 1-frame videos, parameter counts."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from grn_lightning.tokenizer.layers import AttentionBlock, AvgDown3D, DupUp3D, patchify, unpatchify
from grn_lightning.tokenizer.vae import VAE_PRESETS, CausalVAE, HBQTokenizer

TINY = dict(VAE_PRESETS["tiny"])


def _vae(seed: int = 0, latent_channels: int = 4, attention: bool = False, **overrides) -> CausalVAE:
    torch.manual_seed(seed)
    vae = CausalVAE(latent_channels=latent_channels, middle_attention=attention, **{**TINY, **overrides}).eval()
    if attention:  # the projection starts at zero (identity block); make the attention visible
        for m in vae.modules():
            if isinstance(m, AttentionBlock):
                nn.init.normal_(m.proj.weight, std=0.2)
    return vae


def _clip(frames: int, size: int = 32, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(1, 3, frames, size, size, generator=g) * 2 - 1


def test_patchify_channel_order_and_round_trip():
    # released order: (c, w-offset, h-offset): [[a, b], [c, d]] -> channels a, c, b, d
    x = torch.tensor([[1.0, 2.0], [3.0, 4.0]]).view(1, 1, 1, 2, 2)
    assert patchify(x).flatten().tolist() == [1.0, 3.0, 2.0, 4.0]
    y = torch.randn(2, 3, 5, 8, 12)
    assert torch.equal(unpatchify(patchify(y)), y)


@pytest.mark.parametrize("factor_t,factor_s,cin,cout", [(2, 2, 8, 16), (1, 2, 16, 8), (2, 2, 32, 32)])
def test_avg_down_inverts_dup_up(factor_t, factor_s, cin, cout):
    # duplicate-up copies each channel into one full averaging group, so average-down recovers it exactly
    x = torch.randn(2, cin, 3, 4, 4)
    up = DupUp3D(cin, cout, factor_t, factor_s)(x, first=False)
    assert up.shape == (2, cout, 3 * factor_t, 4 * factor_s, 4 * factor_s)
    assert torch.allclose(AvgDown3D(cout, cin, factor_t, factor_s)(up), x, atol=1e-6)
    # average-down of a constant-per-block tensor: frame 0 is averaged with a zero pad frame in front
    z = AvgDown3D(1, 1, 2, 1)(torch.ones(1, 1, 3, 1, 1))
    assert z.flatten().tolist() == [0.5, 1.0]


@pytest.mark.parametrize("attention", [False, True])
def test_encoder_is_causal(attention):
    vae = _vae(attention=attention)
    x = _clip(9)
    with torch.no_grad():
        ref = vae.encode(x)
        later = x.clone()
        later[:, :, 5:] = torch.randn_like(later[:, :, 5:])  # frames of latent 2 only
        out = vae.encode(later)
        first = x.clone()
        first[:, :, 1:] = 0.0  # everything after frame 0
        out0 = vae.encode(first)
    assert ref.shape == (1, 4, 3, 2, 2)
    torch.testing.assert_close(out[:, :, :2], ref[:, :, :2], atol=1e-6, rtol=0)
    assert (out[:, :, 2] - ref[:, :, 2]).abs().max() > 1e-3
    torch.testing.assert_close(out0[:, :, :1], ref[:, :, :1], atol=1e-6, rtol=0)


@pytest.mark.parametrize("attention", [False, True])
def test_decoder_is_causal(attention):
    vae = _vae(attention=attention)
    g = torch.Generator().manual_seed(3)
    z = torch.randn(1, 4, 3, 2, 2, generator=g)
    with torch.no_grad():
        ref = vae.decode(z)
        z2 = z.clone()
        z2[:, :, 2] = torch.randn(1, 4, 2, 2, generator=g)
        out = vae.decode(z2)
    assert ref.shape == (1, 3, 9, 32, 32)
    # latent 0 -> frame 0, latent j -> frames 4j-3 .. 4j
    torch.testing.assert_close(out[:, :, :5], ref[:, :, :5], atol=1e-6, rtol=0)
    assert (out[:, :, 5:] - ref[:, :, 5:]).abs().amax(dim=(0, 1, 3, 4)).min() > 1e-4


@pytest.mark.parametrize("attention", [False, True])
def test_chunked_equals_full(attention):
    vae = _vae(seed=5, attention=attention)
    x = _clip(17, size=32, seed=7)
    with torch.no_grad():
        mu = vae.encode(x)
        mu_chunked = vae.encode_chunked(x)
        x_hat = vae.decode(mu)
        x_hat_chunked = vae.decode_chunked(mu)
    assert mu.shape == (1, 4, 5, 2, 2) and x_hat.shape == x.shape
    torch.testing.assert_close(mu_chunked, mu, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(x_hat_chunked, x_hat, atol=1e-5, rtol=1e-5)


def test_other_strides_and_chunking():
    # 3 stages, time halved in the first: spatial stride 8, temporal stride 2; chunks of 2 frames
    vae = _vae(dim_mult=[1, 2, 2], temporal_downsample=[True, False], latent_channels=3)
    assert (vae.spatial_stride, vae.temporal_stride) == (8, 2)
    x = _clip(7, size=16)
    with torch.no_grad():
        mu = vae.encode(x)
        assert mu.shape == (1, 3, 4, 2, 2) == (1, *vae.latent_shape(7, 16, 16))
        torch.testing.assert_close(vae.encode_chunked(x), mu, atol=1e-5, rtol=1e-5)
        out = vae.decode(mu)
        assert out.shape == x.shape
        torch.testing.assert_close(vae.decode_chunked(mu), out, atol=1e-5, rtol=1e-5)


def test_time_only_stage_keeps_the_grid_and_stays_causal():
    # dim_mult [1, 2, 2]: stage 0 halves time only, stage 1 space and time -> stride 2·2 = 4 in space, 4 in time
    vae = _vae(dim_mult=[1, 2, 2], temporal_downsample=[True, True], spatial_downsample=[False, True], latent_channels=3)
    assert (vae.spatial_stride, vae.temporal_stride) == (4, 4)
    assert [type(m).__name__ for m in vae.encoder.downsamples[0].downsamples][-1] == "Resample"
    assert vae.encoder.downsamples[0].downsamples[-1].mode == "downsample1d"
    assert vae.decoder.upsamples[1].upsamples[-1].mode == "upsample1d"  # mirrored: the last up-sampling stage
    x = _clip(9, size=16)
    with torch.no_grad():
        mu = vae.encode(x)
        assert mu.shape == (1, 3, 3, 4, 4)  # 1 + 8/4 latent frames of 16/4 × 16/4
        torch.testing.assert_close(vae.encode_chunked(x), mu, atol=1e-5, rtol=1e-5)
        out = vae.decode(mu)
        assert out.shape == x.shape
        torch.testing.assert_close(vae.decode_chunked(mu), out, atol=1e-5, rtol=1e-5)
        later = x.clone()
        later[:, :, 5:] = torch.randn_like(later[:, :, 5:])  # frames 5..8 feed latent frame 2 only
        moved = vae.encode(later)
    torch.testing.assert_close(moved[:, :, :2], mu[:, :, :2], atol=1e-6, rtol=0)
    assert (moved[:, :, 2] - mu[:, :, 2]).abs().max() > 1e-3
    with pytest.raises(ValueError, match="spatial_downsample"):
        _vae(dim_mult=[1, 2, 2], temporal_downsample=[True, True], spatial_downsample=[False])
    with pytest.raises(ValueError, match="must halve space or time"):
        _vae(dim_mult=[1, 2, 2], temporal_downsample=[False, True], spatial_downsample=[False, True])


def test_image_is_one_frame_video():
    vae = _vae()
    image = _clip(1, size=64)
    with torch.no_grad():
        mu = vae.encode(image)
        assert mu.shape == (1, 4, 1, 4, 4)
        assert vae.decode(mu).shape == (1, 3, 1, 64, 64)
        # frame 0 of a clip is encoded exactly as the image alone (causality)
        clip = torch.cat([image, _clip(4, size=64, seed=9)], dim=2)
        torch.testing.assert_close(vae.encode(clip)[:, :, :1], mu, atol=1e-6, rtol=0)


def test_tokenizer_round_trip_and_gradients():
    torch.manual_seed(0)
    tok = HBQTokenizer(latent_channels=4, num_rounds=4, preset="tiny")
    x = _clip(1, size=32)
    x_hat, q = tok(x)
    assert x_hat.shape == x.shape and q.bits.shape == (4, 1, 4, 1, 2, 2)
    x_hat.square().mean().backward()  # straight-through: the encoder receives gradient through HBQ
    assert tok.vae.encoder.conv1.weight.grad.abs().sum() > 0
    labels = tok.tokenize(x)
    assert labels.shape == (1, 4, 1, 2, 2) and labels.dtype == torch.int64 and int(labels.max()) < 16
    with torch.no_grad():
        torch.testing.assert_close(tok.detokenize(labels), tok.vae.decode(q.values), atol=1e-6, rtol=0)
    video = _clip(5, size=32)
    assert tok.detokenize(tok.tokenize(video)).shape == video.shape


@pytest.mark.parametrize("channels,total,encoder,decoder", [(16, 702_687_612, 148_521_792, 554_164_492), (64, 705_693_036, 150_180_768, 555_491_596)])
def test_released_parameter_counts(channels, total, encoder, decoder):
    with torch.device("meta"):
        tok = HBQTokenizer(latent_channels=channels, preset="released")
    counts = tok.num_parameters()
    assert (counts["total"], counts["encoder"], counts["decoder"]) == (total, encoder, decoder)
    assert sum(p.numel() for p in tok.parameters()) == total
    assert not list(tok.buffers())


def test_tiny_preset_is_small():
    assert HBQTokenizer(latent_channels=16, preset="tiny").num_parameters()["total"] < 1_000_000


def test_invalid_configuration_fails_at_construction():
    with pytest.raises(ValueError, match="preset"):
        HBQTokenizer(preset="huge")
    with pytest.raises(ValueError, match="temporal_downsample"):
        CausalVAE(dim=8, dec_dim=8, temporal_downsample=[True])
    with pytest.raises(ValueError, match="dim_mult"):
        CausalVAE(dim=8, dec_dim=8, dim_mult=[])
    with pytest.raises(ValueError, match="cannot widen"):  # last stage 8 -> 16 without down-sampling
        CausalVAE(dim=8, dec_dim=8, dim_mult=[1, 2], temporal_downsample=[True])
    vae = _vae()
    with pytest.raises(ValueError, match="1 \\+ 4k"):
        vae.encode(_clip(4))
    with pytest.raises(ValueError, match="multiples of 16"):
        vae.encode(_clip(1, size=24))


def test_bf16_paths_run():
    torch.manual_seed(0)
    tok = HBQTokenizer(latent_channels=4, preset="tiny")
    x = _clip(1, size=16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        x_hat, q = tok(x)
    assert q.values.dtype == torch.float32 and torch.isfinite(x_hat).all()
    labels = tok.tokenize(x)
    ref = tok.detokenize(labels)
    # a model cast to bf16 (no autocast) takes the fp32 HBQ values and stays close to the fp32 decode
    out = tok.to(torch.bfloat16).detokenize(labels)
    assert out.dtype == torch.bfloat16 and (out.float() - ref).abs().max() < 0.1


def test_tokenizer_learns_real_images():
    # two real photos (scikit-image), 32x32: the tiny tokenizer trained through HBQ's STE reconstructs better
    skdata = pytest.importorskip("skimage.data")
    photos = [torch.from_numpy(img).permute(2, 0, 1)[None].float() / 127.5 - 1 for img in (skdata.astronaut(), skdata.chelsea())]
    x = torch.cat([torch.nn.functional.interpolate(p, size=(32, 32), mode="area") for p in photos]).unsqueeze(2)
    torch.manual_seed(0)
    tok = HBQTokenizer(latent_channels=8, preset="tiny")
    opt = torch.optim.Adam(tok.parameters(), lr=3e-3)
    losses = []
    for _ in range(40):
        x_hat, _ = tok(x)
        loss = (x_hat - x).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert min(losses[-3:]) < 0.75 * losses[0], losses
