"""3D RoPE positions and angles, canvas normalisation, greedy packing, loss weights and the packed loss (SPEC §5)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from grn_lightning.generator.layers import rotary_cos_sin
from grn_lightning.generator.t2x.packing import T2XSample, greedy_pack, pack_rows, pack_samples, packed_loss
from grn_lightning.generator.t2x.rope3d import (
    apply_rope_interleaved,
    canvas_spans,
    ratio_position,
    rope3d_angles,
    rope3d_frequencies,
    rope3d_pairs,
    text_positions,
    visual_positions,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def _sample(t, h, w, n_text, g=4, seed=0, clean=False, labels=True, ratio=0.5) -> T2XSample:
    gen = torch.Generator().manual_seed(seed)
    return T2XSample(
        state=torch.randint(0, 2, (t, h, w, g), generator=gen),
        text=torch.randn(n_text, 8, generator=gen),
        ratio=ratio,
        labels=torch.randint(0, 2, (t, h, w, g), generator=gen) if labels else None,
        clean_first=torch.randint(0, 2, (h, w, g), generator=gen) if clean else None,
    )


def test_pair_split_and_frequencies():
    assert rope3d_pairs(128) == (21, 21, 22)
    inv, axis = rope3d_frequencies(128)
    assert inv.shape == axis.shape == (64,)
    assert axis.tolist() == [0] * 21 + [1] * 21 + [2] * 22
    # inv_freq_j = 10000^(-j/n) per axis: n = 21 for time and height, 22 for width
    expected = [10000 ** (-j / 21) for j in range(21)] * 2 + [10000 ** (-j / 22) for j in range(22)]
    torch.testing.assert_close(inv, torch.tensor(expected, dtype=torch.float32), rtol=1e-6, atol=0)
    with pytest.raises(ValueError, match="head_dim"):
        rope3d_pairs(7)


def test_hand_worked_visual_positions_small_grid():
    # grid h x w = 2 x 4, aspect ratio from the grid r = 0.5. Canvas area 225*75 = 16875:
    # span_w = int(sqrt(16875 / 0.5)) = int(183.71) = 183, span_h = int(0.5 * 183.71) = int(91.86) = 91.
    assert canvas_spans(0.5) == (91.0, 183.0)
    # rows round(i * 91/2) = 0, round(45.5) = 46; columns round(j * 183/4) = 0, 46 (45.75), 92 (91.5), 137 (137.25)
    pos = visual_positions(2, 2, 4)
    assert pos.shape == (16, 3)
    rows, cols = [0, 46], [0, 46, 92, 137]
    expected = [[600 + f, rows[i], cols[j]] for f in range(2) for i in range(2) for j in range(4)]  # (t, h, w) order
    assert pos.tolist() == expected
    # I2V noisy frames start at 601
    assert visual_positions(1, 2, 4, time_offset=1)[:, 0].tolist() == [601] * 8


def test_canvas_spans_of_known_ratios():
    assert canvas_spans(3) == (225.0, 75.0)  # the extreme ratio fills the canvas height
    assert canvas_spans(1 / 3) == (75.0, 225.0)
    assert canvas_spans(1.0) == (129.0, 129.0)  # int(sqrt(16875)) = int(129.9)
    assert canvas_spans(1.0, integer_spans=False) == pytest.approx((math.sqrt(16875),) * 2)
    with pytest.raises(ValueError, match="aspect ratio"):
        canvas_spans(3.5)
    with pytest.raises(ValueError, match="canvas span"):
        visual_positions(1, 130, 130)  # denser than the canvas


@pytest.mark.parametrize("r,grids", [(1.0, [(16, 16), (32, 32), (64, 64)]), (0.5, [(16, 32), (32, 64), (45, 90)])])
def test_same_aspect_ratio_spans_the_same_canvas(r, grids):
    span_h, span_w = canvas_spans(r)
    coarse = None
    for h, w in grids:
        assert canvas_spans(h / w) == (span_h, span_w)
        pos = visual_positions(1, h, w)
        # every resolution starts at 0 and ends one step short of the same span
        assert pos[:, 1].min() == 0 and pos[:, 2].min() == 0
        assert span_h - span_h / h - 0.5 <= pos[:, 1].max() <= span_h
        assert span_w - span_w / w - 0.5 <= pos[:, 2].max() <= span_w
        if coarse is None:
            coarse = pos.view(h, w, 3)
        elif h == 2 * coarse.shape[0]:  # exact halving: the coarse grid's positions are every other fine one
            assert torch.equal(pos.view(h, w, 3)[::2, ::2, 1:], coarse[..., 1:])


def test_text_and_ratio_positions():
    assert text_positions(3).tolist() == [[0, 0, 0], [1, 0, 0], [2, 0, 0]]
    assert text_positions(512)[-1].tolist() == [511, 0, 0]
    assert ratio_position().tolist() == [[512, 0, 0]]
    with pytest.raises(ValueError, match="text length"):
        text_positions(513)


def test_angles_and_interleaved_rotation_hand_worked():
    a = rope3d_angles(torch.tensor([[601, 46, 137]]), 128)[0]
    assert a[0] == 601 and a[21] == 46 and a[42] == 137  # j = 0 of each axis: frequency 1
    torch.testing.assert_close(a[1], torch.tensor(601 * 10000 ** (-1 / 21)), rtol=1e-6, atol=0)
    torch.testing.assert_close(a[43], torch.tensor(137 * 10000 ** (-1 / 22)), rtol=1e-6, atol=0)
    # head_dim 6: one pair per axis, all frequencies 1; position (t, h, w) = (1, 2, 3) rotates the adjacent pairs
    # (x0, x1) by 1, (x2, x3) by 2, (x4, x5) by 3.
    angles = rope3d_angles(torch.tensor([[1, 2, 3]]), 6)
    assert angles.tolist() == [[1.0, 2.0, 3.0]]
    x = torch.tensor([[1.0, 0.0, 0.0, 1.0, 1.0, 1.0]])
    c, s = math.cos, math.sin
    expected = torch.tensor([[c(1), s(1), -s(2), c(2), c(3) - s(3), c(3) + s(3)]])
    torch.testing.assert_close(apply_rope_interleaved(x, *rotary_cos_sin(angles)), expected, rtol=0, atol=1e-6)


def test_rotation_is_relative_in_every_axis():
    gen = torch.Generator().manual_seed(0)
    q, k = torch.randn(2, 1, 128, generator=gen)
    def dot(pq, pk):
        rq = apply_rope_interleaved(q, *rotary_cos_sin(rope3d_angles(torch.tensor([pq]), 128)))
        rk = apply_rope_interleaved(k, *rotary_cos_sin(rope3d_angles(torch.tensor([pk]), 128)))
        return (rq * rk).sum()
    torch.testing.assert_close(dot([600, 3, 5], [601, 10, 2]), dot([610, 13, 15], [611, 20, 12]), rtol=1e-4, atol=1e-4)
    assert (dot([600, 3, 5], [601, 10, 2]) - dot([600, 3, 5], [601, 10, 3])).abs() > 1e-3


def test_sample_layout_and_positions_in_packed_order():
    s = _sample(2, 2, 3, 4, clean=True)
    assert (s.num_visual, s.num_clean, s.num_tokens) == (12, 6, 12 + 6 + 4 + 1)
    batch = pack_rows([[s]])
    pos = batch.positions[0]
    assert pos[:12, 0].tolist() == [601] * 6 + [602] * 6  # noisy frames after the clean one
    assert pos[12:18, 0].tolist() == [600] * 6 and torch.equal(pos[12:18, 1:], pos[:6, 1:])  # clean frame 0
    assert pos[18:22].tolist() == [[k, 0, 0] for k in range(4)] and pos[22].tolist() == [512, 0, 0]
    assert torch.equal(batch.state[0, 12:18], s.clean_first.reshape(6, 4))  # clean tokens are inputs ...
    assert batch.loss_mask[0].tolist() == [True] * 12 + [False] * 11  # ... never targets
    assert batch.text_index.tolist() == [18, 19, 20, 21] and batch.ratio_index.tolist() == [22]


def test_greedy_pack_respects_budget_and_drops_long_samples():
    # budget 100, cap 40: 41 is dropped, exactly 40 is kept; next-fit in arrival order
    plan = greedy_pack([30, 40, 35, 41, 20, 25, 10, 99], budget=100, max_fraction=0.4)
    assert plan.rows == [[0, 1], [2, 4, 5, 6]] and plan.dropped == [3, 7]
    # with real samples: lengths = visual + text + 1
    samples = [_sample(1, 2, 2, 3, seed=i) for i in range(6)]  # 8 tokens each
    samples.insert(2, _sample(1, 4, 4, 3, seed=9))  # 20 tokens > 0.4 * 40 = 16: dropped
    batch = pack_samples(samples, budget=40, max_fraction=0.4)
    assert batch.dropped == [2] and batch.num_dropped == 1
    assert batch.sample_indices == [0, 1, 3, 4, 5, 6]  # rows [0, 1, 3, 4, 5] (exactly 40 tokens) and [6]
    assert batch.sample_row.tolist() == [0, 0, 0, 0, 0, 1]
    assert batch.state.shape[:2] == (2, 40) and (batch.segment_ids >= 0).sum(1).tolist() == [40, 8]
    assert pack_samples(samples, budget=40, pad_to_budget=True).state.shape[1] == 40
    with pytest.raises(ValueError, match="exceed"):
        pack_samples([samples[2]], budget=40)


def test_segment_ids_are_global_and_padding_is_minus_one():
    batch = pack_rows([[_sample(1, 1, 2, 1), _sample(1, 1, 1, 0)], [_sample(1, 2, 1, 2)]], pad_multiple=8)
    assert batch.segment_ids.tolist() == [[0] * 4 + [1] * 2 + [-1] * 2, [2] * 5 + [-1] * 3]
    assert batch.ratio_index.tolist() == [3, 5, 8 + 4]


def test_loss_weights_proportional_to_sqrt_visual_tokens_sum_one_per_row():
    rows = [[_sample(1, 2, 2, 1), _sample(1, 4, 4, 1)], [_sample(1, 3, 3, 2)]]  # 4 and 16 visual tokens; 9
    batch = pack_rows(rows)
    torch.testing.assert_close(batch.sample_weights, torch.tensor([2 / 6, 4 / 6, 1.0]))
    # the loss derives the same weights from the mask and the segment ids
    logits = torch.randn(*batch.labels.shape, 2)
    out = packed_loss(logits, batch.labels, batch.loss_mask, batch.segment_ids)
    torch.testing.assert_close(out.weights, batch.sample_weights)
    assert out.rows.tolist() == [0, 0, 1]


def test_packed_loss_matches_hand_computation():
    rows = [[_sample(1, 2, 3, 2, seed=1), _sample(2, 1, 2, 1, seed=2, clean=True)], [_sample(1, 1, 3, 0, seed=3)]]
    batch = pack_rows(rows, pad_multiple=4)
    gen = torch.Generator().manual_seed(4)
    logits = torch.randn(*batch.labels.shape, 2, generator=gen)
    out = packed_loss(logits, batch.labels, batch.loss_mask, batch.segment_ids)
    per_sample = []
    for i, s in enumerate([s for row in rows for s in row]):
        lg = batch.sample_logits(logits, i)  # [n, G, K]
        ce = F.cross_entropy(lg.reshape(-1, 2), s.labels.reshape(-1), reduction="none").view(lg.shape[:2])
        per_sample.append(ce.mean(1).mean(0))  # mean over bits, then over the sample's visual tokens
    per_sample = torch.stack(per_sample)
    torch.testing.assert_close(out.per_sample, per_sample)
    w0 = torch.tensor([6.0, 4.0]).sqrt()
    expected = ((w0 / w0.sum() * per_sample[:2]).sum() + per_sample[2]) / 2  # mean over the two rows
    torch.testing.assert_close(out.loss, expected)


def test_i2v_clean_tokens_and_padding_do_not_enter_the_loss():
    s = _sample(2, 2, 2, 3, clean=True, seed=5)
    batch = pack_rows([[s]], pad_multiple=32)
    logits = torch.randn(*batch.labels.shape, 2)
    base = packed_loss(logits, batch.labels, batch.loss_mask, batch.segment_ids).loss
    poked = logits.clone()
    poked[0, 8:, :, 1] += 100.0  # clean frame, text, ratio and padding positions
    torch.testing.assert_close(packed_loss(poked, batch.labels, batch.loss_mask, batch.segment_ids).loss, base)
    poked[0, 7, :, 1] += 100.0  # the last noisy token does count
    assert (packed_loss(poked, batch.labels, batch.loss_mask, batch.segment_ids).loss - base).abs() > 1e-3


def test_samples_without_labels_are_inputs_only():
    rows = [[_sample(1, 2, 2, 1, seed=6), _sample(1, 3, 3, 1, seed=7, labels=False)]]
    batch = pack_rows(rows)
    assert batch.sample_weights.tolist() == [1.0, 0.0] and batch.loss_mask[0, 4:].sum() == 0


def test_bad_samples_fail_clearly():
    with pytest.raises(ValueError, match="state"):
        T2XSample(state=torch.zeros(2, 2, 4, dtype=torch.long), text=torch.zeros(1, 8), ratio=0.5)
    with pytest.raises(ValueError, match="clean_first"):
        T2XSample(state=torch.zeros(1, 2, 2, 4, dtype=torch.long), text=torch.zeros(1, 8), ratio=0.5,
                  clean_first=torch.zeros(3, 2, 4, dtype=torch.long))  # fmt: skip
    with pytest.raises(ValueError, match="text"):
        T2XSample(state=torch.zeros(1, 2, 2, 4, dtype=torch.long), text=torch.zeros(513, 8), ratio=0.5)
    with pytest.raises(ValueError, match="disagree"):
        pack_rows([[_sample(1, 1, 1, 1, g=4), _sample(1, 1, 1, 1, g=5)]])
