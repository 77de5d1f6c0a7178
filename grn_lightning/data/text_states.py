"""Cached text-encoder states in token records (docs/CONTRACTS.md), so T2X training runs no text encoder.

`tools/tokenize_shards.py --text-encoder-config ...` writes, next to a record's visual tokens, the umT5 last hidden
states of its task-tagged caption and of the task-tagged EMPTY caption (what 10% caption dropout trains on, SPEC §3),
each trimmed to its real length (EOS included) and stored as bf16 bit patterns:

    text.npy       uint16 [L, C]   bf16 bits of the caption's states
    null_text.npy  uint16 [L0, C]  bf16 bits of the empty caption's states
    text.json      {"task": "t2i" | "t2v" | "i2v", "dtype": "bfloat16"}

numpy has no bfloat16, so the bits travel as uint16 and become a bf16 tensor again without any arithmetic.
"""

from __future__ import annotations

import io
import json
from typing import Any

import numpy as np
import torch

TEXT_DTYPE = "bfloat16"


def encode_text_fields(text: torch.Tensor, null_text: torch.Tensor, task: str) -> dict[str, Any]:
    """Record fields for the states [L, C] of a caption and [L0, C] of the empty caption, both of task `task`."""
    fields: dict[str, Any] = {"text.json": {"task": task, "dtype": TEXT_DTYPE}}
    for name, states in (("text.npy", text), ("null_text.npy", null_text)):
        if states.ndim != 2:
            raise ValueError(f"{name}: text states must be [L, C], got shape {tuple(states.shape)}")
        fields[name] = states.detach().to("cpu", torch.bfloat16).contiguous().view(torch.int16).numpy().view(np.uint16)
    return fields


def _states(data: bytes) -> torch.Tensor:
    bits = np.load(io.BytesIO(data), allow_pickle=False)
    if bits.dtype != np.uint16 or bits.ndim != 2:
        raise ValueError(f"text states must be uint16 [L, C] bf16 bits, got {bits.dtype} {bits.shape}")
    return torch.from_numpy(bits.view(np.int16).copy()).view(torch.bfloat16)


def decode_text_fields(record: dict) -> dict[str, Any] | None:
    """`text` and `null_text` bf16 [L, C] tensors and the `text_task` of a record; None if it carries no states."""
    if "text.npy" not in record:
        return None
    meta = json.loads(record["text.json"]) if "text.json" in record else {}
    if meta.get("dtype", TEXT_DTYPE) != TEXT_DTYPE:
        raise ValueError(f"text states of dtype {meta.get('dtype')!r}; this version reads {TEXT_DTYPE!r}")
    return {"text": _states(record["text.npy"]), "null_text": _states(record["null_text.npy"]),
            "text_task": meta.get("task")}  # fmt: skip


def collate_text(samples: list[dict]) -> dict[str, Any]:
    """Batch fields for the samples' cached states, back to back: `text` [ΣL, C] with per-sample `text_lengths`, the
    same for `null_text`, and `text_task`. Samples without states (evaluation padding) get none (length 0)."""
    carriers = [s for s in samples if "text" in s]
    if not carriers:
        return {}
    width = carriers[0]["text"].shape[1]
    empty = torch.zeros(0, width, dtype=torch.bfloat16)
    out: dict[str, Any] = {}
    for key in ("text", "null_text"):
        parts = [s.get(key, empty) for s in samples]
        out[key] = torch.cat(parts)
        out[f"{key}_lengths"] = [int(p.shape[0]) for p in parts]
    out["text_task"] = [s.get("text_task") for s in samples]
    return out
