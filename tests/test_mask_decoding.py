"""Mask-based decoding (paper Table 7 baseline): decided elements are never revised, unlike refinement."""

from __future__ import annotations

import pytest
import torch

from grn_lightning.generator.sampling.options import build_sampler

pytestmark = pytest.mark.usefixtures("one_thread")


class _RatioSwitch(torch.nn.Module):
    """Predicts label 0 for every element while the input kept fraction is below 0.5, label 1 from 0.5 on
    (near-certain logits), whatever the state: the answer changes half-way through decoding."""

    num_tokens, groups, classes, null_class = 8, 2, 4, 10

    def forward(self, state, class_ids, ratio):
        logits = torch.full((*state.shape, self.classes), -30.0)
        late = ratio >= 0.5
        logits[~late, ..., 0] = 30.0
        logits[late, ..., 1] = 30.0
        return logits


@pytest.mark.parametrize("selection", ["random", "confidence"])
def test_mask_decoding_keeps_early_decisions_refinement_revises_them(selection):
    # linear schedule, T = 4: decided fractions 1/4, 1/2, 3/4, 1. Input fractions 0, 1/4 predict 0 (steps 1-2 decide
    # 8 of 16 elements as 0); input fractions 1/2, 3/4 predict 1 (steps 3-4 decide the other 8 as 1). Hand-worked:
    # mask decoding ends with exactly 8 zeros and 8 ones per sample; refinement resamples everything and ends all 1.
    options = dict(steps=4, schedule="linear", cfg_scale=1.0, temperature=1.0, selection=selection)
    ids, seeds = torch.tensor([0, 1, 2]), [5, 6, 7]
    masked = build_sampler({**options, "decoding": "mask"}).sample(_RatioSwitch(), ids, seeds)
    assert masked.labels.shape == (3, 8, 2)
    assert [(row == 0).sum().item() for row in masked.labels] == [8, 8, 8]
    assert [(row == 1).sum().item() for row in masked.labels] == [8, 8, 8]
    assert masked.forward_calls == 4 and masked.steps.tolist() == [4, 4, 4]
    refined = build_sampler(options).sample(_RatioSwitch(), ids, seeds)
    assert torch.equal(refined.labels, torch.ones_like(refined.labels))


def test_mask_decoding_options_fail_clearly():
    with pytest.raises(ValueError, match="decoding"):
        build_sampler({"decoding": "maskgit"})
    with pytest.raises(ValueError, match="fixed steps"):
        build_sampler({"decoding": "mask", "adaptive": {"t0": 2}})
