"""GRN T2X transformer: released parameter counts, layouts, packed == unpacked, sample isolation, I2V, backends."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

from grn_lightning.generator.t2x.packing import T2XSample, pack_rows
from grn_lightning.generator.t2x.model import GRN_T2X, GRNT2XTransformer, qwen_mlp_hidden, segment_mask

# Released key names and shapes (facts about the official checkpoints), kept in the repo so any clone can test.
MANIFESTS = Path(__file__).parent / "data" / "official-keys"
RELEASED = {"GRN0b": 18_227_200, "GRN2b": 2_197_832_448, "GRN8b": 7_890_859_520}  # SPEC §5
TEXT_DIM = 16

pytestmark = pytest.mark.usefixtures("one_thread")


def _tiny(variant: str = "bit", seed: int = 0, **kw) -> GRNT2XTransformer:
    """Tiny model (C=4, M=2: 8 bits per token) with every parameter random (the fresh head is zero)."""
    model = GRNT2XTransformer(size="tiny", variant=variant, channels=4, rounds=2, text_dim=TEXT_DIM, **kw).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            p.copy_(1 + 0.1 * noise if "norm" in name else 0.05 * noise)
    return model


def _sample(model, t, h, w, n_text, seed, clean=False, labels=True) -> T2XSample:
    gen = torch.Generator().manual_seed(seed)
    shape = (t, h, w, model.groups)
    return T2XSample(
        state=torch.randint(0, model.classes, shape, generator=gen),
        text=torch.randn(n_text, TEXT_DIM, generator=gen),
        ratio=float(torch.rand(1, generator=gen)),
        labels=torch.randint(0, model.classes, shape, generator=gen) if labels else None,
        clean_first=torch.randint(0, model.classes, shape[1:], generator=gen) if clean else None,
    )


def _run(model, batch):
    with torch.no_grad():
        return model(**batch.model_inputs())


@pytest.mark.parametrize("size", sorted(RELEASED))
def test_released_sizes_have_exact_parameter_counts_on_meta(size):
    with torch.device("meta"):
        model = GRNT2XTransformer(size=size)
    total = sum(p.numel() for p in model.parameters())
    assert total == RELEASED[size]
    assert list(model.buffers()) == []  # the release has no buffers either (RoPE is computed)
    assert isinstance(model.blocks, nn.ModuleList) and len(model.blocks) == model.depth
    path = MANIFESTS / f"grn_{size[3:].lower()}.json"
    manifest = json.loads(path.read_text())
    hyper = manifest["hyper"]
    assert total == manifest["total_parameters"]
    assert sum(p.numel() for p in model.blocks.parameters()) == manifest["block_parameters"]
    assert (model.depth, model.width, model.heads, model.head_dim, model.mlp_hidden) == (
        hyper["depth"], hyper["embed_dim"], hyper["num_heads"], hyper["head_dim"], hyper["mlp_hidden"])  # fmt: skip
    assert model.release_chunks == hyper["block_chunks"]
    assert (model.word_embed.in_features, model.head.proj.out_features) == (hyper["word_embed_in"], hyper["head_out"])


def test_mlp_width_rule():
    assert [qwen_mlp_hidden(GRN_T2X[s].width, GRN_T2X[s].mlp_ratio) for s in ("GRN0b", "GRN2b", "GRN8b")] == [1792, 8192, 12288]


def test_small_size_of_the_cpu_reproduction_counted_by_hand():
    # configs/repro/t2x.yaml: 4 blocks of width 192, 3 heads of 64, MLP round(384 / 256) * 256 = 512; bit layout of
    # the joint tokenizer (C = 16, M = 4: 64 bits x 2 = 128 one-hot inputs), text width 64.
    block = 4 * 192 * 192 + 2 * 64 + 3 * 192 * 512 + 2 * 192  # q k v o, q/k norms, gate up down, two RMSNorms
    embeddings = (128 * 192 + 192) + (64 * 192 + 192)  # word_embed, text_proj (with biases)
    ratio = (256 * 192 + 192) + (192 * 192 + 192)  # pt_embedder MLP on the 256-wide sinusoid
    head = 192 + (192 * 128 + 128)  # RMSNorm + projection
    model = GRNT2XTransformer(size="small", variant="bit", channels=16, rounds=4, text_dim=64)
    assert (model.depth, model.width, model.heads, model.head_dim, model.mlp_hidden) == (4, 192, 3, 64, 512)
    assert sum(p.numel() for p in model.parameters()) == 4 * block + embeddings + ratio + head == 1_920_064


def test_no_biases_in_blocks_and_qk_norm_per_head():
    with torch.device("meta"):
        model = GRNT2XTransformer(size="GRN0b")
    names = [n for n, _ in model.blocks[0].named_parameters()]
    assert not any(n.endswith("bias") for n in names)
    assert model.blocks[0].attn.q_norm.weight.shape == (128,) and model.blocks[0].attn.q_norm.eps == 1e-6


@pytest.mark.parametrize("variant,groups,classes", [("bit", 256, 2), ("ind", 64, 16)])
def test_layouts_bit_and_index(variant, groups, classes):
    with torch.device("meta"):
        model = GRNT2XTransformer(size="GRN0b", variant=variant)
    assert (model.groups, model.classes) == (groups, classes)
    assert model.word_embed.in_features == model.head.proj.out_features == groups * classes  # 512 / 1024
    tiny = _tiny(variant)
    batch = pack_rows([[_sample(tiny, 1, 2, 3, 4, seed=1)]])
    assert _run(tiny, batch).shape == (1, 6 + 4 + 1, tiny.groups, tiny.classes)


def test_bad_options_fail_with_the_option_named():
    for kwargs, word in ((dict(size="GRN4b"), "size"), (dict(variant="index"), "variant"),
                         (dict(attention="flash"), "attention"), (dict(channels=0), "channels")):  # fmt: skip
        with pytest.raises(ValueError, match=word):
            GRNT2XTransformer(**{"size": "tiny", **kwargs})
    model = _tiny()
    batch = pack_rows([[_sample(model, 1, 2, 2, 3, seed=0)]])
    inputs = batch.model_inputs()
    with pytest.raises(ValueError, match="groups"):
        model(**{**inputs, "state": inputs["state"][..., :3]})
    with pytest.raises(ValueError, match="text"):
        model(**{**inputs, "text": torch.zeros(3, TEXT_DIM + 1)})


def test_meta_construction_then_reset_gives_uniform_logits():
    with torch.device("meta"):
        model = GRNT2XTransformer(size="tiny", channels=4, rounds=2, text_dim=TEXT_DIM)
    model.to_empty(device="cpu")
    model.reset_parameters()
    assert all(torch.isfinite(p).all() for p in model.parameters())
    logits = _run(model, pack_rows([[_sample(model, 1, 2, 2, 3, seed=0)]]))
    assert torch.count_nonzero(logits) == 0  # zero head: every bit starts at p = 1/2


def test_packed_equals_unpacked_and_samples_are_isolated():
    model = _tiny()
    samples = [
        _sample(model, 1, 2, 3, 5, seed=1),  # image, 6 visual tokens
        _sample(model, 2, 2, 2, 3, seed=2, clean=True),  # I2V video, 8 noisy + 4 clean tokens
        _sample(model, 1, 3, 3, 0, seed=3),  # empty caption
    ]
    packed = pack_rows([samples], pad_multiple=16)  # 12 + 16 + 10 = 38 tokens, padded to 48
    assert packed.state.shape[1] == 48 and (packed.segment_ids == -1).sum() == 10
    logits = _run(model, packed)
    for i, sample in enumerate(samples):
        alone = pack_rows([[sample]])
        ref = _run(model, alone)
        torch.testing.assert_close(packed.sample_logits(logits, i), alone.sample_logits(ref, 0), rtol=1e-5, atol=1e-5)
        # one sample per row without a mask (full attention) is the same computation
        with torch.no_grad():
            unmasked = model(**{**alone.model_inputs(), "segment_ids": None})
        torch.testing.assert_close(unmasked, ref)
    # changing sample 1's tokens (noisy and clean), caption and ratio leaves samples 0 and 2 untouched
    other = T2XSample(state=torch.zeros_like(samples[1].state), text=-samples[1].text, ratio=0.99,
                      labels=samples[1].labels, clean_first=1 - samples[1].clean_first)  # fmt: skip
    changed = _run(model, pack_rows([[samples[0], other, samples[2]]], pad_multiple=16))
    for i in (0, 2):
        torch.testing.assert_close(packed.sample_logits(changed, i), packed.sample_logits(logits, i), rtol=0, atol=0)
    assert (packed.sample_logits(changed, 1) - packed.sample_logits(logits, 1)).abs().max() > 1e-3


def test_batch_of_rows_equals_rows_alone():
    model = _tiny(seed=4)
    rows = [[_sample(model, 1, 2, 2, 2, seed=5), _sample(model, 1, 1, 3, 4, seed=6)], [_sample(model, 1, 3, 2, 1, seed=7)]]
    both = pack_rows(rows)
    logits = _run(model, both)
    second = pack_rows(rows[1:])
    torch.testing.assert_close(both.sample_logits(logits, 2), second.sample_logits(_run(model, second), 0), rtol=1e-5, atol=1e-5)


def test_conditioning_paths_all_matter():
    """Text, ratio, the I2V clean frame and token order (RoPE) each change the visual logits."""
    model = _tiny(seed=8)
    base = _sample(model, 2, 2, 2, 3, seed=9, clean=True)
    ref = pack_rows([[base]])
    out = ref.sample_logits(_run(model, ref), 0)
    swapped_state = base.state.clone().view(8, -1)
    swapped_state[[0, 7]] = swapped_state[[7, 0]].clone()  # first and last token of the (t, h, w) order
    variants = {
        "text": T2XSample(base.state, base.text + 1, base.ratio, clean_first=base.clean_first),
        "ratio": T2XSample(base.state, base.text, base.ratio + 0.3, clean_first=base.clean_first),
        "clean frame": T2XSample(base.state, base.text, base.ratio, clean_first=1 - base.clean_first),
        "order": T2XSample(swapped_state.view_as(base.state), base.text, base.ratio, clean_first=base.clean_first),
    }
    for what, sample in variants.items():
        batch = pack_rows([[sample]])
        got = batch.sample_logits(_run(model, batch), 0)
        if what == "order":  # positions are encoded: swapping two tokens' states does not just swap their logits
            assert (got[7] - out[0]).abs().max() > 1e-4, what
        else:
            assert (got - out).abs().max() > 1e-4, what


def test_flex_attention_matches_sdpa_on_cpu():
    """The optional flex path (eager reference on CPU, compiled on CUDA) gives the SDPA result."""
    sdpa = _tiny(seed=10)
    flex = _tiny(seed=10, attention="flex")
    packed = pack_rows([[_sample(sdpa, 1, 2, 3, 5, seed=11), _sample(sdpa, 2, 2, 2, 2, seed=12)]], pad_multiple=8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got = _run(flex, packed)
    torch.testing.assert_close(got, _run(sdpa, packed), rtol=1e-5, atol=1e-5)


def test_segment_mask_is_block_diagonal():
    seg = torch.tensor([[0, 0, 1, 1, 1, -1]])
    mask = segment_mask(seg)[0, 0]
    assert mask.shape == (6, 6) and mask.diagonal().all()
    assert mask[:2, :2].all() and mask[2:5, 2:5].all() and not mask[:2, 2:].any() and not mask[:5, 5].any()


def test_embedding_and_head_stay_fp32_under_bf16_autocast():
    model = _tiny(seed=13)
    batch = pack_rows([[_sample(model, 1, 2, 2, 3, seed=14)]])
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        x = model.embed(*(batch.model_inputs()[k] for k in ("state", "text", "text_index", "ratio", "ratio_index")))
        logits = model(**batch.model_inputs())
    assert x.dtype == torch.float32 and logits.dtype == torch.float32
    ref = _run(model, batch)
    assert (logits - ref).abs().max() < 0.05 * ref.abs().max()  # bf16 blocks, fp32 ends: close to fp32


def test_gradients_reach_every_parameter():
    model = _tiny(seed=15).train()
    batch = pack_rows([[_sample(model, 1, 2, 2, 3, seed=16), _sample(model, 1, 2, 1, 2, seed=17, clean=True)]])
    model(**batch.model_inputs()).square().mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert missing == [], missing


def test_traces_as_one_graph():
    torch._dynamo.reset()
    model = _tiny(seed=18)
    batch = pack_rows([[_sample(model, 1, 2, 2, 3, seed=19), _sample(model, 1, 1, 2, 1, seed=20)]])
    with torch.no_grad():
        compiled = torch.compile(model, backend="eager", fullgraph=True)(**batch.model_inputs())
    torch.testing.assert_close(compiled, _run(model, batch))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_compiled_flex_matches_sdpa_and_packing_holds_on_gpu():
    torch._dynamo.reset()
    sdpa = _tiny(seed=21).cuda()
    flex = _tiny(seed=21, attention="flex").cuda()
    samples = [_sample(sdpa, 1, 16, 16, 20, seed=22), _sample(sdpa, 3, 8, 12, 7, seed=23, clean=True),
               _sample(sdpa, 1, 12, 20, 0, seed=24)]  # fmt: skip
    packed = pack_rows([samples], pad_multiple=128).to("cuda")
    with torch.no_grad():
        ref = sdpa(**packed.model_inputs())
        got = flex(**packed.model_inputs())
        torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)
        for i, sample in enumerate(samples):
            alone = pack_rows([[sample]]).to("cuda")
            torch.testing.assert_close(packed.sample_logits(got, i), alone.sample_logits(flex(**alone.model_inputs()), 0),
                                       rtol=1e-4, atol=1e-4)  # fmt: skip
        with torch.autocast("cuda", dtype=torch.bfloat16):
            low_sdpa = sdpa(**packed.model_inputs())
            low_flex = flex(**packed.model_inputs())
    assert low_sdpa.dtype == low_flex.dtype == torch.float32  # fp32 head under autocast
    scale = ref.abs().max()
    assert (low_sdpa - ref).abs().max() < 0.05 * scale and (low_flex - ref).abs().max() < 0.05 * scale


def test_block_mask_from_segment_ranges_equals_the_evaluated_mask():
    """`segment_block_mask` (per-block id ranges, no L×L mask) lists the same partial and full blocks as flex's
    `create_block_mask`, which evaluates the mask at every (q, k) pair; rows of uneven fill, a row of one sample,
    a length that is not a multiple of the block size."""
    from torch.nn.attention.flex_attention import create_block_mask

    from grn_lightning.generator.t2x.model import segment_block_mask

    seg = torch.full((3, 30), -1)
    seg[0, :5], seg[0, 5:6], seg[0, 6:19] = 0, 1, 2  # samples 0..2, then padding
    seg[1, :30] = 3  # one sample filling the row
    seg[2, :9], seg[2, 9:17] = 4, 5
    ours = segment_block_mask(seg, block_size=4)

    def same(b, h, q, k):
        return seg[b, q] == seg[b, k]

    ref = create_block_mask(same, 3, None, 30, 30, device="cpu", BLOCK_SIZE=4)
    assert torch.equal(ours.kv_num_blocks, ref.kv_num_blocks) and torch.equal(ours.full_kv_num_blocks, ref.full_kv_num_blocks)
    for b in range(3):
        for q in range(8):
            n, nf = int(ref.kv_num_blocks[b, 0, q]), int(ref.full_kv_num_blocks[b, 0, q])
            assert sorted(ours.kv_indices[b, 0, q, :n].tolist()) == sorted(ref.kv_indices[b, 0, q, :n].tolist())
            assert sorted(ours.full_kv_indices[b, 0, q, :nf].tolist()) == sorted(ref.full_kv_indices[b, 0, q, :nf].tolist())
    torch.testing.assert_close(ours.to_dense(), ref.to_dense())


def test_block_mask_from_ranges_stays_exact_for_any_segment_layout():
    """Non-contiguous ids (padding inside a row, a sample split in two) only make the listing less sparse: the dense
    mask it describes is still exactly `segment_mask`."""
    from grn_lightning.generator.t2x.model import segment_block_mask

    seg = torch.tensor([[0, 0, 0, -1, -1, 1, 1, 0, 0, 2, -1, 1, 1, 1]])
    mask = segment_block_mask(seg, block_size=4)
    dense = torch.zeros(14, 14, dtype=torch.bool)
    for q in range(14):
        for k in range(14):  # the listing's blocks with the mask function applied inside partial ones
            qb, kb = q // 4, k // 4
            n, nf = int(mask.kv_num_blocks[0, 0, qb]), int(mask.full_kv_num_blocks[0, 0, qb])
            if kb in mask.full_kv_indices[0, 0, qb, :nf].tolist():
                dense[q, k] = True
            elif kb in mask.kv_indices[0, 0, qb, :n].tolist():
                dense[q, k] = bool(mask.mask_mod(0, 0, torch.tensor(q), torch.tensor(k)))
    assert torch.equal(dense, segment_mask(seg)[0, 0])
