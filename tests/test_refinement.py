"""Training corruption (SPEC §3): statistics, loss over all elements, ratio distributions, schedules, learning."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import stats

from grn_lightning.generator.refinement import (
    RatioDistribution,
    corrupt,
    keep_fractions,
    ratio_bin_accuracy,
    refinement_loss,
)
from grn_lightning.generator.c2i.model import GRNC2ITransformer

pytestmark = pytest.mark.usefixtures("one_thread")



def test_corruption_statistics():
    k = 16
    gen = torch.Generator().manual_seed(0)
    labels = torch.randint(0, k, (4, 256, 16), generator=gen)
    ratio = torch.tensor([0.0, 0.3, 0.75, 1.0])
    state, kept = corrupt(labels, ratio, k, generator=gen)
    assert state.shape == labels.shape and state.dtype == torch.long and kept.dtype == torch.bool
    # kept elements are exactly the ground truth; p = 0 keeps nothing, p = 1 keeps everything
    assert torch.equal(state[kept], labels[kept])
    assert kept[0].sum() == 0 and kept[3].all()
    n = labels[0].numel()  # 4096 elements per sample: binomial std of the kept fraction ≈ 0.007
    for i, p in ((1, 0.3), (2, 0.75)):
        assert abs(kept[i].float().mean().item() - p) < 4 * math.sqrt(p * (1 - p) / n)
    # the random elements are uniform over K classes (chi-square) and independent of the label
    rand = state[~kept]
    counts = torch.bincount(rand, minlength=k).numpy()
    assert stats.chisquare(counts).pvalue > 1e-3
    match = (rand == labels[~kept]).float().mean().item()
    assert abs(match - 1 / k) < 0.02


def test_corruption_is_per_element_and_reproducible():
    labels = torch.zeros(2, 64, 8, dtype=torch.long)
    a = corrupt(labels, torch.tensor([0.5, 0.5]), 2, generator=torch.Generator().manual_seed(7))
    b = corrupt(labels, torch.tensor([0.5, 0.5]), 2, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    # channels of one token are corrupted independently (not one draw per token)
    per_token_uniform = (a[1].all(-1) | (~a[1]).all(-1)).float().mean()
    assert per_token_uniform < 0.1


def test_loss_is_cross_entropy_over_all_elements():
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 5, 3, 4, generator=gen)
    labels = torch.randint(0, 4, (2, 5, 3), generator=gen)
    manual = -F.log_softmax(logits, -1).gather(-1, labels[..., None]).mean()
    torch.testing.assert_close(refinement_loss(logits, labels), manual)
    torch.testing.assert_close(refinement_loss(logits.bfloat16(), labels), manual, rtol=2e-2, atol=2e-2)


def test_ratio_distributions():
    gen = torch.Generator().manual_seed(2)
    p = RatioDistribution("logit_normal", mu=-0.8, sigma=0.8).sample(20000, generator=gen)
    z = torch.logit(p.double())
    assert abs(z.mean().item() + 0.8) < 0.03 and abs(z.std().item() - 0.8) < 0.03
    u = RatioDistribution("uniform").sample(20000, generator=gen)
    assert 0 <= u.min() and u.max() <= 1
    assert stats.kstest(u.numpy(), "uniform").pvalue > 1e-3
    with pytest.raises(ValueError, match="uniform"):
        RatioDistribution("beta")
    with pytest.raises(ValueError, match="sigma"):
        RatioDistribution(sigma=0)


def test_ratio_bin_accuracy_exact():
    labels = torch.tensor([[0, 1], [1, 1], [0, 0]])
    logits = F.one_hot(torch.tensor([[0, 0], [1, 1], [1, 1]]), 2).float()  # correct: 1, 2, 0
    hits, counts = ratio_bin_accuracy(logits, labels, torch.tensor([0.05, 0.55, 1.0]), bins=4)
    assert hits.tolist() == [1.0, 0.0, 2.0, 0.0]
    assert counts.tolist() == [2.0, 0.0, 2.0, 2.0]


def test_keep_fraction_schedules():
    assert keep_fractions(4, "linear") == [0.0, 0.25, 0.5, 0.75]
    cos = keep_fractions(5, "cosine")
    expected = [(1 - math.cos(math.pi / 2 * i / 4)) * 0.95 for i in range(5)]
    assert cos == pytest.approx(expected, abs=1e-12) and cos[-1] == pytest.approx(0.95)
    assert keep_fractions(3, [0.0, 0.5, 1.0]) == [0.0, 0.5, 1.0]
    with pytest.raises(ValueError, match="schedule"):
        keep_fractions(3, "sqrt")
    with pytest.raises(ValueError, match="3 values"):
        keep_fractions(3, [0.0, 1.0])


def _image_labels(levels_bits: int = 2, grid: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """Real photos → [4, grid², 3] labels: RGB of each grid cell quantised to 2^bits levels, classes 0..3."""
    from skimage import data

    imgs = [data.astronaut(), data.chelsea(), data.coffee(), data.rocket()]
    out = []
    for img in imgs:
        x = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)[None].float() / 255.0
        side = min(x.shape[-2:])
        x = x[..., :side, :side]
        x = F.adaptive_avg_pool2d(x, grid)[0]  # [3, g, g]
        lab = (x * 2**levels_bits).long().clamp(max=2**levels_bits - 1)
        out.append(lab.permute(1, 2, 0).reshape(grid * grid, 3))
    return torch.stack(out), torch.arange(4)


def test_tiny_model_learns_real_image_tokens():
    """Corrupt-and-predict on real photo labels: the loss falls and high-ratio inputs are predicted better."""
    torch.manual_seed(0)
    labels, cls = _image_labels()
    model = GRNC2ITransformer(size="tiny", variant="ind", channels=3, rounds=2, num_classes=4, grid_size=8, in_context_tokens=4)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, betas=(0.9, 0.95))
    ratio_dist = RatioDistribution("uniform")
    gen = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(80):
        y = labels.repeat(2, 1, 1)
        c = cls.repeat(2)
        p = ratio_dist.sample(y.shape[0], generator=gen)
        state, _ = corrupt(y, p, 4, generator=gen)
        loss = refinement_loss(model(state, c, p), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[0] == pytest.approx(math.log(4), abs=1e-4)  # adaLN-zero head: uniform logits at init
    assert np.mean(losses[-10:]) < 0.6 * math.log(4)
    with torch.no_grad():
        acc = {}
        for p in (0.1, 0.9):
            ratio = torch.full((4,), p)
            state, _ = corrupt(labels, ratio, 4, generator=gen)
            hits, counts = ratio_bin_accuracy(model(state, cls, ratio), labels, ratio, bins=10)
            acc[p] = (hits.sum() / counts.sum()).item()
    assert acc[0.9] > acc[0.1] and acc[0.9] > 0.9
