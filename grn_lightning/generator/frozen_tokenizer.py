"""The frozen HBQ tokenizer a generator uses to turn images into labels and labels back into images.

It is held by the generator's LightningModule WITHOUT being registered as a submodule (DESIGN.md: frozen networks
stay out of optimisers, checkpoints and FSDP units), so it is moved to the right device by hand.

Weights come from one file, in any of these forms (EMA weights preferred wherever both are present):
- a plain state dict of the tokenizer (`torch.save(tokenizer.state_dict())`);
- a dict holding such a state dict under "ema" / "state_dict" / "vae" (e.g. a converted release file);
- a Lightning checkpoint of a tokenizer LightningModule, whose `state_dict` holds the tokenizer under some prefix
  (e.g. "tokenizer.") and whose EMA may be stored as a prefixed copy (e.g. "ema_tokenizer.") or as shadow tensors
  in a separate entry (`checkpoint["ema"]["shadows"][0]`, the layout of `grn_lightning.training.ema.EMA`).
The prefix is found by matching key sets, so no naming convention of the tokenizer stage is hard-coded here.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import torch
from torch import nn


def _strip(state: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def _candidate_prefixes(keys: list[str], wanted: set[str]) -> list[str]:
    """Prefixes P such that stripping P from the keys that carry it yields exactly `wanted`."""
    if not wanted:
        return []
    sample = max(wanted, key=len)  # the longest name is the least likely to end another key by chance
    prefixes = {k[: -len(sample)] for k in keys if k.endswith(sample)}
    found = []
    for prefix in prefixes:
        if {k[len(prefix) :] for k in keys if k.startswith(prefix)} >= wanted:
            found.append(prefix)
    return sorted(found, key=lambda p: ("ema" not in p.lower(), len(p)))


def _shadow_state(entry, wanted: set[str]) -> dict[str, torch.Tensor] | None:
    """The first EMA track of an `EMA.state_dict()` whose names (after any prefix) cover the parameters."""
    if not isinstance(entry, Mapping) or not entry.get("shadows"):
        return None
    shadow = entry["shadows"][0]
    prefixes = _candidate_prefixes(list(shadow), wanted)
    return _strip(shadow, prefixes[0]) if prefixes else None


def _from_flat(state, expected: set[str]) -> tuple[dict[str, torch.Tensor], str] | None:
    """The tokenizer's entries of a flat (possibly prefixed) state dict, EMA-named prefixes first."""
    if not isinstance(state, Mapping):
        return None
    tensors = {k: v for k, v in state.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    prefixes = _candidate_prefixes(list(tensors), expected)
    return (_strip(tensors, prefixes[0]), prefixes[0]) if prefixes else None


def select_tokenizer_state(checkpoint: Mapping, tokenizer: nn.Module) -> tuple[dict[str, torch.Tensor], str]:
    """(state dict for `tokenizer`, description of where it came from) out of a loaded checkpoint object."""
    expected = set(tokenizer.state_dict())
    trainable = {n for n, _ in tokenizer.named_parameters()}
    flat = _from_flat(checkpoint, expected)
    if flat is not None:
        return flat[0], f"state dict (prefix {flat[1]!r})"
    for name in ("ema", "state_dict", "vae", "model"):
        entry = checkpoint.get(name)
        shadow = _shadow_state(entry, trainable)
        if shadow is not None:
            # EMA shadows hold the trainable parameters only; buffers come from the raw state dict.
            base = _from_flat(checkpoint.get("state_dict", {}), expected)
            return {**(base[0] if base else {}), **shadow}, f"EMA shadows in checkpoint[{name!r}]"
        flat = _from_flat(entry, expected)
        if flat is not None:
            return flat[0], f"checkpoint[{name!r}] (prefix {flat[1]!r})"
    raise KeyError(
        "could not find the tokenizer's weights in the checkpoint: expected a state dict with keys like "
        f"{sorted(expected)[:3]} (optionally under a prefix, in 'ema', 'state_dict' or 'vae'); top-level keys: "
        f"{sorted(checkpoint)[:10]}"
    )


def freeze(tokenizer: nn.Module) -> nn.Module:
    """Evaluation mode, no gradients."""
    tokenizer.eval()
    for p in tokenizer.parameters():
        p.requires_grad_(False)
    return tokenizer


def load_frozen_tokenizer(tokenizer: nn.Module, path: str | None) -> nn.Module:
    """Load weights from `path` (None keeps the tokenizer's own, e.g. random-initialised in tests) and freeze."""
    if path is not None:
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"model.tokenizer_ckpt: {path} does not exist. Give the HBQ tokenizer weights: a TokenizerModule "
                "checkpoint (grn fit --config configs/tokenizer_image.yaml) or a released tokenizer converted with "
                "tools/convert_official.py"
            )
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
        state, source = select_tokenizer_state(checkpoint, tokenizer)
        missing, unexpected = tokenizer.load_state_dict(state, strict=False)
        if missing:
            raise KeyError(f"tokenizer checkpoint {path} ({source}) lacks {len(missing)} keys, e.g. {missing[:5]}")
        tokenizer.loaded_from = f"{path} ({source})"
    return freeze(tokenizer)
