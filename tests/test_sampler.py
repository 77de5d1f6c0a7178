"""Refinement sampler (SPEC §6): CFG batching, equality with a plain one-request loop, schedules, adaptive steps
(Eq. 9 against hand-worked stand-in models), continuous batching determinism and compute, static-shape slots, region
edits. The Eq. 9 stand-ins and the sampler's counter-based noise (noise.py) are tested in test_sampler_rules.py."""

from __future__ import annotations

import math

import pytest
import torch

from grn_lightning.generator.sampling.adaptive import AdaptiveSteps, normalised_entropy
from grn_lightning.generator.refinement import keep_fractions
from grn_lightning.generator.sampling import noise
from grn_lightning.generator.sampling.guidance import guided_logits, sample_categorical
from grn_lightning.generator.sampling.sampler import RefinementSampler
from grn_lightning.generator.c2i.model import GRNC2ITransformer


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def _no_grad():
    with torch.no_grad():
        yield



@pytest.fixture(scope="module")
def model() -> GRNC2ITransformer:
    m = GRNC2ITransformer(size="tiny", variant="ind", channels=4, rounds=2, num_classes=10, grid_size=(3, 4), in_context_tokens=2)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in m.parameters():  # adaLN-zero would give uniform logits; random weights give structure
            p.copy_(torch.randn(p.shape, generator=gen) * 0.15)
    return m.eval().requires_grad_(False)


def _bit_model() -> GRNC2ITransformer:
    m = GRNC2ITransformer(size="tiny", variant="bit", channels=4, rounds=2, num_classes=10, grid_size=(3, 4), in_context_tokens=2)
    gen = torch.Generator().manual_seed(1)
    for p in m.parameters():
        p.copy_(torch.randn(p.shape, generator=gen) * 0.15)
    return m.eval().requires_grad_(False)


def reference_sample(model, class_id, seed, keep, entropy_step, cfg_scale=1.0, interval=(0.0, 1.0), tau=1.0, null=10):
    """SPEC §6 for ONE request, written out plainly: two separate forwards for CFG, the request's counter-based draws
    (noise.py) step by step. The entropy is read from the forward of loop index `entropy_step` (Eq. 9)."""
    n, g, k = model.num_tokens, model.groups, model.classes
    key = noise.request_keys(torch.tensor([seed]))
    zero = torch.zeros(1, dtype=torch.long)
    y_rand = noise.randint(key, zero, zero, noise.LABELS, (n, g), k)[0]
    state, entropy = y_rand, None
    for i, p in enumerate(keep):
        ratio = torch.tensor([p])
        logits = model(state[None], torch.tensor([class_id]), ratio)[0].float()
        guided = logits
        if cfg_scale != 1.0 and interval[0] <= ratio.item() <= interval[1]:
            uncond = model(state[None], torch.tensor([null]), ratio)[0].float()
            guided = uncond + cfg_scale * (logits - uncond)
        step = torch.tensor([i])
        u_cat = noise.uniform(key, zero, step, noise.CATEGORY, (n, g))[0]
        probs = torch.softmax(guided / tau, -1)
        y = (probs.cumsum(-1) < u_cat[..., None]).sum(-1).clamp(max=k - 1)
        if i == entropy_step:
            p_ = torch.softmax(logits.double(), -1)
            entropy = (-(p_ * p_.log()).sum(-1) / math.log(k)).mean().item()
        if i + 1 < len(keep):
            u_keep = noise.uniform(key, zero, step, noise.KEEP, (n, g))[0]
            state = torch.where(u_keep < keep[i + 1], y, y_rand)
    return y, entropy


