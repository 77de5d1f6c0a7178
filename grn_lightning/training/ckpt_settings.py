"""What `--ckpt_path` may load, and which model settings win: the file must exist and hold the configured module
class; its saved settings never silently replace a value given on the command line.

LightningCLI alone re-parses the configuration with the settings saved in the checkpoint, without a word:
`--model.init_args.size B` with a tiny checkpoint trained the tiny model, and a tokenizer checkpoint given to the C2I
config silently swapped the module for a TokenizerModule (issue 15). Here:
- a checkpoint of another module class is an error naming both classes;
- a checkpoint file's saved settings still fill the model options (so `grn test/predict` need not repeat every
  training option), printed where they differ from the configuration; but one that differs from a value given on the
  command line is an error naming both values;
- `--ckpt_path last` resumes the run with its configuration (resolved after the model is built): differences from
  the configuration files are printed, a differing command-line value is an error as above;
- `--ckpt_settings config`: this configuration's values always win; the differences are printed.
"""

from __future__ import annotations

from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from grn_lightning.errors import GRNUserError

CkptSettings = Literal["checkpoint", "config"]
# Values of --ckpt_path that Lightning resolves itself (GRNCLI resolves "last" before the check runs).
SPECIAL_CKPT_PATHS = ("last", "best", "hpc")
_BOOKKEEPING = ("_class_path", "_instantiator")


def checkpoint_hparams(path: Path) -> dict[str, Any]:
    """The module settings saved in a checkpoint file (or a sharded checkpoint folder's meta.pt); {} if none.
    mmap: the tensors are not read, so this stays cheap for multi-GB checkpoints."""
    file = path / "meta.pt" if path.is_dir() else path
    if not file.is_file():
        return {}
    try:
        saved = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:  # noqa: BLE001  (any unreadable file is the same user-facing problem)
        raise GRNUserError(f"--ckpt_path {path}: not a readable checkpoint ({type(err).__name__}: {err})") from err
    hparams = saved.get("hyper_parameters", {}) if isinstance(saved, dict) else {}
    return dict(hparams) if isinstance(hparams, dict) else {}


def require_checkpoint_file(ckpt_path: str) -> Path | None:
    """The checkpoint as a Path, None for Lightning's special names; an error naming the path when it is missing."""
    if ckpt_path in SPECIAL_CKPT_PATHS or ckpt_path.startswith("registry"):
        return None
    path = Path(ckpt_path)
    if not path.exists():
        raise GRNUserError(
            f"--ckpt_path {ckpt_path}: no such file. Give a checkpoint written by `grn fit` (e.g. "
            "<default_root_dir>/tb/version_0/checkpoints/last.ckpt), or `--ckpt_path last` to resume the newest "
            "last.ckpt of this run's folders."
        )
    return path


def _plain(value: Any) -> Any:
    """Comparable form: tuples as lists, dataclasses and Namespaces as dicts (checkpoints written outside the CLI
    hold the raw __init__ values, CLI checkpoints the YAML-loaded ones)."""
    if is_dataclass(value) and not isinstance(value, type):
        value = asdict(value)
    if hasattr(value, "as_dict"):
        value = value.as_dict()
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return value


def differing_settings(saved: dict, configured: dict, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], Any, Any]]:
    """(key path, checkpoint value, configuration value) for every setting both sides hold with different values. A
    key on one side only (an option added or removed since the checkpoint was written) is not a disagreement."""
    found = []
    for key in sorted(set(saved) & set(configured)):
        if key in _BOOKKEEPING:
            continue
        old, new = _plain(saved[key]), _plain(configured[key])
        if isinstance(old, dict) and isinstance(new, dict):
            found += differing_settings(old, new, (*path, key))
        elif old != new:
            found.append(((*path, key), old, new))
    return found


def command_line_model_keys(args: list[str]) -> set[tuple[str, ...]]:
    """Model options given on the command line, as key paths below init_args: `--model.init_args.transformer.init_args.
    size B` and `--model.transformer.size=B` give ("transformer", "init_args", "size") / ("transformer", "size")."""
    keys = set()
    for arg in args:
        if not arg.startswith("--model."):
            continue
        parts = arg[2:].split("=", 1)[0].split(".")[1:]
        if parts and parts[0] == "init_args":
            parts = parts[1:]
        if parts:
            keys.add(tuple(parts))
    return keys


def _given(key: tuple[str, ...], given: set[tuple[str, ...]]) -> bool:
    """Whether the setting at `key` was given on the command line (the option itself, one above or one below it;
    `init_args` levels are optional on the command line)."""
    plain = tuple(part for part in key if part != "init_args")
    for option in given:
        option = tuple(part for part in option if part != "init_args")
        if plain[: len(option)] == option or option[: len(plain)] == plain:
            return True
    return False


def _listing(differences: list) -> str:
    return "\n  ".join(f"model.init_args.{'.'.join(key)}: checkpoint {old!r}, configuration {new!r}"
                        for key, old, new in differences)  # fmt: skip


def check_checkpoint_settings(
    path: Path, model_config: dict, given: set[tuple[str, ...]], mode: CkptSettings = "checkpoint", can_adopt: bool = True
) -> dict[str, Any]:
    """Refuse a checkpoint of another module class, and one whose saved settings differ from a value given on the
    command line (`given`). Returns the saved settings the configuration should adopt ({} if none).

    model_config: the configuration's `model` entry as dumped by the CLI ({"class_path": ..., "init_args": ...}).
    can_adopt: False when the model is already built (`--ckpt_path last`, resolved after instantiation): the
        configuration's values are then kept, and the differences printed."""
    saved = checkpoint_hparams(path)
    if not saved:
        return {}  # written without save_hyperparameters (e.g. converted release weights): nothing to compare
    saved_class, configured_class = saved.get("_class_path"), model_config.get("class_path")
    if saved_class and configured_class and saved_class != configured_class:
        raise GRNUserError(
            f"--ckpt_path {path} holds a {saved_class} checkpoint, but the configuration builds a {configured_class}. "
            "Give a checkpoint of this stage, or the config of the stage that wrote it."
        )
    differences = differing_settings(saved, model_config.get("init_args") or {})
    if not differences:
        return {}
    if mode == "config":
        rank_zero_warn(f"--ckpt_path {path}: this configuration's values are used where they differ from the "
                       f"checkpoint's saved settings (--ckpt_settings config):\n  {_listing(differences)}")  # fmt: skip
        return {}
    on_command_line = [d for d in differences if _given(d[0], given)]
    if on_command_line:
        raise GRNUserError(
            f"--ckpt_path {path} was saved with other model settings than the command line gives:\n  "
            f"{_listing(on_command_line)}\nDrop these options (the checkpoint's values are used) or start a new run "
            "without --ckpt_path; to use the command line's values anyway (e.g. a moved weights file), add "
            "`--ckpt_settings config`."
        )
    if not can_adopt:
        rank_zero_warn(f"--ckpt_path {path}: resuming with this run's configuration, which differs from the "
                       f"checkpoint's saved settings:\n  {_listing(differences)}")  # fmt: skip
        return {}
    rank_zero_info(f"--ckpt_path {path}: the model is built with the checkpoint's saved settings where the "
                   f"configuration differs:\n  {_listing(differences)}")  # fmt: skip
    return {key[0]: saved[key[0]] for key, _, _ in differences}
