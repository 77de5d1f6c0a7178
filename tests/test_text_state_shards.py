"""Token shards with cached umT5 states in aspect-ratio buckets (tools/tokenize_shards.py, data/text_states.py):
T2X training reads them with no text encoder at all."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import tokenize_shards  # noqa: E402

from grn_lightning.data.buckets import ASPECT_RATIOS, bucket_for_ratio  # noqa: E402
from grn_lightning.data.datamodule import GRNDataModule  # noqa: E402
from grn_lightning.data.splits import expand_shards  # noqa: E402
from grn_lightning.data.streams import SkipCounter, iterate_records  # noqa: E402
from grn_lightning.data.text_states import decode_text_fields, encode_text_fields  # noqa: E402
from grn_lightning.generator.t2x.text import UMT5TextEncoder  # noqa: E402
from grn_lightning.tokenizer.vae import HBQTokenizer  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")
TEXT = {"d_model": 32, "d_kv": 8, "d_ff": 64, "num_layers": 1, "num_heads": 4, "vocab_size": 384}


def test_bf16_bits_round_trip_exactly():
    states = torch.randn(5, 7).bfloat16()
    fields = encode_text_fields(states, states[:2], "t2v")
    record = {}
    for name in ("text.npy", "null_text.npy"):
        buffer = io.BytesIO()
        np.save(buffer, fields[name])
        record[name] = buffer.getvalue()
    record["text.json"] = json.dumps(fields["text.json"]).encode()
    back = decode_text_fields(record)
    assert back["text"].dtype == torch.bfloat16 and torch.equal(back["text"], states)
    assert torch.equal(back["null_text"], states[:2]) and back["text_task"] == "t2v"
    with pytest.raises(ValueError, match="\\[L, C\\]"):
        encode_text_fields(states[0], states, "t2i")


def test_cached_text_bucketed_shards_train_t2x_without_an_encoder(tmp_path, demo_image_shards):
    torch.manual_seed(0)
    tokenizer = HBQTokenizer(latent_channels=8, num_rounds=4, preset="tiny").eval()
    torch.save(tokenizer.state_dict(), tmp_path / "tok.pt")
    tok_cfg, text_cfg = tmp_path / "tok.yaml", tmp_path / "text.yaml"
    tok_cfg.write_text(yaml.safe_dump({"class_path": "grn_lightning.tokenizer.vae.HBQTokenizer",
                                       "init_args": {"latent_channels": 8, "num_rounds": 4, "preset": "tiny"}}))  # fmt: skip
    text_init = {"random_init": TEXT, "dtype": "float32", "max_length": 64}
    text_cfg.write_text(yaml.safe_dump({"model": {"init_args": {"text_encoder": {
        "class_path": "grn_lightning.generator.t2x.text.UMT5TextEncoder", "init_args": text_init}}}}))  # fmt: skip
    first = expand_shards(demo_image_shards)[0]
    out = tmp_path / "tokens"
    tokenize_shards.main(["--input", first, "--output", str(out), "--tokenizer-config", str(tok_cfg), "--tokenizer-ckpt",
                          str(tmp_path / "tok.pt"), "--pixel-budget", "0.06M", "--text-encoder-config", str(text_cfg),
                          "--batch-size", "4", "--no-progress", "--device", "cpu"])  # fmt: skip
    shard = str(out / Path(first).name)
    encoder = UMT5TextEncoder(**text_init)
    null = encoder.encode([""], "t2i")[0]
    records = list(iterate_records([shard], SkipCounter()))
    grids = set()
    for record in records:
        meta = json.loads(record["tokens.json"])
        _, _, h, w = meta["shape"]
        bucket = bucket_for_ratio(meta["aspect_ratio"], "0.06M")
        assert meta["aspect_ratio"] in ASPECT_RATIOS and (bucket.latent_height, bucket.latent_width) == (h, w)
        grids.add((h, w))
        states = decode_text_fields(record)
        caption = json.loads(record["json"])["caption"]
        assert torch.equal(states["text"], encoder.encode([caption], "t2i")[0].bfloat16())  # trimmed to length
        assert torch.equal(states["null_text"], null.bfloat16()) and states["text_task"] == "t2i"
    assert len(grids) > 1  # the demo photos land in several buckets

    data = GRNDataModule(kind="tokens", train_shards=shard, batch_size=2, num_workers=0, shuffle_buffer=4)
    data.setup("fit")
    batch = data.on_before_batch_transfer(next(iter(data.train_dataloader())), 0)
    assert batch["text"].dtype == torch.bfloat16 and batch["text"].shape[0] == sum(batch["text_lengths"])
    assert len(batch["aspect_ratio"]) == 2 and batch["text_task"] == ["t2i", "t2i"]

    from grn_lightning.generator.options import Corruption
    from grn_lightning.generator.t2x.model import GRNT2XTransformer
    from grn_lightning.generator.t2x.module import Packing, T2XModule

    def t2x(dropout: float, **kwargs) -> T2XModule:
        return T2XModule(GRNT2XTransformer(size="tiny", channels=8, text_dim=TEXT["d_model"]),
                         corruption=Corruption(ratio_mu=-1.3, ratio_sigma=1.3, condition_dropout=dropout),
                         packing=Packing(token_budget=1024, pad_multiple=16), **kwargs)  # fmt: skip

    module = t2x(0.0)
    packed = module.packed_batch(batch, torch.Generator().manual_seed(0))
    assert torch.equal(packed.text, batch["text"])  # the cached states, untouched
    assert torch.isfinite(module.training_step(batch, 0))
    dropped = t2x(0.999)
    assert torch.equal(dropped.packed_batch(batch).text, torch.cat([null.bfloat16()] * 2))  # dropout → empty caption
    with pytest.raises(ValueError, match="text-task"):
        t2x(0.1, task="t2v").packed_batch(
            dict(batch, tokens=batch["tokens"].expand(-1, -1, 2, -1, -1)), dropout=False)
