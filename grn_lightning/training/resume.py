"""`--ckpt_path last` that finds the run's newest `last.ckpt` after a restart (SPEC §10: the release's resume glob
never matched the saved names, so "resumed" jobs silently started over).

Lightning resolves "last" only inside the checkpoint folder of the CURRENT logger version. A restarted job gets a
new TensorBoard version (`tb/version_1/...` while the checkpoint sits in `tb/version_0/checkpoints`), so Lightning
warns and trains from step 0. Here every version folder of the run's loggers, every explicit `ModelCheckpoint`
dirpath and `<default_root_dir>/checkpoints` are searched, and the newest `last*.ckpt` (a file, or the folder of a
sharded checkpoint) wins.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint

LAST_PATTERN = "last*.ckpt"  # ModelCheckpoint(save_last=True) writes last.ckpt, or last-v1.ckpt beside an old one
HPC_PATTERN = "hpc_ckpt_*.ckpt"  # Lightning's SLURM auto-requeue saves these in default_root_dir on SIGUSR1


def checkpoint_folders(trainer: L.Trainer) -> list[Path]:
    """Folders that may hold this run's `last.ckpt`: explicit ModelCheckpoint dirpaths, every version folder's
    `checkpoints/` under each logger's root, and `<default_root_dir>/checkpoints` (Lightning's logger-less default)."""
    folders = [Path(cb.dirpath) for cb in trainer.checkpoint_callbacks if isinstance(cb, ModelCheckpoint) and cb.dirpath]
    for logger in trainer.loggers:
        root = getattr(logger, "root_dir", None)
        if root and Path(root).is_dir():
            folders += sorted(p for p in Path(root).glob("*/checkpoints") if p.is_dir())
    folders.append(Path(trainer.default_root_dir) / "checkpoints")
    return list(dict.fromkeys(folders))  # keep order, drop repeats


def find_last_checkpoint(trainer: L.Trainer) -> Path | None:
    """The most recently written `last*.ckpt` in `checkpoint_folders(trainer)` or SLURM requeue checkpoint, or None."""
    found = [path for folder in checkpoint_folders(trainer) for path in folder.glob(LAST_PATTERN)]
    found += Path(trainer.default_root_dir).glob(HPC_PATTERN)
    return max(found, key=lambda path: path.stat().st_mtime) if found else None
