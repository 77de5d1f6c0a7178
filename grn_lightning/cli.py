"""`grn`: one LightningCLI entry point for every stage (tokenizer, C2I, T2I/T2V).

    grn fit --config configs/tokenizer_video.yaml [--config more.yaml] [--trainer.max_steps 1000]
    grn fit --config configs/c2i_grn_b.yaml --ckpt_path last        # resume after a crash
    grn test --config configs/tokenizer_image.yaml --ckpt_path run/checkpoints/last.ckpt
    grn fit --config configs/c2i_grn_b.yaml --print_config          # the fully resolved config

The model and the data module are chosen by `class_path` in the config, so the same command serves all
stages; jsonargparse validates every key against the typed __init__ signatures before anything is built,
so a typo fails at once with the bad key named.
"""

from __future__ import annotations

import os
import sys
import traceback

import grn_lightning  # noqa: F401  (torchvision compatibility before lightning)

import torch
from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.utilities import rank_zero_info

from grn_lightning.data.health import SkippedSamplesLogger
from grn_lightning.training.resume import checkpoint_folders, find_last_checkpoint


class GRNCLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:
        # Always present (not overwritten when a config lists its own callbacks): skipped-record counter.
        parser.add_lightning_class_args(SkippedSamplesLogger, "skipped_samples")

    def _resolve_last_checkpoint(self) -> None:
        """`--ckpt_path last`: the run's newest last.ckpt in any logger version (training/resume.py), or a fresh
        start that says so when the run has none yet (the first launch of a job that always passes `last`)."""
        config = self.config_init[self.subcommand]
        if config.get("ckpt_path") != "last":
            return
        found = find_last_checkpoint(self.trainer)
        if found is None:
            folders = ", ".join(str(f) for f in checkpoint_folders(self.trainer))
            rank_zero_info(f"--ckpt_path last: no last*.ckpt in {folders}; starting from step 0")
        else:
            rank_zero_info(f"--ckpt_path last: resuming from {found}")
        config["ckpt_path"] = str(found) if found is not None else None

    def before_fit(self) -> None:
        self._resolve_last_checkpoint()

    def before_validate(self) -> None:
        self._resolve_last_checkpoint()

    def before_test(self) -> None:
        self._resolve_last_checkpoint()

    def before_predict(self) -> None:
        self._resolve_last_checkpoint()


def main(args: list[str] | None = None, run: bool = True) -> GRNCLI:
    """Entry point of the `grn` console script; tests call it in-process with `args`."""
    if torch.cuda.is_available():
        torch.set_float32_matmul_precision("high")  # TF32 for fp32 matmuls on Ampere+; bf16 paths unaffected
    return GRNCLI(
        LightningModule,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        args=args,
        run=run,
        # Re-running into an existing log dir (resume) rewrites config.yaml instead of refusing to start.
        save_config_kwargs={"overwrite": True},
        auto_configure_optimizers=False,
    )


def console() -> None:
    """The `grn` console script. Returns None: the generated wrapper calls `sys.exit(console())`, and exiting with
    the CLI object would print it and end with status 1 after a successful run.

    A configuration problem that grn-lightning itself reports (a missing weight file or checkpoint, a bad option
    value) reaches the user as that one message and exit status 2: jsonargparse would otherwise bury it under a
    traceback and a dump of every parsed option. GRN_DEBUG=1 keeps the full traceback."""
    try:
        main()
    except Exception as err:  # noqa: BLE001  (re-raised unless it is one of our own configuration errors)
        cause = own_configuration_error(err)
        if cause is None or os.environ.get("GRN_DEBUG"):
            raise
        print(f"grn: error: {cause}\n(GRN_DEBUG=1 shows the full traceback)", file=sys.stderr)
        sys.exit(2)


def own_configuration_error(err: BaseException) -> BaseException | None:
    """The root cause of `err` when it is a configuration error raised by grn-lightning code (missing file, bad
    value, missing key), else None."""
    root = err
    for _ in range(32):  # follow __cause__ / __context__ to the innermost exception
        nxt = root.__cause__ or root.__context__
        if nxt is None:
            break
        root = nxt
    if root is err or not isinstance(root, (FileNotFoundError, ValueError, KeyError)):
        return None
    frames = traceback.extract_tb(root.__traceback__)
    return root if frames and f"{os.sep}grn_lightning{os.sep}" in frames[-1].filename else None


if __name__ == "__main__":
    console()
