"""Release-exact Eq. 9 with stand-in models whose predictions are known functions of the fed kept fraction (entropies,
Δ and step counts worked out by hand below), the sampler's counter-based noise (noise.py) against a plain-Python
hash and statistical tests, and the fixed-slot (static-shape) loop: tail shrinking and host checkpoints."""

from __future__ import annotations

import math

import pytest
import torch
from scipy import stats

from grn_lightning.generator.sampling import noise
from grn_lightning.generator.sampling.adaptive import AdaptiveSteps
from grn_lightning.generator.sampling.sampler import RefinementSampler

pytestmark = pytest.mark.usefixtures("one_thread")

# Binary entropy of (0.4, 0.6) in bits, worked out: −0.4·log2 0.4 − 0.6·log2 0.6 = 0.4·1.321928 + 0.6·0.736966
H_40_60 = 0.9709505944546686


class RatioStandIn:
    """K = 2 labels, 4 tokens × 2 groups; the prediction depends only on the class and the fed kept fraction r:
    r < 0.09 → logits (0, 0), entropy 1 for every class; r ≥ 0.09 → class 0 certain (entropy 0), class 1
    probabilities (0.4, 0.6) (entropy H_40_60), class 2 and the null class 3 still uniform (entropy 1)."""

    num_tokens, groups, classes, null_class = 4, 2, 2, 3

    def __init__(self) -> None:
        self.fed: list[tuple[int, float]] = []  # (class, fed ratio) of every row, in call order

    def __call__(self, state, class_ids, ratio):
        self.fed += list(zip(class_ids.tolist(), ratio.tolist()))
        b = state.shape[0]
        logits = torch.zeros(b, 4, 2, 2)
        late = ratio >= 0.09
        certain = torch.tensor([1e4, 0.0])
        split = torch.tensor([math.log(0.4), math.log(0.6)])
        logits[late & (class_ids == 0)] = certain
        logits[late & (class_ids == 1)] = split
        return logits

    def ratios(self, class_id: int) -> list[float]:
        return [r for c, r in self.fed if c == class_id]


def test_hand_worked_entropy_of_the_stand_in():
    assert H_40_60 == pytest.approx(-(0.4 * math.log2(0.4) + 0.6 * math.log2(0.6)), abs=1e-15)


@pytest.mark.parametrize("static_shapes", [False, True])
def test_eq9_reads_the_sixth_forward(static_shapes):
    """Paper k 600, b −547.2, Tmin 20, Tmax 50, t0 5. The entropy forward is loop index 5, fed 5/50 = 0.10 ≥ 0.09:
    class 0: H 0 → Δ = clip(−547.2, 15, 45) = 15 → 20 steps; class 1: 600·0.970951 − 547.2 = 35.37 → Δ 35 → 40 steps;
    class 2: H 1 → 52.8 → Δ 45 → 50 steps. Reading after the 5th forward (fed 0.08, the pre-issue-12 rule) would give
    H 1 and 50 steps to all three. CFG (w 3, the null row uniform) and τ 0.5 must not change H (pre-CFG, pre-τ)."""
    model = RatioStandIn()
    sampler = RefinementSampler(cfg_scale=3.0, cfg_interval=(0.0, 1.0), temperature=0.5, adaptive=AdaptiveSteps(),
                                max_batch=2, static_shapes=static_shapes)  # fmt: skip
    out = sampler.sample(model, torch.tensor([0, 1, 2]), [7, 8, 9])
    assert out.steps.tolist() == [20, 40, 50]
    torch.testing.assert_close(out.entropy, torch.tensor([0.0, H_40_60, 1.0], dtype=torch.float64), atol=1e-6, rtol=0)
    # fed kept fractions: warm-up i/50 for i < 5, then 0.1 + 0.9·(i − 5)/Δ for i = 5 … 4 + Δ (each row fed once, the
    # conditional rows; the null rows carry the same ratios under class 3)
    for class_id, delta in ((0, 15), (1, 35), (2, 45)):
        expected = [i / 50 for i in range(5)] + [0.1 + 0.9 * j / delta for j in range(delta)]
        assert model.ratios(class_id) == pytest.approx(expected, abs=1e-7)


