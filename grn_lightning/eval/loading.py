"""Build trained modules for offline evaluation from a ``grn`` config file plus a checkpoint.

The config is the same YAML ``grn fit`` used (its ``model:`` section: ``class_path`` + ``init_args``), so the
evaluated network has exactly the trained structure; only the ``model`` section is read, so evaluation needs
no data shards and builds no trainer.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping

import torch
from torch import nn

__all__ = ["find_class_spec", "instantiate_from_spec", "load_config_section", "load_lightning_checkpoint"]


def load_config_section(config_path: str | os.PathLike, section: str = "model") -> dict:
    """The ``section`` mapping of a grn YAML config (``class_path`` + ``init_args``)."""
    import yaml

    if not os.path.isfile(config_path):
        raise FileNotFoundError(f"config {config_path} not found")
    with open(config_path) as handle:
        config = yaml.safe_load(handle) or {}
    if not isinstance(config.get(section), Mapping) or "class_path" not in config[section]:
        raise KeyError(f"{config_path}: no '{section}:' section with a class_path (a `grn fit` config is expected)")
    return copy.deepcopy(dict(config[section]))


def find_class_spec(spec, class_name: str) -> dict | None:
    """The first nested ``{class_path: ...<class_name>, init_args: ...}`` inside a config mapping (depth first)."""
    if isinstance(spec, Mapping):
        if str(spec.get("class_path", "")).rsplit(".", 1)[-1] == class_name:
            return dict(spec)
        for value in spec.values():
            found = find_class_spec(value, class_name)
            if found is not None:
                return found
    elif isinstance(spec, list):
        for value in spec:
            found = find_class_spec(value, class_name)
            if found is not None:
                return found
    return None


def instantiate_from_spec(spec: Mapping, base: type = nn.Module, **init_overrides) -> nn.Module:
    """Instantiate ``{class_path, init_args}`` with jsonargparse (type-checked like the ``grn`` CLI)."""
    from jsonargparse import ArgumentParser

    spec = copy.deepcopy(dict(spec))
    spec["init_args"] = {**(spec.get("init_args") or {}), **init_overrides}
    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(base, "obj", required=True)
    config = parser.parse_object({"obj": spec})
    return parser.instantiate_classes(config).obj


def load_lightning_checkpoint(module: nn.Module, path: str | os.PathLike, strict: bool = True) -> dict:
    """Load a Lightning checkpoint into ``module`` the way the Trainer does (``on_load_checkpoint`` first, then
    ``state_dict``), so EMA copies and other module-managed state are restored. Returns the checkpoint."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {path} not found")
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    state = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, Mapping) else None
    if state is None:
        raise KeyError(f"{path} is not a Lightning checkpoint or state dict")
    if hasattr(module, "on_load_checkpoint") and "state_dict" in checkpoint:
        module.on_load_checkpoint(checkpoint)
    module.load_state_dict(state, strict=strict)
    return checkpoint
