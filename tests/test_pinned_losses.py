"""Behaviour pins: tiny fixed-seed fits of each stage (tokenizer, C2I, T2X) log the losses recorded on main at
7228653, before the generator modules received injected transformers, samplers and grouped options, and before the
EMA was unified. A refactor that changes initialisation, randomness, the optimiser, the LR rule or the EMA shows up
here as a different number (tolerance 1e-5 relative)."""

from __future__ import annotations

import lightning as L
import pytest
import torch

from grn_lightning.tokenizer.vae import HBQTokenizer
from tests.test_c2i_module import _Repeat, real_images

pytestmark = pytest.mark.usefixtures("one_thread")

STEPS = 4


class _Losses(L.Callback):
    def __init__(self, keys: tuple[str, ...]) -> None:
        self.keys, self.rows = keys, []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.rows.append([float(trainer.callback_metrics[k]) for k in self.keys])


def _fit(module: L.LightningModule, batch: dict, keys: tuple[str, ...], root, clip: float | None = 0.1) -> list:
    record = _Losses(keys)
    trainer = L.Trainer(accelerator="cpu", max_steps=STEPS, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[record],
                        default_root_dir=str(root), log_every_n_steps=1, gradient_clip_val=clip)  # fmt: skip
    L.seed_everything(1, verbose=False)
    trainer.fit(module, torch.utils.data.DataLoader(_Repeat(batch), batch_size=None))
    return record.rows


def _tiny_tokenizer(seed: int = 0) -> HBQTokenizer:
    torch.manual_seed(seed)
    return HBQTokenizer(latent_channels=16, num_rounds=4, preset="tiny").eval()


def _ema_sum(module) -> list[float]:
    """Sum of every EMA track's parameters (track 1 then track 2 where there is one)."""
    tracks = [module.ema] + ([module.ema2] if getattr(module, "ema2", None) is not None else [])
    return [float(sum(p.detach().double().sum() for p in track.parameters())) for track in tracks]


def build_tokenizer_module():
    from grn_lightning.tokenizer.discriminator import PatchDiscriminator
    from grn_lightning.tokenizer.losses import TokenizerLoss
    from grn_lightning.tokenizer.module import TokenizerModule

    torch.manual_seed(0)
    adamw = lambda params: torch.optim.AdamW(params, lr=1e-3, betas=(0.9, 0.95), weight_decay=0.01)  # noqa: E731
    return TokenizerModule(
        tokenizer=HBQTokenizer(preset="tiny", latent_channels=16, num_rounds=4),
        discriminator=PatchDiscriminator(base_channels=8, num_layers=2),
        loss=TokenizerLoss("image", perceptual_weight=0.0, random_backbone=True),
        optimizer=adamw, disc_optimizer=adamw, ema_decay=0.9, num_logged_samples=0,
    )  # fmt: skip


def build_c2i_module():
    from grn_lightning.generator.c2i.model import GRNC2ITransformer
    from grn_lightning.generator.c2i.module import C2IModule
    from grn_lightning.generator.options import Corruption, EMATracks, Optimization

    torch.manual_seed(0)
    tokenizer = _tiny_tokenizer()
    transformer = GRNC2ITransformer(size="tiny", variant="ind", channels=16, rounds=4, num_classes=4, grid_size=4,
                                    in_context_tokens=4)  # fmt: skip
    return C2IModule(transformer, tokenizer=tokenizer, corruption=Corruption(condition_dropout=0.25),
                     optimization=Optimization(lr=None, base_lr=0.05, global_batch_size=16, warmup_steps=2),
                     ema=EMATracks(decay=0.9, decay_2=0.5))  # fmt: skip