def test_release_preset_and_old_rule_by_hand():
    """Release k 700, b −620: class 1: 700·0.970951 − 620 = 59.67 → Δ 45 → 50 steps; class 0 still 20. With t0 = 4 the
    entropy forward is index 4, fed 4/50 = 0.08 < 0.09 (what the old rule read for t0 5): H 1 for every class →
    700 − 620 = 80 → Δ = 50 − 4 = 46 → 50 steps."""
    release = RefinementSampler(cfg_scale=1.0, adaptive=AdaptiveSteps.preset("release"), max_batch=3)
    assert release.sample(RatioStandIn(), torch.tensor([0, 1, 2]), [1, 2, 3]).steps.tolist() == [20, 50, 50]
    early = RefinementSampler(cfg_scale=1.0, adaptive=AdaptiveSteps.preset("release", t0=4), max_batch=3)
    out = early.sample(RatioStandIn(), torch.tensor([0, 1, 2]), [1, 2, 3])
    assert out.steps.tolist() == [50, 50, 50] and out.entropy.tolist() == [1.0, 1.0, 1.0]


def test_t2x_minimum_of_ten_steps():
    """Tmin 10 (text models): class 0 gets Δ = clip(−547.2, 10 − 5, 45) = 5 → 10 steps."""
    sampler = RefinementSampler(cfg_scale=1.0, adaptive=AdaptiveSteps(t_min=10), max_batch=2)
    assert sampler.sample(RatioStandIn(), torch.tensor([0, 1]), [1, 2]).steps.tolist() == [10, 40]


# ---- counter-based noise ---------------------------------------------------------------------------------------------
def _lowbias32(x: int) -> int:
    """Chris Wellons' lowbias32 on Python ints (the independent reference for noise.hash32)."""
    x ^= x >> 16
    x = (x * 0x7FEB352D) & 0xFFFFFFFF
    x ^= x >> 15
    x = (x * 0x846CA68B) & 0xFFFFFFFF
    return x ^ (x >> 16)


def test_hash_equals_plain_32_bit_arithmetic():
    values = [0, 1, 2, 0xFFFFFFFF, 0x80000000, *torch.randint(0, 2**32, (500,), generator=torch.Generator().manual_seed(0)).tolist()]
    assert noise.hash32(torch.tensor(values)).tolist() == [_lowbias32(v) for v in values]
    assert _lowbias32(0) == 0 and _lowbias32(1) != 1


def _draws(seeds, step=0, stream=noise.CATEGORY, shape=(64, 32)):
    keys = noise.request_keys(torch.tensor(seeds))
    zeros = torch.zeros(len(seeds), dtype=torch.long)
    return noise.uniform(keys, zeros, zeros + step, stream, shape)


def test_uniforms_are_uniform_and_independent():
    u = _draws(list(range(50))).flatten().double()  # 102,400 draws
    assert 0.0 <= u.min() and u.max() < 1.0
    assert torch.equal(u * 2**24, torch.floor(u * 2**24))  # the 2^-24 grid: exact in float32
    assert stats.kstest(u.numpy(), "uniform").pvalue > 1e-3
    counts = torch.histc(u, bins=64, min=0.0, max=1.0).numpy()
    assert stats.chisquare(counts).pvalue > 1e-3
    base = _draws([5, 6]).flatten()
    for other in (_draws([6, 7]), _draws([5, 6], step=1), _draws([5, 6], stream=noise.KEEP),
                  _draws([5 + 2**40, 6 + 2**40])):  # fmt: skip
        corr = torch.corrcoef(torch.stack([base, other.flatten()]))[0, 1].item()
        assert abs(corr) < 4 / math.sqrt(base.numel()), corr  # 4σ of the correlation of independent draws
    assert not torch.equal(_draws([3]), _draws([3 + 2**33]))  # both halves of a 62-bit seed count


