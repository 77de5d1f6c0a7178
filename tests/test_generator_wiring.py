"""How the generator modules are put together (issue 11): the tokenizer is the one source of C, M and the stride, the
model tells the data module the global batch, its token geometry and its token budget (`connect`), token shards made
for another model are refused before the first step, and checkpoints of modules built in Python reload through
`load_from_checkpoint` with plain (weights-only) hyper-parameters."""

from __future__ import annotations

import json

import lightning as L
import numpy as np
import pytest
import torch

from grn_lightning.data.datamodule import GRNDataModule
from grn_lightning.data.tokens import TokenGeometry, encode_token_record
from grn_lightning.generator.c2i.model import GRNC2ITransformer
from grn_lightning.generator.c2i.module import C2IModule
from grn_lightning.generator.options import EMATracks, Optimization
from grn_lightning.tokenizer.vae import HBQTokenizer

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tokenizer() -> HBQTokenizer:
    torch.manual_seed(0)
    return HBQTokenizer(latent_channels=16, num_rounds=4, preset="tiny")  # stride 16: 64² images → 4×4 tokens


def _c2i(tokenizer=None, **net) -> C2IModule:
    args = dict(size="tiny", variant="ind", channels=16, rounds=4, num_classes=8, grid_size=4, in_context_tokens=2)
    transformer = GRNC2ITransformer(**{**args, **net})
    return C2IModule(transformer, tokenizer=tokenizer, optimization=Optimization(lr=1e-3, global_batch_size=4),
                     ema=EMATracks(decay=0.9))  # fmt: skip


def _trainer(tmp_path, steps: int = 1) -> L.Trainer:
    return L.Trainer(accelerator="cpu", max_steps=steps, logger=False, enable_checkpointing=False,
                     enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(tmp_path),
                     limit_val_batches=0)  # fmt: skip


def test_channels_or_rounds_other_than_the_tokenizers_fail_at_construction(tokenizer):
    with pytest.raises(ValueError, match=r"channels=8 differs from the tokenizer's latent_channels=16"):
        _c2i(tokenizer, channels=8)
    with pytest.raises(ValueError, match=r"rounds=3 differs from the tokenizer's num_rounds=4"):
        _c2i(tokenizer, rounds=3)
    from grn_lightning.generator.t2x.model import GRNT2XTransformer
    from grn_lightning.generator.t2x.module import T2XModule

    with pytest.raises(ValueError, match=r"channels=64 differs from the tokenizer's latent_channels=16"):
        T2XModule(GRNT2XTransformer(size="tiny", channels=64, text_dim=32), tokenizer=tokenizer)


def test_a_grid_the_stride_and_resolution_do_not_give_fails_before_training(tmp_path, tokenizer, demo_image_shards):
    """64² photos with the tokenizer's stride 16 are 4×4 tokens; a transformer built for 8×8 is refused when the
    module connects the data module, naming both values and the fix, before any step."""
    data = GRNDataModule(kind="image", train_shards=demo_image_shards, resolution=64, num_workers=0, shuffle_buffer=8)
    trainer = _trainer(tmp_path)
    with pytest.raises(ValueError, match=r"data.resolution=64 .* stride 16 gives a 4x4 token grid, the model's grid "
                                         r"is \(8, 8\): set data.resolution to 128"):  # fmt: skip
        trainer.fit(_c2i(tokenizer, grid_size=8), datamodule=data)
    assert trainer.global_step == 0


def test_the_global_batch_flows_down_and_a_stated_batch_must_agree(tmp_path, tokenizer, demo_image_shards):
    args = dict(kind="image", train_shards=demo_image_shards, resolution=64, num_workers=0, shuffle_buffer=8)
    data = GRNDataModule(**args)
    trainer = _trainer(tmp_path, steps=1)
    trainer.fit(_c2i(tokenizer), datamodule=data)
    assert data.hparams.batch_size == 4 and trainer.global_step == 1  # optimization.global_batch_size / 1 device
    with pytest.raises(ValueError, match=r"data.batch_size=3 differs from the model's per-device batch 4"):
        _trainer(tmp_path).fit(_c2i(tokenizer), datamodule=GRNDataModule(**args, batch_size=3))


