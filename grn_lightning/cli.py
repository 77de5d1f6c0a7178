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

import json
import os
import sys
from pathlib import Path

import grn_lightning  # noqa: F401  (torchvision compatibility before lightning)

import torch
import yaml
from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.callbacks.progress import ProgressBar
from lightning.pytorch.cli import LightningCLI, SaveConfigCallback
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only

from grn_lightning.cli_output import StepProgressBar, quiet_third_party_output
from grn_lightning.data.health import SkippedSamplesLogger
from grn_lightning.errors import user_error_message
from grn_lightning.training.ckpt_settings import (
    CkptSettings,
    check_checkpoint_settings,
    command_line_model_keys,
    require_checkpoint_file,
)
from grn_lightning.training.evaluation_step import EvaluateAtCheckpointStep
from grn_lightning.training.preemption import FinalCheckpoint, PreemptionCheckpoint
from grn_lightning.training.preflight import check_training_labels
from grn_lightning.training.resume import checkpoint_folders, find_last_checkpoint


class SaveRunConfig(SaveConfigCallback):
    """config.yaml belongs to the fit run: `grn validate/test/predict` into the same folder write config_<stage>.yaml
    next to it (a test run once replaced the run's max_steps 200 by its own 4)."""

    def setup(self, trainer, pl_module, stage: str) -> None:
        stage = getattr(stage, "value", stage)  # Lightning passes its TrainerFn enum
        if stage != "fit":
            self.config_filename = f"config_{stage}.yaml"
        super().setup(trainer, pl_module, stage)


class GRNCLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:
        # Always present (not overwritten when a config lists its own callbacks): skipped-record counter.
        parser.add_lightning_class_args(SkippedSamplesLogger, "skipped_samples")
        parser.add_argument(
            "--ckpt_settings", type=CkptSettings, default="checkpoint",
            help="Model settings saved in --ckpt_path's file against this configuration's: checkpoint (the saved "
                 "values fill the model options, printed where they differ; one that differs from a value given on "
                 "the command line is an error), config (this configuration's values win, e.g. after moving a weights "
                 "file; the differences are printed).",
        )  # fmt: skip
        parser.add_argument(
            "--allow_uncaptioned", type=bool, default=False,
            help="fit: train a text-to-image/video stage on shards whose records carry no caption (otherwise an "
                 "error before training starts).",
        )  # fmt: skip

    # -- --ckpt_path: a file that exists, of this module class, saved with these model settings ----------------------
    def _parse_ckpt_path(self) -> None:
        """Replaces LightningCLI's, which re-parsed the configuration with the checkpoint's saved settings so that
        they silently won (training/ckpt_settings.py). Runs before anything is built; `last` is checked once it is
        resolved (before_fit etc.)."""
        subcommand = self.config.get("subcommand")
        if subcommand:
            self._check_checkpoint(subcommand, self.config[subcommand].get("ckpt_path"))

    def parse_arguments(self, parser, args) -> None:
        self._command_line = list(sys.argv[1:] if args is None else args) if not isinstance(args, dict) else []
        super().parse_arguments(parser, args)

    def _check_checkpoint(self, subcommand: str, ckpt_path: str | None, can_adopt: bool = True) -> None:
        path = require_checkpoint_file(str(ckpt_path)) if ckpt_path else None
        if path is None:
            return
        dumped = yaml.safe_load(self.parser.dump(self.config, skip_link_targets=False, skip_unset=False))
        model = dumped[subcommand]["model"]
        given = command_line_model_keys(self._command_line)
        mode = self.config[subcommand].get("ckpt_settings") or "checkpoint"
        adopted = check_checkpoint_settings(path, model, given, mode, can_adopt)
        if adopted:
            update = {subcommand: {"model": {"class_path": model["class_path"], "init_args": adopted}}}
            self.config = self.parser.parse_object(update, self.config)

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
            self._check_checkpoint(self.subcommand, str(found), can_adopt=False)
        config["ckpt_path"] = str(found) if found is not None else None

    def _instantiate_trainer(self, config: dict, callbacks: list) -> Trainer:
        # Always on, whatever callbacks a config lists: save on SIGTERM/SIGUSR1 and at the final step, evaluation at the
        # checkpoint's step, and a step-counting progress bar unless the bar is off or the config brings its own.
        extra = [PreemptionCheckpoint(), FinalCheckpoint(), EvaluateAtCheckpointStep()]
        listed = config.get("callbacks") or []
        listed = listed if isinstance(listed, list) else [listed]
        if config.get("enable_progress_bar") is not False and not any(isinstance(c, ProgressBar) for c in listed):
            extra.append(StepProgressBar())
        return super()._instantiate_trainer(config, [*callbacks, *extra])

    def before_fit(self) -> None:
        self._resolve_last_checkpoint()
        allow = bool(self.config_init[self.subcommand].get("allow_uncaptioned"))
        check_training_labels(self.model, self.datamodule, allow_uncaptioned=allow)

    def before_validate(self) -> None:
        self._resolve_last_checkpoint()

    def before_test(self) -> None:
        self._resolve_last_checkpoint()

    def before_predict(self) -> None:
        self._resolve_last_checkpoint()

    def after_validate(self) -> None:
        self._save_results("validate")

    def after_test(self) -> None:
        self._save_results("test")

    @rank_zero_only
    def _save_results(self, stage: str) -> None:
        """results_<stage>.json next to the run's config: the metrics, the checkpoint and its training step."""
        folder = Path(self.trainer.log_dir or self.trainer.default_root_dir)
        metrics = {k: float(v) for k, v in self.trainer.callback_metrics.items() if torch.as_tensor(v).numel() == 1}
        record = {"ckpt_path": self.trainer.ckpt_path, "global_step": self.trainer.global_step, "metrics": metrics}
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"results_{stage}.json").write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")


def main(args: list[str] | None = None, run: bool = True) -> GRNCLI:
    """Entry point of the `grn` console script; tests call it in-process with `args`."""
    quiet_third_party_output()
    if torch.cuda.is_available():
        torch.set_float32_matmul_precision("high")  # TF32 for fp32 matmuls on Ampere+; bf16 paths unaffected
    return GRNCLI(
        LightningModule,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        args=args,
        run=run,
        save_config_callback=SaveRunConfig,
        # Re-running into an existing log dir (resume) rewrites config.yaml instead of refusing to start.
        save_config_kwargs={"overwrite": True},
        auto_configure_optimizers=False,
    )


def console() -> None:
    """The `grn` console script. Returns None: the generated wrapper calls `sys.exit(console())`, and exiting with
    the CLI object would print it and end with status 1 after a successful run.

    Every failure the user can fix (errors.py: a GRNUserError from any part of grn-lightning, a missing file, a bad
    value named by our code or a Lightning configuration error) reaches the user as one `grn: error:` message with
    exit status 2, not a traceback and a dump of every parsed option. GRN_DEBUG=1 keeps the full traceback."""
    try:
        main()
    except Exception as err:  # noqa: BLE001  (re-raised unless the user can fix it)
        message = None if os.environ.get("GRN_DEBUG") else user_error_message(err)
        if message is None:
            raise
        print(f"grn: error: {message}\n(GRN_DEBUG=1 shows the full traceback)", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    console()