def build_t2x_module():
    from grn_lightning.generator.options import Corruption, EMATracks, Optimization
    from grn_lightning.generator.t2x.model import GRNT2XTransformer
    from grn_lightning.generator.t2x.module import Packing, T2XModule
    from grn_lightning.generator.t2x.text import UMT5TextEncoder

    torch.manual_seed(0)
    text = {"d_model": 32, "d_kv": 8, "d_ff": 64, "num_layers": 1, "num_heads": 4, "vocab_size": 384}
    encoder = UMT5TextEncoder(random_init=text, max_length=64, dtype="float32")
    torch.manual_seed(0)
    tokenizer = _tiny_tokenizer()
    transformer = GRNT2XTransformer(size="tiny", variant="bit", channels=16, rounds=4, text_dim=32)
    return T2XModule(transformer, tokenizer=tokenizer, text_encoder=encoder,
                     corruption=Corruption(ratio_mu=-1.3, ratio_sigma=1.3, condition_dropout=0.25),
                     packing=Packing(token_budget=512, pad_multiple=16),
                     optimization=Optimization(lr=3e-3, betas=(0.9, 0.999), weight_decay=0.01, warmup_steps=2),
                     ema=EMATracks(decay=0.9))  # fmt: skip


# Recorded on main 7228653 (CPU, torch 2.13) with the same modules built through that commit's flat constructors
# (same seeds, same construction order: tokenizer, then transformer).
TOKENIZER_ROWS = [  # train/rec, train/g_loss, train/d_loss per step
    [0.490342378616333, 0.5571364760398865, 0.9967541694641113],
    [0.4746992588043213, 0.525049090385437, 1.0011061429977417],
    [0.4594203233718872, 0.4872642159461975, 1.0204870700836182],
    [0.4464806020259857, 0.45883795619010925, 1.0349522829055786],
]
TOKENIZER_EMA = 914.6544376170586
C2I_ROWS = [[2.7725894451141357], [2.722728729248047], [2.6105713844299316], [2.4446349143981934]]
C2I_EMA = [129.60086686284973, 132.92544703364774]
# T2X re-recorded the same way on main 1750c77: the device-resident packing step (29f53d2) draws the corruption from
# the device RNG, which changed these numbers before this refactor touched the module.
T2X_ROWS = [[0.6931473016738892], [0.5727807879447937], [0.42979174852371216], [0.41274380683898926]]
T2X_EMA = [1844.2819397786193]


def _check(rows, expected) -> None:
    assert len(rows) == len(expected)
    for got, want in zip(rows, expected):
        assert got == pytest.approx(want, rel=1e-5, abs=1e-7), (rows, expected)


def test_tokenizer_fit_logs_the_pinned_losses(tmp_path):
    module = build_tokenizer_module()
    batch = {"pixels": real_images()}
    rows = _fit(module, batch, ("train/rec", "train/g_loss", "train/d_loss"), tmp_path, clip=None)
    shadow = float(sum(t.double().sum() for t in module.ema.state_dict()["shadows"][0].values()))
    _check(rows, TOKENIZER_ROWS)
    assert shadow == pytest.approx(TOKENIZER_EMA, rel=1e-5)


def test_c2i_fit_logs_the_pinned_losses(tmp_path):
    module = build_c2i_module()
    batch = {"pixels": real_images(), "cls": torch.arange(4), "valid": torch.ones(4, dtype=torch.bool)}
    rows = _fit(module, batch, ("train/loss",), tmp_path)
    _check(rows, C2I_ROWS)
    assert _ema_sum(module) == pytest.approx(C2I_EMA, rel=1e-5)


def test_t2x_fit_logs_the_pinned_losses(tmp_path):
    module = build_t2x_module()
    captions = ["an astronaut in a white suit", "a cat", "a cup of coffee on a saucer", "a rocket on the launch pad"]
    batch = {"pixels": real_images(), "caption": captions, "valid": torch.ones(4, dtype=torch.bool)}
    rows = _fit(module, batch, ("train/loss",), tmp_path)
    _check(rows, T2X_ROWS)
    assert _ema_sum(module) == pytest.approx(T2X_EMA, rel=1e-5)
