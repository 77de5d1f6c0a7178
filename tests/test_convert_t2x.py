"""Released GRN0b/2b/8b checkpoints -> our T2X model: full coverage of the manifests, loud mismatches, round trips."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from grn_lightning.generator.t2x.convert import (
    convert_released_t2x_state_dict,
    load_released_t2x,
    released_to_ours,
    select_t2x_weights,
    to_released_t2x_state_dict,
)
from grn_lightning.generator.t2x.packing import T2XSample, pack_rows
from grn_lightning.generator.t2x.model import GRNT2XTransformer
from grn_lightning.tokenizer.convert import CheckpointMismatchError

# Released key names and shapes (facts about the official checkpoints), kept in the repo so any clone can test.
MANIFESTS = Path(__file__).parent / "data" / "official-keys"
SIZES = {"GRN0b": "grn_0b", "GRN2b": "grn_2b", "GRN8b": "grn_8b"}

pytestmark = pytest.mark.usefixtures("one_thread")


def _manifest(size: str) -> dict:
    path = MANIFESTS / f"{SIZES[size]}.json"
    return json.loads(path.read_text())


def _meta_state(manifest: dict, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """A released-layout state dict of meta tensors (shapes and dtypes as listed; no memory)."""
    return {k: torch.empty(shape, dtype=dtype or getattr(torch, dt), device="meta") for k, (shape, dt) in manifest["keys"].items()}


def _meta_model(size: str) -> GRNT2XTransformer:
    with torch.device("meta"):
        return GRNT2XTransformer(size=size)


@pytest.mark.parametrize("size", sorted(SIZES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_manifest_fully_covered_both_ways(size, dtype):
    manifest = _manifest(size)
    model = _meta_model(size)
    state = convert_released_t2x_state_dict(_meta_state(manifest, dtype), model)
    expected = model.state_dict()
    assert set(state) == set(expected)
    assert all(t.shape == expected[k].shape and t.dtype == torch.float32 for k, t in state.items())
    assert sum(t.numel() for t in state.values()) == manifest["total_parameters"]
    # our names go back to exactly the released ones (including the per-size block_chunks nesting)
    assert set(to_released_t2x_state_dict(model)) == set(manifest["keys"])
    kept = convert_released_t2x_state_dict(_meta_state(manifest, dtype), model, dtype=None)
    assert {t.dtype for t in kept.values()} == {dtype}


def test_block_names_unnest():
    assert released_to_ours("block_chunks.6.module.3.attn.q_norm.weight", 4) == "blocks.27.attn.q_norm.weight"
    assert released_to_ours("module.block_chunks.1.module.0.mlp.up_proj.weight", 2) == "blocks.2.mlp.up_proj.weight"
    assert released_to_ours("_orig_mod.head.proj.bias", 6) == "head.proj.bias"


def test_wrappers_are_found():
    manifest = _manifest("GRN0b")
    plain = _meta_state(manifest)
    assert select_t2x_weights(plain)[1] == "plain state dict"
    for key in ("ema", "model", "state_dict"):
        state, source = select_t2x_weights({key: plain, "step": 3})
        assert source == key and state.keys() == plain.keys()
    assert select_t2x_weights({"model": {}, "ema": plain})[1] == "ema"  # EMA preferred
    with pytest.raises(KeyError, match="no 'ema' weights"):
        select_t2x_weights({"model": plain}, source="ema")
    with pytest.raises(KeyError, match="no GRN weights"):
        select_t2x_weights({"optimizer": {}})


def test_mismatches_fail_loudly_listing_keys():
    manifest = _manifest("GRN0b")
    model = _meta_model("GRN0b")
    good = _meta_state(manifest)
    with pytest.raises(CheckpointMismatchError, match=r"unmatched .*: 1\n    head\.extra\.weight"):
        convert_released_t2x_state_dict({**good, "head.extra.weight": torch.empty(3, device="meta")}, model)
    short = dict(good)
    del short["block_chunks.1.module.1.mlp.up_proj.weight"], short["pt_embedder.mlp.2.bias"]
    with pytest.raises(CheckpointMismatchError) as err:
        convert_released_t2x_state_dict(short, model)
    message = str(err.value)
    assert "missing (in model, not in file): 2" in message
    assert "block_chunks.1.module.1.mlp.up_proj.weight (ours: blocks.3.mlp.up_proj.weight)" in message
    assert "pt_embedder.mlp.2.bias" in message
    wrong = {**good, "text_proj.weight": torch.empty(512, 1024, device="meta")}
    with pytest.raises(CheckpointMismatchError, match=r"text_proj\.weight: file \(512, 1024\) vs model \(512, 4096\)"):
        convert_released_t2x_state_dict(wrong, model)
    # the same tensor twice (a stray DDP prefix copy) is not silently overwritten
    with pytest.raises(CheckpointMismatchError, match=r"duplicated .*\n    module\.word_embed\.weight -> word_embed\.weight"):
        convert_released_t2x_state_dict({**good, "module.word_embed.weight": good["word_embed.weight"]}, model)
    # a wrong nesting is refused, inferred or forced
    with pytest.raises(CheckpointMismatchError, match="7 chunks x 4 blocks = 28, the model has depth 4"):
        convert_released_t2x_state_dict(_meta_state(_manifest("GRN2b")), model)
    with pytest.raises(CheckpointMismatchError, match="unmatched"):
        convert_released_t2x_state_dict(good, model, blocks_per_chunk=1)
    # the 8B file does not load into a 2B model
    with pytest.raises(CheckpointMismatchError):
        convert_released_t2x_state_dict(_meta_state(_manifest("GRN8b")), _meta_model("GRN2b"))


def _tiny(seed: int) -> GRNT2XTransformer:
    torch.manual_seed(seed)
    model = GRNT2XTransformer(size="tiny", channels=4, rounds=2, text_dim=16).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))  # the fresh head is zero: make the logits informative
    return model


@pytest.mark.parametrize("blocks_per_chunk", [None, 1])
def test_round_trip_through_released_names(tmp_path, blocks_per_chunk):
    source = _tiny(0)
    released = to_released_t2x_state_dict(source, blocks_per_chunk)
    assert any(k.startswith("block_chunks.") for k in released) and not any(k.startswith("blocks.") for k in released)
    path = tmp_path / "grn_tiny.pt"
    torch.save({"ema": {f"module.{k}": v.bfloat16() for k, v in released.items()}, "model": released, "step": 7}, path)
    target = _tiny(1)
    summary = load_released_t2x(target, str(path), source="model")
    assert summary["source"] == "model" and summary["tensors"] == len(source.state_dict())
    for name, tensor in source.state_dict().items():
        assert torch.equal(target.state_dict()[name], tensor), name
    gen = torch.Generator().manual_seed(2)
    sample = T2XSample(torch.randint(0, 2, (1, 2, 3, 8), generator=gen), torch.randn(4, 16, generator=gen), 0.3)
    batch = pack_rows([[sample]])
    with torch.no_grad():
        assert torch.equal(target(**batch.model_inputs()), source(**batch.model_inputs()))
    # the bf16 EMA copy under DDP names: auto picks it, casts it to the model's fp32
    summary = load_released_t2x(target, str(path))
    assert summary["source"] == "ema" and summary["file_dtypes"] == ["bfloat16"]
    assert target.word_embed.weight.dtype == torch.float32
    assert torch.equal(target.word_embed.weight, released["word_embed.weight"].bfloat16().float())
