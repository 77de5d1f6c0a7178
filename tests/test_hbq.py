"""HBQ (SPEC §1): exact quantisation math, label layouts against hand-worked examples, STE, autocast."""

from __future__ import annotations

import pytest
import torch

from grn_lightning.hbq import (
    HBQ,
    bit_balance,
    bit_labels,
    bit_labels_to_values,
    bit_to_index_labels,
    bits_to_values,
    hbq_bits,
    index_labels,
    index_labels_to_values,
    index_to_bit_labels,
)


def _features(seed: int = 0, shape=(2, 3, 2, 5, 7)) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.tanh(torch.randn(shape, generator=g) * 1.5)


@pytest.mark.parametrize("m", [1, 2, 4, 6, 8])
def test_error_bound_and_levels(m):
    f = _features(m, (4, 8, 3, 16, 16))
    f_hat = bits_to_values(hbq_bits(f, m))
    assert (f - f_hat).abs().max().item() <= 2.0**-m
    # every value is an odd multiple of 2^-M ...
    scaled = f_hat * 2**m
    assert torch.equal(scaled, scaled.round())
    assert torch.all(scaled.round().long() % 2 == 1)
    # ... and a dense sweep of (-1, 1) hits exactly 2^M levels
    sweep = torch.linspace(-0.9999, 0.9999, 20001)
    levels = torch.unique(bits_to_values(hbq_bits(sweep, m)))
    assert levels.numel() == 2**m
    expected = (torch.arange(2**m, dtype=torch.float32) * 2 + 1 - 2**m) / 2**m
    assert torch.equal(levels, expected)


def test_hand_worked_examples_m2_m3():
    # M=2. 0.3: q1=[0.3>0]=1 (c=.5), q2=[0.3>.5]=0 -> F̂ .25, y=0b10=2.
    # -0.6: q1=0 (c=-.5), q2=[-.6>-.5]=0 -> -.75, y=0. 0.0 (tie at c1): q1=0, (c=-.5) q2=1 -> -.25, y=1.
    # 0.5 (tie at c2): q1=1, q2=[.5>.5]=0 -> .25, y=2. 0.8: q1=1, q2=1 -> .75, y=3.
    f = torch.tensor([0.3, -0.6, 0.0, 0.5, 0.8])
    bits = hbq_bits(f, 2)
    assert bits.tolist() == [[True, False, False, True, True], [False, False, True, False, True]]
    assert bits_to_values(bits).tolist() == [0.25, -0.75, -0.25, 0.25, 0.75]
    assert index_labels(bits).tolist() == [2, 0, 1, 2, 3]
    # M=3, 0.3: q = 1,0,1 (centres 0, .5, .25) -> F̂ = .5 - .25 + .125 = .375, y = 0b101 = 5.
    bits3 = hbq_bits(torch.tensor([0.3]), 3)
    assert bits3[:, 0].tolist() == [True, False, True]
    assert bits_to_values(bits3).item() == 0.375
    assert index_labels(bits3).item() == 5


def test_bit_labels_round_major_hand_worked():
    # B=1, C=2, M=2, one position per channel. F = [0.3, -0.6]: round1 = [1, 0], round2 = [0, 0].
    # round-major channels [q1c0, q1c1, q2c0, q2c1] = [1, 0, 0, 0].
    f = torch.tensor([0.3, -0.6]).view(1, 2, 1, 1, 1)
    labels = bit_labels(hbq_bits(f, 2))
    assert labels.shape == (1, 4, 1, 1, 1) and labels.dtype == torch.int64
    assert labels.flatten().tolist() == [1, 0, 0, 0]
    # F = [0.0, 0.8]: round1 = [0, 1]; round2 = [0 > -.5, .8 > .5] = [1, 1] -> [0, 1, 1, 1]; index [1, 3]
    f2 = torch.tensor([0.0, 0.8]).view(1, 2, 1, 1, 1)
    bits2 = hbq_bits(f2, 2)
    assert bit_labels(bits2).flatten().tolist() == [0, 1, 1, 1]
    assert index_labels(bits2).flatten().tolist() == [1, 3]
    assert bit_to_index_labels(bit_labels(bits2), 2).flatten().tolist() == [1, 3]


