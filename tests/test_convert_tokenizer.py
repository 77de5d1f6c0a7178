"""Released tokenizer checkpoints -> our VAE: full coverage of both manifests, loud mismatches, round trips, CLI."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from grn_lightning.tokenizer.convert import (
    LEGACY_EXTRAS,
    CheckpointMismatchError,
    convert_released_state_dict,
    load_released_tokenizer,
    select_released_weights,
    to_released_state_dict,
)
from grn_lightning.tokenizer.vae import CausalVAE, HBQTokenizer

# Released key names and shapes (facts about the official checkpoints), kept in the repo so any clone can test.
MANIFESTS = Path(__file__).parent / "data" / "official-keys"
REPO = Path(__file__).resolve().parents[1]


def _manifest(channels: int) -> dict:
    path = MANIFESTS / f"hbq_tokenizer_{channels}ch.json"
    return json.loads(path.read_text())


def _meta_state(manifest: dict, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """A released-layout state dict of meta tensors (shapes and dtypes as listed; no memory)."""
    return {
        k: torch.empty(shape, dtype=dtype or getattr(torch, dt), device="meta") for k, (shape, dt) in manifest["keys"].items()
    }


@pytest.mark.parametrize("channels", [16, 64])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_manifest_fully_covered(channels, dtype):
    manifest = _manifest(channels)
    assert manifest["config"]["latent_channels"] == channels
    ema = _meta_state(manifest, dtype)
    legacy = {k: torch.zeros(1, device="meta") for k in LEGACY_EXTRAS}
    checkpoint = {"vae": _meta_state(manifest, dtype), "ema": {**ema, **legacy}, "step": 10, "opt_vae": {}}
    released, source = select_released_weights(checkpoint)
    assert source == "ema" and released.keys() == {**ema, **legacy}.keys()
    with torch.device("meta"):
        tokenizer = HBQTokenizer(latent_channels=channels, preset="released")
        vae = CausalVAE(latent_channels=channels)
    for model, prefix in ((tokenizer, "vae."), (vae, "")):
        state, dropped = convert_released_state_dict(released, model)
        assert sorted(dropped) == sorted(LEGACY_EXTRAS)
        expected = model.state_dict()
        # both ways: every released key lands on a parameter, every parameter comes from a released key
        assert set(state) == set(expected) == {prefix + k for k in manifest["keys"]}
        for name, tensor in state.items():
            assert tensor.shape == expected[name].shape and tensor.dtype == torch.float32
        assert sum(t.numel() for t in state.values()) == manifest["total_parameters"]
        # and our names map back to exactly the released names
        assert set(to_released_state_dict(model)) == set(manifest["keys"])
    kept, _ = convert_released_state_dict(released, vae, dtype=None)
    assert {t.dtype for t in kept.values()} == {dtype}


def test_mismatches_fail_loudly_listing_keys():
    manifest = _manifest(16)
    with torch.device("meta"):
        tokenizer = HBQTokenizer(latent_channels=16)
    good = _meta_state(manifest)
    extra = {**good, "encoder.bogus.weight": torch.empty(3, device="meta")}
    with pytest.raises(CheckpointMismatchError, match=r"unmatched .*: 1\n    encoder\.bogus\.weight"):
        convert_released_state_dict(extra, tokenizer)
    short = dict(good)
    del short["decoder.head.2.bias"], short["conv1.weight"]
    with pytest.raises(CheckpointMismatchError) as err:
        convert_released_state_dict(short, tokenizer)
    assert "missing (in model, not in file): 2" in str(err.value)
    assert "vae.decoder.head.2.bias" in str(err.value) and "vae.conv1.weight" in str(err.value)
    wrong = {**good, "conv2.weight": torch.empty(64, 64, 1, 1, 1, device="meta")}
    with pytest.raises(CheckpointMismatchError, match=r"conv2\.weight: file \(64, 64, 1, 1, 1\) vs model \(16, 16, 1, 1, 1\)"):
        convert_released_state_dict(wrong, tokenizer)
    # the 64-channel file does not load into a 16-channel tokenizer
    with pytest.raises(CheckpointMismatchError, match="shape mismatch"):
        convert_released_state_dict(_meta_state(_manifest(64)), tokenizer)
    with pytest.raises(KeyError, match="no 'ema' weights"):
        select_released_weights({"vae": good}, source="ema")


def _tiny(seed: int) -> HBQTokenizer:
    torch.manual_seed(seed)
    return HBQTokenizer(latent_channels=4, preset="tiny").eval()


def test_round_trip_through_released_names(tmp_path):
    source = _tiny(0)
    released = to_released_state_dict(source)
    assert "encoder.conv1.weight" in released and not any(k.startswith("vae.") for k in released)
    raw = to_released_state_dict(_tiny(1))
    path = tmp_path / "released.ckpt"
    torch.save({"vae": raw, "ema": {**released, "z_mean": torch.zeros(4), "z_std": torch.ones(4)}, "step": 3}, path)
    target = _tiny(2)
    summary = load_released_tokenizer(target, str(path))
    assert summary["source"] == "ema" and sorted(summary["dropped"]) == ["z_mean", "z_std"]
    for name, tensor in source.state_dict().items():
        assert torch.equal(target.state_dict()[name], tensor), name
    x = torch.rand(1, 3, 1, 64, 64) * 2 - 1
    assert torch.equal(target.tokenize(x), source.tokenize(x))
    # explicit choice of the raw weights; and a bf16 file loads (cast) into an fp32 model
    load_released_tokenizer(target, str(path), source="vae")
    assert torch.equal(target.vae.decoder.head[2].weight, raw["decoder.head.2.weight"])
    torch.save({"ema": {k: v.bfloat16() for k, v in released.items()}}, path)
    summary = load_released_tokenizer(target, str(path))
    assert summary["file_dtypes"] == ["bfloat16"]
    assert target.vae.encoder.conv1.weight.dtype == torch.float32
    assert torch.equal(target.vae.encoder.conv1.weight, released["encoder.conv1.weight"].bfloat16().float())


def test_convert_official_cli(tmp_path, capsys):
    sys.path.insert(0, str(REPO / "tools"))
    try:
        import convert_official
    finally:
        sys.path.pop(0)
    source = _tiny(4)
    ckpt = tmp_path / "HBQ_tiny.ckpt"
    torch.save({"ema": to_released_state_dict(source), "vae": to_released_state_dict(_tiny(5))}, ckpt)
    out = tmp_path / "converted.pt"
    summary = convert_official.main([str(ckpt), "-o", str(out), "--preset", "tiny", "--verify-load"])
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == summary
    assert summary["source"] == "ema" and summary["latent_channels"] == 4
    assert summary["tensors"] == len(source.state_dict())
    loaded = _tiny(6)
    loaded.load_state_dict(torch.load(out, weights_only=True), strict=True)
    for name, tensor in source.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
    # a file with a foreign key stops the tool with the listing
    bad = tmp_path / "bad.ckpt"
    torch.save({"ema": {**to_released_state_dict(source), "encoder.extra": torch.zeros(1)}}, bad)
    with pytest.raises(CheckpointMismatchError, match="encoder.extra"):
        convert_official.main([str(bad), "-o", str(tmp_path / "x.pt"), "--preset", "tiny"])
