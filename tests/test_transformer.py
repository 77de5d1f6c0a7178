"""GRN C2I transformer: SPEC §4 sizes, 2D RoPE exact values, adaLN-zero init, batch consistency, layouts."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from grn_lightning.generator.layers import apply_rope, rope_2d_angles, rotary_cos_sin, swiglu_hidden
from grn_lightning.generator.c2i.model import GRN_C2I, GRNC2ITransformer
from grn_lightning.hbq import layout_dims

SPEC_PARAMS = {"B": 130e6, "L": 458e6, "H": 952e6, "G": 2e9}
SPEC_SHAPES = {"B": (12, 768, 12), "L": (24, 1024, 16), "H": (32, 1280, 16), "G": (40, 1664, 16)}

pytestmark = pytest.mark.usefixtures("one_thread")



def _randomise(model: nn.Module, seed: int = 0) -> nn.Module:
    """adaLN-zero makes a fresh model output zeros; give every parameter random values for the tests."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
    return model


def _tiny(variant: str = "ind", **kw) -> GRNC2ITransformer:
    args = dict(size="tiny", variant=variant, channels=4, rounds=2, num_classes=10, grid_size=(3, 4), in_context_tokens=2)
    args.update(kw)
    return _randomise(GRNC2ITransformer(**args).eval())


@pytest.mark.parametrize("size", ["B", "L", "H", "G"])
@pytest.mark.parametrize("variant", ["ind", "bit"])
def test_full_sizes_build_on_meta_with_spec_parameter_counts(size, variant):
    with torch.device("meta"):
        model = GRNC2ITransformer(size=size, variant=variant)
    depth, width, heads = SPEC_SHAPES[size]
    assert (model.depth, model.width, model.heads) == (depth, width, heads)
    assert len(model.blocks) == depth and isinstance(model.blocks, nn.ModuleList)
    n = sum(p.numel() for p in model.parameters())
    assert abs(n / SPEC_PARAMS[size] - 1) < 0.03, f"GRN-{size} {variant}: {n / 1e6:.1f}M params"
    assert (model.groups, model.classes) == ((16, 16) if variant == "ind" else (64, 2))


def test_reset_parameters_after_meta_construction():
    with torch.device("meta"):
        model = GRNC2ITransformer(size="tiny", num_classes=10, grid_size=4)
    model.to_empty(device="cpu")
    model.reset_parameters()
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert torch.equal(model.blocks[0].attn.q_norm.weight, torch.ones(32))
    state = torch.randint(0, 16, (1, 16, 16))
    assert torch.count_nonzero(model(state, torch.tensor([3]), torch.tensor([0.5]))) == 0


def test_swiglu_hidden_is_about_8_thirds():
    assert [swiglu_hidden(GRN_C2I[s].width) for s in "BLHG"] == [2048, 2730, 3413, 4437]


def test_layout_dims_and_bad_options():
    assert layout_dims("ind", 16, 4) == (16, 16)
    assert layout_dims("bit", 16, 4) == (64, 2)
    with pytest.raises(ValueError, match="variant"):
        GRNC2ITransformer(size="tiny", variant="bits")
    with pytest.raises(ValueError, match="size"):
        GRNC2ITransformer(size="XL")
    with pytest.raises(ValueError, match="channels"):
        GRNC2ITransformer(size="tiny", channels=0)


def test_rope_hand_worked_values():
    # head_dim 4: one rotary pair per axis, inv_freq = 1. Pair 0 = (x0, x2) rotates by the row, pair 1 = (x1, x3)
    # by the column. Grid 2x3, one prefix token; token 1 + (r*3 + c).
    angles = rope_2d_angles(2, 3, head_dim=4, num_prefix=1)
    assert angles.shape == (7, 2)
    assert angles[0].tolist() == [0.0, 0.0]
    assert angles[1 + 1 * 3 + 2].tolist() == [1.0, 2.0]  # row 1, col 2
    x = torch.tensor([1.0, 0.0, 0.0, 1.0])
    out = apply_rope(x.expand(7, 4), *rotary_cos_sin(angles))[1 + 1 * 3 + 2]
    # (x0, x2) = (1, 0) by angle 1 -> (cos1, sin1); (x1, x3) = (0, 1) by angle 2 -> (-sin2, cos2)
    expected = torch.tensor([math.cos(1), -math.sin(2), math.sin(1), math.cos(2)])
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)
    assert torch.equal(apply_rope(x.expand(7, 4), *rotary_cos_sin(angles))[0], x)  # prefix token: identity
    # head_dim 8: two pairs per axis, inv_freq = [1, 10000^(-1/2)] = [1, 0.01].
    a8 = rope_2d_angles(1, 2, head_dim=8, theta=10000.0)
    torch.testing.assert_close(a8[1], torch.tensor([0.0, 0.0, 1.0, 0.01]))