def test_the_token_budget_sets_how_many_samples_a_t2x_batch_holds():
    """Hand count: 64² images are 4×4 = 16 visual tokens, a 5-frame clip 2 latent frames = 32; each sample adds a
    64-token text bound + 1 ratio token. A 512-token budget holds 512 // 81 = 6 images and 512 // 97 = 5 clips."""
    data = GRNDataModule(kind="mixed", resolution=64, num_frames=5)
    data.connect(geometry=TokenGeometry(16, 4, spatial_stride=16, temporal_stride=4), token_budget=512,
                 sample_extra_tokens=65)  # fmt: skip
    assert (data.hparams.batch_size, data.hparams.video_batch_size) == (6, 5)
    stated = GRNDataModule(kind="mixed", resolution=64, num_frames=5, batch_size=2)
    stated.connect(geometry=TokenGeometry(16, 4, spatial_stride=16, temporal_stride=4), token_budget=512,
                   sample_extra_tokens=65)  # fmt: skip
    assert (stated.hparams.batch_size, stated.hparams.video_batch_size) == (2, 5)  # a stated batch size wins


def _token_shard(path, num_rounds: int, count: int = 8) -> str:
    import webdataset as wds

    rng = np.random.default_rng(0)
    with wds.TarWriter(str(path)) as writer:
        for i in range(count):
            labels = rng.integers(0, 2**num_rounds, size=(16, 1, 4, 4))
            record = encode_token_record(labels, num_rounds, spatial_stride=16, resolution=64)
            writer.write({"__key__": f"{i:04d}", "cls": str(i % 4), **record})
    return str(path)


def test_a_token_shard_made_with_another_m_is_refused_before_training(tmp_path):
    other = _token_shard(tmp_path / "m3-000000.tar", num_rounds=3)
    meta = json.loads(json.dumps(encode_token_record(np.zeros((16, 1, 4, 4), int), 3, spatial_stride=16,
                                                     resolution=64)["tokens.json"]))  # fmt: skip
    assert (meta["shape"][0], meta["num_rounds"], meta["spatial_stride"], meta["resolution"]) == (16, 3, 16, 64)
    data = GRNDataModule(kind="tokens", train_shards=other, resolution=64, num_workers=0, shuffle_buffer=8)
    trainer = _trainer(tmp_path)
    with pytest.raises(ValueError, match=r"data.train_shards: token shards made with rounds=3, the model expects "
                                         r"rounds=4"):  # fmt: skip
        trainer.fit(_c2i(), datamodule=data)
    assert trainer.global_step == 0
    # the same model trains on shards made with its own M
    good = _token_shard(tmp_path / "m4-000000.tar", num_rounds=4)
    data = GRNDataModule(kind="tokens", train_shards=good, resolution=64, num_workers=0, shuffle_buffer=8)
    trainer = _trainer(tmp_path)
    trainer.fit(_c2i(), datamodule=data)
    assert trainer.global_step == 1


def test_checkpoint_of_a_module_built_in_python_reloads_with_plain_hparams(tmp_path):
    torch.manual_seed(0)
    module = _c2i(grid_size=4)
    tokens = torch.randint(0, 16, (4, 16, 1, 4, 4))
    batch = {"tokens": tokens, "cls": torch.arange(4), "valid": torch.ones(4, dtype=torch.bool)}
    trainer = _trainer(tmp_path, steps=2)
    trainer.fit(module, torch.utils.data.DataLoader([batch] * 2, batch_size=None))
    path = tmp_path / "c2i.ckpt"
    trainer.save_checkpoint(path)
    hparams = torch.load(path, map_location="cpu", weights_only=True)["hyper_parameters"]  # no pickled objects
    assert hparams["transformer"]["class_path"].endswith("GRNC2ITransformer")
    assert hparams["transformer"]["init_args"]["grid_size"] == 4 and hparams["optimization"]["global_batch_size"] == 4
    assert "sampler" not in hparams and "tokenizer" not in hparams  # chosen per run
    loaded = C2IModule.load_from_checkpoint(str(path), map_location="cpu")
    assert loaded.model.config == module.model.config and loaded.optimization == module.optimization
    assert loaded.ema_options == module.ema_options
    for name, value in module.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], value), name
