"""tools/tokenize_shards.py: real demo photos → token shards → GRNDataModule(kind="tokens"), resumable."""

from __future__ import annotations

import io
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import tokenize_shards  # noqa: E402

from grn_lightning.data.records import SampleSpec, decode_record  # noqa: E402
from grn_lightning.data.splits import expand_shards  # noqa: E402
from grn_lightning.data.streams import SkipCounter, iterate_records  # noqa: E402
from grn_lightning.data.tokens import decode_token_record  # noqa: E402
from grn_lightning.tokenizer.vae import HBQTokenizer  # noqa: E402

RES = 64


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture()
def tokenizer_files(tmp_path):
    torch.manual_seed(0)
    tokenizer = HBQTokenizer(latent_channels=8, num_rounds=4, preset="tiny").eval()
    ckpt = tmp_path / "tok.pt"
    torch.save(tokenizer.state_dict(), ckpt)
    config = tmp_path / "tok.yaml"
    # The `model.tokenizer` block of a C2I config is accepted as is.
    config.write_text(yaml.safe_dump({"model": {"class_path": "grn_lightning.generator.c2i.module.C2IModule", "init_args": {
        "tokenizer": {"class_path": "grn_lightning.tokenizer.vae.HBQTokenizer",
                      "init_args": {"latent_channels": 8, "num_rounds": 4, "preset": "tiny"}}}}}))  # fmt: skip
    return tokenizer, str(config), str(ckpt)


def _records(url: str) -> list[dict]:
    return list(iterate_records([url], SkipCounter()))


def test_tokenize_round_trip_flip_resume_and_datamodule(tmp_path, demo_image_shards, tokenizer_files):
    tokenizer, config, ckpt = tokenizer_files
    first = expand_shards(demo_image_shards)[0]
    out = tmp_path / "tokens"
    args = ["--input", first, "--output", str(out), "--tokenizer-config", config, "--tokenizer-ckpt", ckpt,
            "--resolution", str(RES), "--batch-size", "20", "--no-progress", "--device", "cpu"]  # fmt: skip
    results = tokenize_shards.main(args)
    shard = out / Path(first).name
    assert [r["shard"] for r in results] == [str(shard)] and results[0]["skipped"] == 0

    media, tokens = _records(first), _records(str(shard))
    assert len(tokens) == len(media) == results[0]["records"] > 0
    spec = SampleSpec(kind="image", resolution=RES)
    for m, t in list(zip(media, tokens))[:6]:
        assert t["__key__"] == m["__key__"] and t["cls"] == m["cls"]
        meta = json.loads(t["tokens.json"])
        assert meta["shape"] == [8, 1, RES // 16, RES // 16] and meta["num_rounds"] == 4
        labels = decode_token_record(np.load(io.BytesIO(t["tokens.npy"])), meta)
        flipped = decode_token_record(np.load(io.BytesIO(t["tokens_flip.npy"])), meta)
        pixels = decode_record(m, spec, rng=None)["pixels"][None].float() / 127.5 - 1.0
        with torch.no_grad():
            assert np.array_equal(labels, tokenizer.tokenize(pixels)[0].numpy())
            assert np.array_equal(flipped, tokenizer.tokenize(pixels.flip(-1))[0].numpy())
        assert not np.array_equal(labels, flipped)  # real photos are not mirror-symmetric
        assert json.loads(t["json"])["caption"] == json.loads(m["json"])["caption"]

    # Resumable: a finished shard is skipped; an interrupted one (.tmp left behind) is redone.
    mtime = shard.stat().st_mtime_ns
    assert tokenize_shards.main(args) == [] and shard.stat().st_mtime_ns == mtime
    shard.rename(shard.with_name(shard.name + ".tmp"))
    assert len(tokenize_shards.main(args)) == 1 and shard.exists()
    assert not shard.with_name(shard.name + ".tmp").exists()

    # Parts: with 2 parts, part 1 of a one-shard input has nothing to do.
    assert tokenize_shards.main(args + ["--num-parts", "2", "--part", "1"]) == []

    # The data module reads the token shards (index labels, flips picked at random in training).
    from grn_lightning.data.datamodule import GRNDataModule

    dm = GRNDataModule(kind="tokens", train_shards=str(shard), val_shards=str(shard), resolution=RES, batch_size=5,
                       num_workers=0, shuffle_buffer=8)  # fmt: skip
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["tokens"].shape == (5, 8, 1, RES // 16, RES // 16) and batch["tokens"].dtype == torch.uint8
    assert int(batch["tokens"].max()) <= 15 and (batch["cls"] >= 0).all()

    # The same token shards feed the text-to-image module (square size): tokens + the captions the shards carry.
    from grn_lightning.generator.t2x.model import GRNT2XTransformer
    from grn_lightning.generator.t2x.module import Packing, T2XModule
    from grn_lightning.generator.t2x.text import UMT5TextEncoder

    text = UMT5TextEncoder(random_init={"d_model": 32, "d_kv": 8, "d_ff": 64, "num_layers": 1, "num_heads": 4,
                                        "vocab_size": 384}, dtype="float32")  # fmt: skip
    t2i = T2XModule(GRNT2XTransformer(size="tiny", channels=8, text_dim=32), text_encoder=text,
                    packing=Packing(token_budget=512, pad_multiple=16))  # fmt: skip
    assert all(batch["caption"]) and len(batch["caption"]) == 5
    packed = t2i.packed_batch(batch)
    assert packed.loss_mask.sum() == 5 * (RES // 16) ** 2 and len(packed.sample_row) == 5


def test_bad_arguments_fail_clearly(tmp_path, tokenizer_files):
    _, config, ckpt = tokenizer_files
    with pytest.raises(SystemExit):
        tokenize_shards.main(["--input", str(tmp_path / "missing-{000000..000001}.tar"), "--output", str(tmp_path),
                              "--tokenizer-config", config])  # fmt: skip
    with pytest.raises(SystemExit):
        tokenize_shards.main(["--input", "x.tar", "--output", str(tmp_path), "--tokenizer-config", config,
                              "--num-parts", "2", "--part", "2"])  # fmt: skip
    bad = tmp_path / "bad.yaml"
    bad.write_text("latent_channels: 8\n")
    with pytest.raises(ValueError, match="class_path"):
        tokenize_shards.build_tokenizer(str(bad), None)
    assert os.path.exists(ckpt)