def test_rope_preserves_norm_and_is_relative():
    gen = torch.Generator().manual_seed(1)
    q, k = torch.randn(2, 8, generator=gen)
    a = rope_2d_angles(4, 4, head_dim=8)
    rope = rotary_cos_sin(a)
    rq, rk = apply_rope(q.expand(16, 8), *rope), apply_rope(k.expand(16, 8), *rope)
    torch.testing.assert_close(rq.norm(dim=-1), q.norm().expand(16))
    # dot product depends only on the offset: (0,0)·(1,1) == (2,2)·(3,3)
    torch.testing.assert_close(rq[0] @ rk[5], rq[10] @ rk[15], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("variant", ["ind", "bit"])
def test_adaln_zero_init_gives_uniform_logits(variant):
    model = GRNC2ITransformer(size="tiny", variant=variant, channels=4, rounds=2, num_classes=10, grid_size=3)
    state = torch.randint(0, model.classes, (2, 9, model.groups))
    out = model(state, torch.tensor([1, 10]), torch.tensor([0.2, 0.9]))
    assert out.shape == (2, 9, model.groups, model.classes)
    assert torch.count_nonzero(out) == 0


@pytest.mark.parametrize("variant", ["ind", "bit"])
def test_batch_permutation_consistency_and_conditioning(variant):
    model = _tiny(variant)
    gen = torch.Generator().manual_seed(3)
    state = torch.randint(0, model.classes, (5, 12, model.groups), generator=gen)
    cls = torch.tensor([0, 3, 10, 7, 3])
    ratio = torch.rand(5, generator=gen)
    with torch.no_grad():
        out = model(state, cls, ratio)
        perm = torch.tensor([4, 2, 0, 1, 3])
        out_perm = model(state[perm], cls[perm], ratio[perm])
        single = model(state[2:3], cls[2:3], ratio[2:3])
        other_class = model(state[:1], torch.tensor([5]), ratio[:1])
        other_ratio = model(state[:1], cls[:1], ratio[:1] + 0.3)
    torch.testing.assert_close(out_perm, out[perm], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(single[0], out[2], rtol=1e-5, atol=1e-5)
    assert (other_class[0] - out[0]).abs().max() > 1e-3
    assert (other_ratio[0] - out[0]).abs().max() > 1e-3


def test_token_order_matters_through_rope():
    """Swapping two tokens' states must not just swap their logits (positions are encoded)."""
    model = _tiny()
    gen = torch.Generator().manual_seed(4)
    state = torch.randint(0, model.classes, (1, 12, model.groups), generator=gen)
    swapped = state.clone()
    swapped[:, [0, 11]] = state[:, [11, 0]]
    with torch.no_grad():
        a = model(state, torch.tensor([1]), torch.tensor([0.5]))
        b = model(swapped, torch.tensor([1]), torch.tensor([0.5]))
    assert (a[:, 0] - b[:, 11]).abs().max() > 1e-3


def test_wrong_state_shape_is_rejected():
    model = _tiny()
    with pytest.raises(ValueError, match="state shape"):
        model(torch.zeros(1, 11, model.groups, dtype=torch.long), torch.tensor([0]), torch.tensor([0.5]))


def test_gradients_reach_every_parameter():
    model = _tiny().train()
    state = torch.randint(0, model.classes, (2, 12, model.groups))
    model(state, torch.tensor([1, 2]), torch.tensor([0.1, 0.7])).square().mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert missing == [], missing


def test_traces_without_graph_breaks():
    """torch.compile-friendly: the whole forward is one graph (no data-dependent Python control flow, no .item())."""
    torch._dynamo.reset()
    model = _tiny("bit")
    state = torch.randint(0, model.classes, (2, 12, model.groups))
    cls, ratio = torch.tensor([1, 10]), torch.tensor([0.3, 0.8])
    with torch.no_grad():
        compiled = torch.compile(model, backend="eager", fullgraph=True)(state, cls, ratio)
        torch.testing.assert_close(compiled, model(state, cls, ratio))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_compiled_and_bf16_match_eager_fp32_on_gpu():
    torch._dynamo.reset()
    model = _randomise(GRNC2ITransformer(size="tiny", num_classes=10, grid_size=16), seed=1).cuda().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(0.25)  # keep activations O(1) so bf16 error is measurable against the logit scale
    state = torch.randint(0, 16, (4, 256, 16), device="cuda")
    cls, ratio = torch.tensor([0, 1, 2, 10], device="cuda"), torch.rand(4, device="cuda")
    with torch.no_grad():
        eager = model(state, cls, ratio)
        compiled = torch.compile(model, fullgraph=True)(state, cls, ratio)
        torch.testing.assert_close(compiled, eager, rtol=1e-3, atol=1e-3)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            low = model(state, cls, ratio).float()
    assert (low - eager).abs().max() < 0.05 * eager.abs().max()