def test_batched_cfg_equals_two_separate_calls(model):
    gen = torch.Generator().manual_seed(1)
    state = torch.randint(0, 4, (4, 12, 4), generator=gen)
    cls, ratio = torch.tensor([1, 2, 3, 4]), torch.tensor([0.1, 0.5, 0.6, 0.9])
    active = torch.tensor([False, True, True, False])
    calls = []

    def counting(*args):
        calls.append(args[0].shape[0])
        return model(*args)

    cond, guided = guided_logits(counting, state, cls, ratio, 10, 2.4, active)
    assert calls == [6]  # one forward: 4 conditional rows + 2 unconditional rows
    lc = model(state, cls, ratio)
    lu = model(state, torch.full((4,), 10), ratio)
    torch.testing.assert_close(cond, lc, rtol=1e-5, atol=1e-5)
    expected = torch.where(active[:, None, None, None], lu + 2.4 * (lc - lu), lc)
    torch.testing.assert_close(guided, expected, rtol=1e-5, atol=1e-5)
    calls.clear()  # fixed shapes: an unconditional row for every row, the same guided logits
    cond_all, guided_all = guided_logits(counting, state, cls, ratio, 10, 2.4, active, every_row=True)
    assert calls == [8]
    torch.testing.assert_close(cond_all, lc, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(guided_all, expected, rtol=1e-5, atol=1e-5)


def test_inverse_cdf_categorical():
    probs = torch.tensor([[0.2, 0.5, 0.3]]).expand(4, 3)
    u = torch.tensor([0.0, 0.19, 0.69, 0.9999999])
    assert sample_categorical(probs, u).tolist() == [0, 0, 1, 2]
    freq = torch.bincount(sample_categorical(probs[:1].expand(20000, 3), torch.rand(20000)), minlength=3) / 20000
    torch.testing.assert_close(freq, probs[0], atol=0.02, rtol=0)


@pytest.mark.parametrize("static_shapes", [False, True])
def test_cfg_weight_one_tau_one_equals_plain_conditional_sampling(model, static_shapes):
    # entropy_step=3 is the loop index of the forward whose prediction is measured (the 4th forward). Before issue 12
    # the reference read it after the 3rd forward (`i + 1 == entropy_step`), the convention of the old sampler that
    # Eq. 9 contradicts (SPEC §6: loop index i = t0); both sides shared that mistake, so the test could not see it.
    sampler = RefinementSampler(steps=6, cfg_scale=1.0, cfg_interval=(0.0, 1.0), temperature=1.0, max_batch=2,
                                entropy_step=3, static_shapes=static_shapes)  # fmt: skip
    cls, seeds = torch.tensor([0, 5, 9]), [11, 12, 13]
    out = sampler.sample(model, cls, seeds)
    assert out.labels.shape == (3, 12, 4) and out.steps.tolist() == [6, 6, 6]
    assert out.rows_forwarded == 18  # w = 1 skips the unconditional rows; 3 requests x 6 steps
    for j in range(3):
        y, ent = reference_sample(model, int(cls[j]), seeds[j], keep_fractions(6), entropy_step=3)
        assert torch.equal(out.labels[j], y)
        assert out.entropy[j].item() == pytest.approx(ent, abs=1e-6)


@pytest.mark.parametrize("static_shapes", [False, True])
def test_cfg_interval_and_temperature_equal_the_plain_loop(model, static_shapes):
    """CFG with two separate forwards inside the interval, τ, 3 requests over 2 slots: equal to the plain loop."""
    sampler = RefinementSampler(steps=5, cfg_scale=2.5, cfg_interval=(0.3, 0.7), temperature=1.3, max_batch=2,
                                entropy_step=2, static_shapes=static_shapes)  # fmt: skip
    cls, seeds = torch.tensor([1, 4, 7]), [5, 2**61 + 3, 77]
    out = sampler.sample(model, cls, seeds)
    for j in range(3):
        y, ent = reference_sample(model, int(cls[j]), seeds[j], keep_fractions(5), 2, 2.5, (0.3, 0.7), 1.3)
        assert torch.equal(out.labels[j], y)
        assert out.entropy[j].item() == pytest.approx(ent, abs=1e-6)


def test_schedule_ending_at_one_returns_last_full_prediction():
    k = 5

    def shift_model(state, class_ids, ratio):  # deterministic: predicts (F + 1) mod K with certainty
        return 60.0 * torch.nn.functional.one_hot((state + 1) % k, k).float()

    sampler = RefinementSampler(steps=3, schedule=[0.0, 1.0, 1.0], cfg_scale=3.0, temperature=1.0)
    out = sampler.sample(shift_model, torch.tensor([0, 1]), [3, 4], num_tokens=6, groups=2, classes=k, null_class=7)
    for j, seed in enumerate([3, 4]):
        zero = torch.zeros(1, dtype=torch.long)
        y_rand = noise.randint(noise.request_keys(torch.tensor([seed])), zero, zero, noise.LABELS, (6, 2), k)[0]
        # step 0 sees y_rand, steps 1 and 2 see the previous prediction entirely → y_rand + 3
        assert torch.equal(out.labels[j], (y_rand + 3) % k)


def test_cfg_interval_and_temperature_change_the_samples(model):
    base = dict(steps=5, max_batch=4)
    cls, seeds = torch.tensor([1, 2, 3]), [5, 6, 7]
    a = RefinementSampler(cfg_scale=1.0, temperature=1.0, **base).sample(model, cls, seeds)
    b = RefinementSampler(cfg_scale=4.0, cfg_interval=(0.0, 1.0), temperature=1.0, **base).sample(model, cls, seeds)
    c = RefinementSampler(cfg_scale=4.0, cfg_interval=(0.5, 1.0), temperature=1.0, **base).sample(model, cls, seeds)
    assert b.rows_forwarded == 2 * 15  # CFG at every step doubles the rows
    assert c.rows_forwarded == 15 + 3 * 2  # linear p = 0, .2, .4, .6, .8: CFG only at .6 and .8
    assert not torch.equal(a.labels, b.labels)
    cold = RefinementSampler(cfg_scale=1.0, temperature=0.05, **base).sample(model, cls, seeds)
    assert not torch.equal(a.labels, cold.labels)


def test_adaptive_steps_follow_entropy_rule(model):
    # tiny random model: entropies spread around ~0.5-0.9; choose k, b so the clip bounds and the interior are hit
    probe = RefinementSampler(steps=10, cfg_scale=1.0, temperature=1.0, entropy_step=2, max_batch=16)
    cls, seeds = torch.arange(10), list(range(100, 110))
    ent = probe.sample(model, cls, seeds).entropy
    lo, hi = ent.min().item(), ent.max().item()
    k = 12.0 / (hi - lo)
    adaptive = AdaptiveSteps(t0=2, k=k, b=-k * lo, t_min=4, t_max=10)
    sampler = RefinementSampler(cfg_scale=1.0, temperature=1.0, adaptive=adaptive, max_batch=3)
    out = sampler.sample(model, cls, seeds)
    # forwards 0..2 feed the same kept fractions 0, .1, .2 (linear, T = Tmax = 10) → the same entropy at index 2
    torch.testing.assert_close(out.entropy, ent, rtol=0, atol=1e-5)
    expected = 2 + torch.round(torch.clamp(k * out.entropy + (-k * lo), 4 - 2, 10 - 2)).long()
    assert torch.equal(out.steps, expected)
    assert out.steps.min() == 4 and out.steps.max() == 10 and len(set(out.steps.tolist())) >= 3
    assert out.rows_forwarded == int(out.steps.sum())


def test_adaptive_keep_fraction_and_cooling():
    a = AdaptiveSteps.preset("release")
    assert (a.k, a.b, a.cool_temperature, a.t_min, a.t_max, a.t0) == (700.0, -620.0, True, 20, 50, 5)
    keep = a.keep_fractions(torch.tensor([0, 4, 5, 5, 49, 20]), torch.tensor([45, 45, 0, 45, 45, 30]))
    torch.testing.assert_close(keep, torch.tensor([0.0, 0.08, 0.1, 0.1, 0.1 + 0.9 * 44 / 45, 0.1 + 0.9 * 15 / 30],
                                                  dtype=torch.float64))  # fmt: skip
    factors = a.temperature_factors(torch.tensor([5, 10, 20, 30, 50, 0])).tolist()
    assert factors == pytest.approx([0.5, 0.5, 0.75, 1.0, 1.0, 1.0])  # Δ = 0: not measured yet, no cooling
    assert AdaptiveSteps(cool_temperature=False).temperature_factors(torch.tensor([10])).tolist() == [1.0]
    # release k 700, b −620: 700·0.93 − 620 = 31; paper k 600, b −547.2: 600·0.95 − 547.2 = 22.8 → 23
    entropies = torch.tensor([0.0, 0.9, 0.93, 0.95, 1.0], dtype=torch.float64)
    assert a.remaining_steps(entropies).tolist() == [15, 15, 31, 45, 45]
    paper = AdaptiveSteps()
    assert (paper.k, paper.b, paper.cool_temperature) == (600.0, -547.2, False)
    assert paper.remaining_steps(entropies).tolist() == [15, 15, 15, 23, 45]
    with pytest.raises(ValueError, match="preset"):
        AdaptiveSteps.preset("fast")
    with pytest.raises(ValueError, match="t0"):
        AdaptiveSteps(t0=20, t_min=20)
    logits = torch.zeros(2, 3, 4, 8)
    logits[1, ..., 0] = 1e4
    torch.testing.assert_close(normalised_entropy(logits), torch.tensor([1.0, 0.0], dtype=torch.float64))


@pytest.mark.parametrize("variant,static_shapes", [("ind", False), ("bit", False), ("ind", True)])
def test_continuous_batching_equals_each_sample_alone(model, variant, static_shapes):
    # (k, b) put Δ across [1, 7] for the entropies of these random models at forward index 2 (≈ 0.57-0.67 ind,
    # 0.22-0.37 bit)
    k, b = (100.0, -58.0) if variant == "ind" else (100.0, -28.0)
    if variant == "bit":
        model = _bit_model()
    adaptive = AdaptiveSteps(t0=2, k=k, b=b, t_min=3, t_max=9, cool_temperature=True)
    sampler = RefinementSampler(cfg_scale=2.0, cfg_interval=(0.3, 1.0), temperature=1.2, adaptive=adaptive, max_batch=3,
                                static_shapes=static_shapes)  # fmt: skip
    cls, seeds = torch.tensor([0, 1, 2, 3, 4, 5, 6, 10]), [21, 22, 23, 24, 25, 26, 27, 28]
    batched = sampler.sample(model, cls, seeds)
    assert len(set(batched.steps.tolist())) >= 3, batched.steps  # requests really finish at different times
    for j in range(len(seeds)):
        alone = sampler.sample(model, cls[j : j + 1], seeds[j : j + 1])
        assert torch.equal(alone.labels[0], batched.labels[j])
        assert alone.steps[0] == batched.steps[j]
        assert alone.entropy[0].item() == pytest.approx(batched.entropy[j].item(), abs=1e-6)
    # the same seed always gives the same sample; another seed a different one
    again = sampler.sample(model, cls[:1], [21])
    other = sampler.sample(model, cls[:1], [99])
    assert torch.equal(again.labels[0], batched.labels[0]) and not torch.equal(other.labels[0], batched.labels[0])


def test_fewer_steps_mean_fewer_forwards(model):
    cls, seeds = torch.arange(8), list(range(8))
    fixed = RefinementSampler(steps=9, cfg_scale=1.0, max_batch=4).sample(model, cls, seeds)
    short = AdaptiveSteps(t0=2, k=0.0, b=1.0, t_min=3, t_max=9)  # every sample: 2 + 1 = 3 steps
    adaptive = RefinementSampler(cfg_scale=1.0, adaptive=short, max_batch=4).sample(model, cls, seeds)
    assert adaptive.steps.tolist() == [3] * 8 and fixed.steps.tolist() == [9] * 8
    assert (fixed.rows_forwarded, fixed.forward_calls) == (72, 18)
    assert (adaptive.rows_forwarded, adaptive.forward_calls) == (24, 6)


def test_region_edit_keeps_outside_tokens(model):
    seen = []

    def recording(state, class_ids, ratio):
        seen.append((state.clone(), ratio.clone()))
        return model(state, class_ids, ratio)

    sampler = RefinementSampler(steps=6, cfg_scale=2.0, cfg_interval=(0.0, 1.0), max_batch=2)
    source = sampler.sample(model, torch.tensor([1, 2, 3]), [1, 2, 3]).labels
    region = torch.zeros(3, 12, dtype=torch.bool)
    region[0, :4] = True
    region[1, 5:11] = True
    region[2, ::2] = True
    out = sampler.edit(
        recording, source, region, torch.tensor([7, 2, 3]), [4, 5, 6], rounds=2, revise_ratio=0.5, classes=4, null_class=10
    )
    outside = ~region[:, :, None].expand_as(source)
    assert torch.equal(out.labels[outside], source[outside])
    assert not torch.equal(out.labels[~outside], source[~outside])
    assert out.steps.tolist() == [6 + 3] * 3  # round 2 revises from p = 0.5: steps 3..5 of the schedule
    # the network never saw anything but the source outside the region, at any step
    for state, ratio in seen:
        matched = [any(torch.equal(s[~region[i]], source[i][~region[i]]) for i in range(3)) for s in state]
        assert all(matched)
        assert (ratio > 0).all()  # the fixed tokens count as kept
    # one request edited alone gives the same result (per-request seeds)
    alone = sampler.edit(model, source[1:2], region[1:2], torch.tensor([2]), [5], rounds=2, revise_ratio=0.5)
    assert torch.equal(alone.labels[0], out.labels[1])


def test_confidence_selection_is_an_option_and_bad_options_fail(model):
    out = RefinementSampler(steps=4, selection="confidence", max_batch=2).sample(model, torch.tensor([1, 2]), [0, 1])
    assert out.labels.shape == (2, 12, 4) and out.labels.max() < 4
    with pytest.raises(ValueError, match="selection"):
        RefinementSampler(selection="topk")
    with pytest.raises(ValueError, match="cfg_interval"):
        RefinementSampler(cfg_interval=(0.8, 0.2))
    with pytest.raises(ValueError, match="schedule"):
        RefinementSampler(schedule="quadratic")
    with pytest.raises(ValueError, match="max_batch"):
        RefinementSampler(max_batch=0)
    with pytest.raises(ValueError, match="seed"):
        RefinementSampler(steps=2).sample(model, torch.tensor([1, 2]), [0])


@pytest.fixture(scope="module")
def memorised():
    """A tiny GRN trained (with 10% class dropout) on the label maps of 4 real photos, one class each."""
    from test_refinement import _image_labels

    from grn_lightning.generator.refinement import RatioDistribution, corrupt, refinement_loss

    labels, cls = _image_labels()
    torch.manual_seed(0)
    model = GRNC2ITransformer(size="tiny", variant="ind", channels=3, rounds=2, num_classes=4, grid_size=8, in_context_tokens=4)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, betas=(0.9, 0.95))
    ratio, gen = RatioDistribution("uniform"), torch.Generator().manual_seed(0)
    with torch.enable_grad():
        for _ in range(200):
            y, c = labels.repeat(2, 1, 1), cls.repeat(2)
            c = torch.where(torch.rand(8, generator=gen) < 0.1, torch.full_like(c, 4), c)
            p = ratio.sample(8, generator=gen)
            state, _ = corrupt(y, p, 4, generator=gen)
            loss = refinement_loss(model(state, c, p), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval().requires_grad_(False), labels, cls


def test_sampler_regenerates_the_learned_images(memorised):
    model, labels, cls = memorised
    out = RefinementSampler(steps=10, cfg_scale=2.0, cfg_interval=(0.0, 1.0), temperature=1.0).sample(model, cls, [0, 1, 2, 3])
    own = (out.labels == labels).float().mean(dim=(1, 2))
    other = (out.labels == labels.roll(1, dims=0)).float().mean(dim=(1, 2))
    assert own.mean() > 0.75 and (own > other + 0.3).all(), (own, other)


def test_region_edit_with_another_class_revises_only_the_region(memorised):
    model, labels, _ = memorised
    region = torch.zeros(1, 64, dtype=torch.bool)
    region[:, 32:] = True  # bottom half of the 8x8 grid
    sampler = RefinementSampler(steps=10, cfg_scale=2.0, cfg_interval=(0.0, 1.0), temperature=1.0)
    edited = sampler.edit(model, labels[:1], region, torch.tensor([2]), [7], rounds=2).labels[0]
    assert torch.equal(edited[:32], labels[0, :32])
    bottom = edited[32:]
    assert (bottom == labels[2, 32:]).float().mean() > (bottom == labels[0, 32:]).float().mean()