@pytest.mark.parametrize("m", [1, 4, 6])
def test_layouts_round_trip(m):
    f = _features(10 + m)
    bits = hbq_bits(f, m)
    idx, bl = index_labels(bits), bit_labels(bits)
    assert idx.shape == f.shape and idx.dtype == torch.int64
    assert bl.shape == (f.shape[0], m * f.shape[1], *f.shape[2:])
    assert int(idx.min()) >= 0 and int(idx.max()) <= 2**m - 1
    assert torch.equal(index_to_bit_labels(idx, m), bl)
    assert torch.equal(bit_to_index_labels(bl, m), idx)
    f_hat = bits_to_values(bits)
    assert torch.equal(index_labels_to_values(idx, m), f_hat)
    assert torch.equal(bit_labels_to_values(bl, m), f_hat)
    # channel (i-1)*C + c of the bit labels is round i of channel c
    c = f.shape[1]
    for i in range(m):
        assert torch.equal(bl[:, i * c : (i + 1) * c].bool(), bits[i])


def test_coarse_to_fine():
    f = _features(3, (2, 4, 1, 32, 32))
    bits = hbq_bits(f, 8)
    errors = []
    for k in range(1, 9):
        partial = bits_to_values(bits, rounds=k)
        assert (f - partial).abs().max().item() <= 2.0**-k
        # the first k rounds of an M-round code equal a k-round code
        assert torch.equal(partial, bits_to_values(hbq_bits(f, k)))
        errors.append((f - partial).pow(2).mean().item())
    assert all(a > b for a, b in zip(errors, errors[1:]))


def test_module_ste_and_commitment():
    mu = (torch.randn(2, 4, 1, 6, 6) * 2).requires_grad_(True)
    out = HBQ(num_rounds=4)(mu)
    f = torch.tanh(mu.detach())
    assert torch.allclose(out.features, f)
    assert torch.equal(out.values.detach(), bits_to_values(hbq_bits(f, 4)))
    assert out.bits.shape == (4, *mu.shape)
    assert torch.allclose(out.commitment, ((out.values.detach() - f) ** 2).mean())
    assert not out.commitment.requires_grad
    # STE: d values / d F = identity, so d sum(values) / d mu = 1 - tanh^2
    out.values.sum().backward()
    assert torch.allclose(mu.grad, 1 - f**2, atol=1e-6)


def test_bf16_autocast_identical_labels():
    mu = torch.randn(2, 8, 1, 8, 8) * 2
    q = HBQ(num_rounds=6)
    ref = q(mu)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        amp = q(mu)
        tokens = q.tokenize(mu)
    assert amp.values.dtype == torch.float32
    assert torch.equal(amp.bits, ref.bits)
    assert torch.equal(amp.values, ref.values)
    assert torch.equal(tokens, index_labels(ref.bits))


def test_continuous_mode():
    mu = torch.randn(1, 3, 1, 4, 4, requires_grad=True)
    for q in (HBQ(num_rounds=4, continuous=True), HBQ(num_rounds=100)):
        out = q(mu)
        assert q.continuous and out.bits is None
        assert torch.equal(out.values, torch.tanh(mu))
        assert out.commitment.item() == 0.0
    with pytest.raises(ValueError, match="tokenize"):
        HBQ(num_rounds=128).tokenize(mu)


def test_bit_balance_and_validation():
    bits = hbq_bits(torch.tensor([0.3, -0.6, 0.0, 0.5]), 2)
    assert bit_balance(bits).tolist() == [0.5, 0.25]
    with pytest.raises(ValueError, match="num_rounds"):
        HBQ(num_rounds=0)
    with pytest.raises(ValueError, match="num_rounds"):
        hbq_bits(torch.zeros(3), 60)
    with pytest.raises(ValueError, match="index labels"):
        index_labels_to_values(torch.tensor([16]), 4)