def test_randint_covers_the_range_evenly():
    keys = noise.request_keys(torch.arange(40))
    zeros = torch.zeros(40, dtype=torch.long)
    labels = noise.randint(keys, zeros, zeros, noise.LABELS, (256, 4), 16)
    assert labels.min() == 0 and labels.max() == 15
    assert stats.chisquare(torch.bincount(labels.flatten(), minlength=16).numpy()).pvalue > 1e-3


class FixedProbabilities:
    """Every element's prediction is (0.1, 0.2, 0.3, 0.4) at the first step; afterwards it returns its input with
    certainty, so the output keeps each first-step draw with probability p_1 (the kept mask) and y_rand otherwise."""

    num_tokens, groups, classes, null_class = 64, 16, 4, 1

    def __call__(self, state, class_ids, ratio):
        first = torch.log(torch.tensor([0.1, 0.2, 0.3, 0.4])).expand(*state.shape, 4)
        echo = 1e4 * torch.nn.functional.one_hot(state, 4).float()
        return torch.where((ratio == 0).view(-1, 1, 1, 1), first, echo)


@pytest.mark.parametrize("static_shapes", [False, True])
def test_sampled_labels_follow_the_predicted_distribution(static_shapes):
    """Distributional equality of the device-side draws: categorical frequencies match the prediction, and the kept
    fraction of the next state matches p_1 = 0.3 (binomial 4σ bounds)."""
    one = RefinementSampler(steps=1, cfg_scale=1.0, temperature=1.0, max_batch=8, static_shapes=static_shapes)
    labels = one.sample(FixedProbabilities(), torch.zeros(40, dtype=torch.long), list(range(40))).labels
    assert stats.chisquare(torch.bincount(labels.flatten(), minlength=4).numpy(), [64 * 16 * 40 * f for f in (0.1, 0.2, 0.3, 0.4)]).pvalue > 1e-3
    two = RefinementSampler(steps=2, schedule=[0.0, 0.3], cfg_scale=1.0, temperature=1.0, max_batch=8,
                            static_shapes=static_shapes)  # fmt: skip
    seeds = list(range(40))
    final = two.sample(FixedProbabilities(), torch.zeros(40, dtype=torch.long), seeds).labels
    first = one.sample(FixedProbabilities(), torch.zeros(40, dtype=torch.long), seeds).labels  # same draws at step 0
    keys, zeros = noise.request_keys(torch.tensor(seeds)), torch.zeros(40, dtype=torch.long)
    y_rand = noise.randint(keys, zeros, zeros, noise.LABELS, (64, 16), 4)
    assert torch.equal(final, torch.where(final == first, first, y_rand))  # every element is a draw or y_rand
    differs = first != y_rand
    kept = ((final == first) & differs).sum().item() / differs.sum().item()
    n = differs.sum().item()
    assert abs(kept - 0.3) < 4 * math.sqrt(0.3 * 0.7 / n), kept


# ---- fixed slots ---------------------------------------------------------------------------------------------------
class Recording:
    def __init__(self, model) -> None:
        self.model, self.rows = model, []
        for name in ("num_tokens", "groups", "classes", "null_class"):
            setattr(self, name, getattr(model, name))

    def __call__(self, state, class_ids, ratio):
        self.rows.append(state.shape[0])
        return self.model(state, class_ids, ratio)


