"""3D RoPE positions of every aspect-ratio bucket under every pixel budget (SPEC §5, §8).

The expected table is computed here from SPEC's words with exact rational arithmetic (fractions + integer square
roots), not with the float code under test: canvas area 225·75; for the bucket's template ratio r = h/w,
span_w = ⌊√(area / r)⌋ and span_h = ⌊r·√(area / r)⌋ = ⌊√(area · r)⌋; a grid ph × pw sits at rows round(i·span_h/ph)
and columns round(j·span_w/pw), ties to even, with the product in float32 as the release computes it
(`torch.arange(ph) * (span / ph)`, grn/models/rope.py): emulated here with numpy. Four of the 90 grids have exact
ties where float32 and rational rounding differ (e.g. 0.92M 2:1 column 27: 27·91/42 = 58.5 exactly, float32 gives
58.500004 → 59), and the test pins the release's float32 answer.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
import torch

from grn_lightning.data.buckets import ASPECT_RATIOS, PIXEL_BUDGETS, bucket_for_ratio, nearest_bucket
from grn_lightning.generator.t2x.packing import T2XSample
from grn_lightning.generator.t2x.rope3d import visual_positions

# SPEC §8's 15 ratios h/w, written as exact fractions (1.16 is the release's decimal, not 7/6)
RATIOS = [Fraction(3), Fraction(5, 2), Fraction(2), Fraction(16, 9), Fraction(3, 2), Fraction(4, 3), Fraction(116, 100),
          Fraction(1), Fraction(100, 116), Fraction(3, 4), Fraction(2, 3), Fraction(9, 16), Fraction(1, 2),
          Fraction(2, 5), Fraction(1, 3)]  # fmt: skip
SIDES = {"0.06M": 16, "0.25M": 32, "0.41M": 40, "0.92M": 60, "1M": 64, "2M": 90}
AREA = 225 * 75


def _floor_sqrt(x: Fraction) -> int:
    return math.isqrt(x.numerator // x.denominator)  # ⌊√x⌋ = isqrt(⌊x⌋) for x ≥ 0


def _expected(r: Fraction, side: int) -> tuple[int, int, list[int], list[int]]:
    width = math.sqrt(side * side / float(r))  # SPEC §8 grid: pw = round(√(s²/r)), ph = round(√(s²/r)·r)
    pw, ph = round(width), round(width * float(r))
    span_w, span_h = _floor_sqrt(AREA / r), _floor_sqrt(AREA * r)
    return ph, pw, _release_round(ph, span_h), _release_round(pw, span_w)


def _release_round(n: int, span: int) -> list[int]:
    step = np.float32(span / n)  # python float64 quotient, then a float32 tensor product
    return [int(np.rint(np.float32(i) * step)) for i in range(n)]


def test_float32_ties_differ_from_rational_rounding_where_the_docstring_says():
    assert round(Fraction(27 * 91, 42)) == 58 and _release_round(42, 91)[27] == 59


def test_table_matches_the_specs_two_examples():
    assert (_floor_sqrt(AREA / Fraction(1)), _floor_sqrt(AREA * Fraction(1))) == (129, 129)
    assert (_floor_sqrt(AREA * Fraction(9, 16)), _floor_sqrt(AREA / Fraction(9, 16))) == (97, 173)  # span_h, span_w


@pytest.mark.parametrize("budget", list(SIDES))
def test_every_bucket_gets_the_release_positions(budget):
    assert PIXEL_BUDGETS == SIDES and len(ASPECT_RATIOS) == len(RATIOS)
    for template, exact in zip(ASPECT_RATIOS, RATIOS):
        assert template == pytest.approx(float(exact), rel=1e-12)
        ph, pw, rows, cols = _expected(exact, SIDES[budget])
        bucket = bucket_for_ratio(template, budget)
        assert (bucket.latent_height, bucket.latent_width) == (ph, pw), (budget, template)
        expected = torch.tensor([[600, rows[i], cols[j]] for i in range(ph) for j in range(pw)])
        got = visual_positions(1, ph, pw, bucket.ratio)  # 3:1 and 1:3 included: no bucket may raise
        assert torch.equal(got, expected), (budget, template)
        # without an explicit ratio the grid snaps to its template, never to its own rounded ratio
        assert torch.equal(visual_positions(1, ph, pw), expected), (budget, template)
        # the packing layer reads the ratio carried by the sample
        sample = T2XSample(torch.zeros(1, ph, pw, 1, dtype=torch.long), torch.zeros(0, 4), 0.5, aspect_ratio=bucket.ratio)
        assert torch.equal(sample.positions()[: ph * pw], expected)


def test_nine_sixteen_at_041m_is_97_by_173_not_the_grids_97_by_172():
    bucket = bucket_for_ratio(9 / 16, "0.41M")
    assert (bucket.latent_height, bucket.latent_width) == (30, 53)
    pos = visual_positions(1, 30, 53, bucket.ratio)
    # last column round(52·173/53) = round(169.74) = 170 (a 172-wide span would give round(168.75) = 169)
    assert pos[:53, 2].max().item() == 170
    assert pos[::53, 1].max().item() == round(29 * 97 / 30)  # 93.77 → 94


@pytest.mark.parametrize("height,width,ratio", [(4000, 100, 3.0), (100, 4000, 1 / 3), (1000, 1000, 1.0), (1080, 1920, 9 / 16)])
def test_media_outside_the_table_go_to_the_nearest_bucket(height, width, ratio):
    for budget in SIDES:
        bucket = nearest_bucket(height, width, budget)
        assert bucket.ratio == ratio
        visual_positions(1, bucket.latent_height, bucket.latent_width, bucket.ratio)  # valid positions
