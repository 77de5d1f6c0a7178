"""The one FLOP counter (grn_lightning/training/flops.py, SPEC §11) against hand-worked counts."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from grn_lightning.training.flops import c2i_step_flops, split_parameters, training_flops


class _Toy(nn.Module):
    depth, width = 1, 4

    def __init__(self) -> None:
        super().__init__()
        self.classes = nn.Embedding(10, 4)  # lookup: 40 parameters, no FLOPs
        self.pos = nn.Parameter(torch.zeros(5, 4))  # added to activations: 20 parameters, no FLOPs
        self.blocks = nn.Sequential(nn.Linear(4, 4, bias=False))  # per token: 16
        self.ada = nn.Linear(4, 8)  # once per sample: 32 + 8 = 40
        self.head = nn.Linear(4, 2)  # per token: 8 + 2 = 10


def test_hand_worked_toy_step():
    split = split_parameters(_Toy())
    assert split.per_token == {"blocks": 16, "head": 10} and split.per_sample == 40 and split.lookup == 60
    flops = training_flops(_Toy(), [3, 5], applied={"head": 5})
    assert flops.per_token == 6 * 16 * 8 + 6 * 10 * 5  # blocks on all 8 tokens, head on 5
    assert flops.per_sample == 6 * 40 * 2
    assert flops.attention == 12 * 1 * 4 * (3 * 3 + 5 * 5)  # inside each sample only
    with pytest.raises(ValueError, match="not per-token"):
        training_flops(_Toy(), [3], applied={"ada": 1})


def test_grn_b_per_sample_parameters_are_44_5m_of_130_7m():
    from grn_lightning.generator.c2i.model import GRNC2ITransformer

    with torch.device("meta"):
        model = GRNC2ITransformer(size="B")
    split = split_parameters(model)
    # by hand, width 768, 12 blocks: adaLN Linear(768 → 6·768) with bias per block, final adaLN Linear(768 → 2·768),
    # ratio MLP Linear(256 → 768) + Linear(768 → 768); SPEC §11 rounds the sum to 44.5M of 130.7M
    ada = 768 * 4608 + 4608
    final = 768 * 1536 + 1536
    ratio = 256 * 768 + 768 + 768 * 768 + 768
    assert split.per_sample == 12 * ada + final + ratio == 44_491_776
    assert split.lookup == 1001 * 768 + 32 * 768  # class table (1000 + null) and the 32 in-context positions
    assert round(split.total / 1e5) == 1307
    # one step of 256 images: blocks on 288 tokens, embedding and head on 256, adaLN once per image
    flops = c2i_step_flops(model, 256)
    blocks = split.per_token["blocks"]
    embed_head = split.per_token["token_embed"] + split.per_token["head"]
    assert flops.per_token == 6 * (blocks * 256 * 288 + embed_head * 256 * 256)
    assert flops.per_sample == 6 * 44_491_776 * 256 and flops.attention == 12 * 12 * 768 * 256 * 288**2
    # the old count (6 · all parameters · every token) overstated this step by half
    old = 256 * 288 * (6 * split.total + 12 * 12 * 768 * 288)
    assert 1.45 < old / flops.total < 1.55


def test_grn_l_per_sample_parameters_match_spec():
    from grn_lightning.generator.c2i.model import GRNC2ITransformer

    with torch.device("meta"):
        model = GRNC2ITransformer(size="L")
    assert round(split_parameters(model).per_sample / 1e5) == 1546  # SPEC §11: 154.6M of GRN-L's 458.3M