def test_static_slots_shrink_at_the_tail_and_check_rarely():
    """6 requests of 4 fixed steps on 4 slots with CFG everywhere: 4 calls of 4 slots × 2 rows, then the last 2
    requests alone; shrinking halves the slots for them (8 → 4 rows). Without shrinking the first checkpoint (empty
    slots, queue of 6) waits 4 calls, the next one 4 more, then the loop stops: 3 checkpoints for 8 calls."""
    base = dict(steps=4, cfg_scale=2.0, cfg_interval=(0.0, 1.0), max_batch=4)
    cls, seeds = torch.zeros(6, dtype=torch.long), list(range(6))
    runs = {}
    for name, kwargs in (("dynamic", {}), ("static", {"static_shapes": True, "shrink_tail": False}),
                         ("shrink", {"static_shapes": True})):  # fmt: skip
        model = Recording(RatioStandIn())
        runs[name] = (RefinementSampler(**base, **kwargs).sample(model, cls, seeds), model.rows)
    (dyn, dyn_rows), (fixed, fixed_rows), (shrunk, shrunk_rows) = runs["dynamic"], runs["static"], runs["shrink"]
    assert dyn_rows == [8] * 4 + [4] * 4 and fixed_rows == [8] * 8 and shrunk_rows == [8] * 4 + [4] * 4
    assert torch.equal(dyn.labels, fixed.labels) and torch.equal(dyn.labels, shrunk.labels)
    assert (fixed.rows_forwarded, fixed.slot_rows, fixed.host_checks) == (64, 64, 3)
    assert (dyn.rows_forwarded, dyn.slot_rows) == (48, 64)  # dynamic rows skip the empty slots; capacity does not
    assert (shrunk.rows_forwarded, shrunk.slot_rows) == (48, 48)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_noise_is_the_same_on_cuda():
    keys = noise.request_keys(torch.tensor([1, 2**61 + 7]))
    zeros = torch.zeros(2, dtype=torch.long)
    cpu = noise.uniform(keys, zeros, zeros + 3, noise.KEEP, (256, 16))
    gpu = noise.uniform(keys.cuda(), zeros.cuda(), zeros.cuda() + 3, noise.KEEP, (256, 16))
    assert torch.equal(cpu, gpu.cpu())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_static_shapes_sync_with_the_host_only_at_checkpoints():
    """On the GPU, a static-shape run synchronises with the host only at its checkpoints (plus reading the results),
    while the dynamic layout selects rows (a sync) at every call. Counted with torch's sync debug mode."""
    import warnings

    from grn_lightning.generator.c2i.model import GRNC2ITransformer

    model = GRNC2ITransformer(size="tiny", variant="ind", channels=4, rounds=2, num_classes=10, grid_size=4,
                              in_context_tokens=2).cuda().eval()  # fmt: skip
    adaptive = AdaptiveSteps(t0=2, k=100.0, b=-56.0, t_min=3, t_max=9)
    cls, seeds = torch.arange(24, device="cuda") % 10, torch.arange(24, device="cuda")
    counts = {}
    for static in (False, True):
        sampler = RefinementSampler(cfg_scale=2.0, cfg_interval=(0.3, 1.0), adaptive=adaptive, max_batch=8,
                                    static_shapes=static)  # fmt: skip
        sampler.sample(model, cls, seeds)  # warm-up (lazy CUDA init syncs)
        with warnings.catch_warnings(record=True) as caught, torch.no_grad():
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                out = sampler.sample(model, cls, seeds)
            finally:
                torch.cuda.set_sync_debug_mode("default")
        counts[static] = (sum("synchroniz" in str(w.message) for w in caught), out)
    syncs, out = counts[True]
    assert out.host_checks < out.forward_calls / 2 and syncs <= out.host_checks + 4, (syncs, out.host_checks)
    dyn_syncs, dyn = counts[False]
    assert dyn_syncs >= dyn.forward_calls


def test_sampling_override_dicts_take_presets_and_the_new_knobs():
    from grn_lightning.generator.sampling.options import build_sampler, sampler_options, with_overrides

    sampler = build_sampler({"adaptive": {"preset": "release", "t_min": 10}, "static_shapes": True})
    assert (sampler.adaptive.k, sampler.adaptive.b, sampler.adaptive.cool_temperature) == (700.0, -620.0, True)
    assert sampler.adaptive.t_min == 10 and sampler.static_shapes and sampler.shrink_tail
    assert sampler_options(sampler)["static_shapes"] is True
    # a refinement sampler's options (with its batching knobs) switched to the mask-decoding baseline
    masked = with_overrides(RefinementSampler(static_shapes=True, cfg_scale=1.0), {"decoding": "mask", "steps": 3})
    out = masked.sample(RatioStandIn(), torch.tensor([0, 1]), [1, 2])
    assert out.labels.shape == (2, 4, 2)
