"""Device-resident packing (t2x/bucket_packing.py) against the per-sample host packing of packing.py (SPEC §5)."""

from __future__ import annotations

import pytest
import torch

from grn_lightning.generator.t2x.bucket_packing import pack_bucket, plan_bucket
from grn_lightning.generator.t2x.packing import PackingOverflowError, T2XSample, pack_samples

pytestmark = pytest.mark.usefixtures("one_thread")

GRID, G, K, C_TEXT = (3, 2, 3), 4, 2, 8  # 3 latent frames of 2×3 tokens, 4 bits per token
TEXT_LENGTHS = [5, 40, 0, 7, 3, 9]  # sample 1 (18 + 40 + 1 = 59 > 0.6 · 80) is dropped for length
I2V = [False, True, True, False, True, False]
RATIOS = [2 / 3, 2 / 3, 2 / 3, 3 / 4, 2 / 3, 3 / 4]  # two template ratios in one batch (same grid)


def _inputs(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    visual = GRID[0] * GRID[1] * GRID[2]
    tokens = torch.randint(0, K, (len(TEXT_LENGTHS), visual, G), generator=g, dtype=torch.uint8)
    texts = torch.randn(sum(TEXT_LENGTHS), C_TEXT, generator=g)
    return tokens, texts


def _plan(**kwargs):
    args = dict(budget=80, max_fraction=0.6, pad_multiple=8)
    args.update(kwargs)
    return plan_bucket(GRID, TEXT_LENGTHS, I2V, RATIOS, **args)


def test_device_packing_equals_per_sample_host_packing():
    """Same draws, two layouts: the packed batch of `pack_bucket` equals `pack_samples` over T2XSamples built from
    the clean labels (I2V: frame 0 clean, frames 1.. predicted), the texts, the template ratios and the corrupted
    states read off `pack_bucket`'s own visual slots."""
    tokens, texts = _inputs()
    plan = _plan()
    p = torch.tensor([0.2, 0.9, 0.5, 0.7, 0.4, 0.6])
    packed = pack_bucket(plan, tokens, texts, p, K, torch.Generator().manual_seed(1))
    frame, (t, h, w) = GRID[1] * GRID[2], GRID
    starts = torch.tensor([0, *TEXT_LENGTHS]).cumsum(0)
    samples = []
    for j, i in enumerate(packed.sample_indices):  # rebuild each packed sample as the host path takes it
        row, start = int(packed.sample_row[j]), int(packed.sample_start[j])
        first = 1 if I2V[i] else 0
        state = packed.state[row, start : start + (t - first) * frame].reshape(t - first, h, w, G)
        clean = packed.state[row, start + (t - first) * frame : start + t * frame]
        samples.append(T2XSample(
            state=state.long(), text=texts[starts[i] : starts[i + 1]], ratio=float(packed.ratio[j]),
            labels=tokens[i].view(t, h, w, G)[first:].long(), clean_first=tokens[i].view(t, h, w, G)[0].long() if first else None,
            aspect_ratio=RATIOS[i],
        ))  # fmt: skip
        if first:  # the given first frame is the clean labels, never corrupted
            assert torch.equal(clean.long(), tokens[i, :frame].long())
    ref = pack_samples(samples, budget=80, max_fraction=1.0, pad_multiple=8)
    assert packed.dropped == [1] and packed.sample_indices == [0, 2, 3, 4, 5]
    assert ref.segment_ids.shape == packed.segment_ids.shape and packed.state.dtype == torch.uint8
    for name in ("state", "labels", "loss_mask", "positions", "segment_ids", "text", "text_index", "ratio",
                 "ratio_index", "sample_row", "sample_start", "sample_visual", "sample_weights"):  # fmt: skip
        ours, theirs = getattr(packed, name), getattr(ref, name)
        assert torch.equal(ours.to(theirs.dtype), theirs), name


def test_realised_ratio_and_corruption_follow_the_drawn_probability():
    tokens, texts = _inputs()
    plan = _plan(max_fraction=1.0, budget=400)
    ones = pack_bucket(plan, tokens, texts, torch.ones(6), K)
    assert torch.equal(ones.state[ones.loss_mask], ones.labels[ones.loss_mask]) and torch.equal(ones.ratio, torch.ones(6))
    zeros = pack_bucket(plan, tokens, texts, torch.zeros(6), K, torch.Generator().manual_seed(0))
    assert torch.equal(zeros.ratio, torch.zeros(6))
    # I2V clean frames stay clean even at p = 0; their positions are inputs only
    assert zeros.loss_mask.sum() == sum(18 - (6 if f else 0) for f in I2V)
    for j, i in enumerate(zeros.sample_indices):
        if I2V[i]:
            start = int(zeros.sample_start[j]) + 12  # after the 2 noisy frames of 6 tokens
            assert torch.equal(zeros.state[int(zeros.sample_row[j]), start : start + 6], tokens[i, :6])
    big = torch.randint(0, K, (64, 18, G), generator=torch.Generator().manual_seed(2), dtype=torch.uint8)
    many = plan_bucket(GRID, [2] * 64, [False] * 64, [1.0] * 64, budget=64 * 21, max_fraction=1.0)
    half = pack_bucket(many, big, torch.zeros(128, C_TEXT), torch.full((64,), 0.5), K, torch.Generator().manual_seed(3))
    # each element kept w.p. 0.5, else uniform over 2 classes: state == label w.p. 0.75
    agree = (half.state[half.loss_mask] == half.labels[half.loss_mask]).float().mean()
    assert 0.72 < agree < 0.78 and 0.45 < half.ratio.mean() < 0.55


def test_plan_errors_and_max_rows():
    with pytest.raises(PackingOverflowError):
        _plan(budget=16)
    with pytest.raises(ValueError, match="I2V"):
        plan_bucket((1, 2, 2), [1], [True], [1.0], budget=64, max_fraction=1.0)
    capped = _plan(max_rows=1, pad_to_budget=True)
    assert capped.rows == 1 and capped.length == 80 and 1 in capped.dropped
    assert sum(capped.lengths) <= 80 and capped.kept_indices[0] == 0


def test_attention_fill_counts_the_scores_that_pair_tokens_of_one_sample():
    """Worked by hand: 2×2 images with texts of 3, 1, 2 tokens are 8, 6 and 7 packed tokens; next-fit into 16-token
    rows gives rows [8, 6] and [7], padded to the longest row, 14. A dense masked kernel computes 2 · 14² scores, of
    which 8² + 6² + 7² pair tokens of one sample: 149 / 392."""
    plan = plan_bucket((1, 2, 2), [3, 1, 2], [False] * 3, [1.0] * 3, budget=16, max_fraction=1.0)
    assert (plan.rows, plan.length, plan.lengths) == (2, 14, [8, 6, 7])
    assert plan.attention_fill == pytest.approx(149 / 392)
    assert plan.row_fill == pytest.approx(21 / 28)  # 8 + 6 + 7 sample tokens in 2 rows of 14
    alone = plan_bucket((1, 2, 2), [3, 3], [False] * 2, [1.0] * 2, budget=8, max_fraction=1.0)
    assert alone.attention_fill == 1.0  # one sample a row, no padding: nothing wasted
