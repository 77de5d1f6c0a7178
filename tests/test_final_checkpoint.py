"""`last.ckpt` holds the final step of a fit whose max_steps is no multiple of the checkpoint interval
(training/preemption.py: FinalCheckpoint; found when a GPU `make repro` tested 2,500-step tokenizers at step 2,400)."""

from __future__ import annotations

from pathlib import Path

import grn_lightning  # noqa: F401  (torchvision compatibility before lightning)
import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.demos.boring_classes import BoringModel

from grn_lightning.training.preemption import FinalCheckpoint


def _fit(tmp_path: Path, extra: list, max_steps: int = 5) -> tuple[L.Trainer, dict]:
    """BoringModel fit with `last.ckpt` saved every 2 steps; (trainer, the saved last.ckpt)."""
    L.seed_everything(0)
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "checkpoints", every_n_train_steps=2, save_last=True)
    trainer = L.Trainer(max_steps=max_steps, val_check_interval=5, limit_val_batches=1, logger=False, accelerator="cpu",
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[checkpoint, *extra])  # fmt: skip
    trainer.fit(BoringModel())
    return trainer, torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)


def test_lightning_alone_leaves_last_ckpt_behind_the_final_step(tmp_path):
    # The behaviour FinalCheckpoint exists for; if a Lightning release changes it, this test says the callback is moot.
    _, saved = _fit(tmp_path, [])
    assert saved["global_step"] == 4


def test_final_checkpoint_saves_the_trained_model_at_the_final_step(tmp_path):
    trainer, saved = _fit(tmp_path, [FinalCheckpoint()])
    assert saved["global_step"] == 5
    for name, value in trainer.lightning_module.state_dict().items():
        torch.testing.assert_close(saved["state_dict"][name], value, rtol=0, atol=0)
    # a later `--ckpt_path last` resumes at the end: nothing is trained twice
    assert saved["loops"]["fit_loop"]["epoch_loop.state_dict"]["_batches_that_stepped"] == 5


def test_final_checkpoint_leaves_a_last_ckpt_already_at_the_final_step_alone(tmp_path):
    # max_steps 4 with a save every 2 steps: Lightning saved at step 4 itself; no second write
    trainer, saved = _fit(tmp_path, [FinalCheckpoint()], max_steps=4)
    last = tmp_path / "checkpoints" / "last.ckpt"
    written = last.stat().st_mtime_ns
    FinalCheckpoint().on_train_end(trainer, trainer.lightning_module)
    assert last.stat().st_mtime_ns == written and saved["global_step"] == 4


def test_grn_adds_final_checkpoint_whatever_callbacks_a_config_lists():
    from grn_lightning.cli import main

    cli = main(["--config", str(Path(__file__).resolve().parents[1] / "configs/smoke/tokenizer_image.yaml"),
                "--trainer.logger", "false"], run=False)  # fmt: skip
    assert sum(isinstance(c, FinalCheckpoint) for c in cli.trainer.callbacks) == 1
