"""Load released GRN0b / GRN2b / GRN8b checkpoints (bytedance-research/GRN) into :class:`GRNT2XTransformer`.

Facts used (shared/reference/official-keys/grn_*.json and README): the released state dict has `word_embed.*`,
`text_proj.*`, `pt_embedder.mlp.{0,2}.*`, `head.{norm,proj}.*` and block i under
`block_chunks.{i // n}.module.{i % n}.*` (n = depth / chunks: GRN0b 2, GRN2b 4, GRN8b 6 blocks per chunk); there
are no buffers (the RoPE tables are a plain attribute). The release loads it with `strict=False` in places, so a
mismatch passes silently (SPEC §10). Here every released key must land on a parameter of the same shape and every
parameter must be covered, or the conversion fails listing the offending keys.

Our model keeps the released names except for the flat `blocks.{i}` list, so the name map only (un)nests blocks.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch
from torch import nn

from grn_lightning.tokenizer.convert import CheckpointMismatchError, load_checkpoint_file

# Entries a training/EMA checkpoint may hold its weights under, in order of preference for source="auto".
WRAPPER_KEYS = ("ema", "model", "state_dict")
_RELEASED_BLOCK = re.compile(r"^block_chunks\.(\d+)\.module\.(\d+)\.(.+)$")
_OUR_BLOCK = re.compile(r"^blocks\.(\d+)\.(.+)$")
# Prefixes wrappers add to every key: DDP (`module.`) and torch.compile (`_orig_mod.`).
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def select_t2x_weights(checkpoint: Mapping, source: str = "auto") -> tuple[dict[str, torch.Tensor], str]:
    """(state dict, where it came from) from a loaded file: a plain state dict, or one under "ema" / "model" /
    "state_dict". source: "auto" (plain if it already holds model keys, else the first wrapper present) or one of
    WRAPPER_KEYS."""
    if source != "auto" and source not in WRAPPER_KEYS:
        raise ValueError(f"source must be 'auto' or one of {WRAPPER_KEYS}, got {source!r}")
    entries = [k for k in WRAPPER_KEYS if isinstance(checkpoint.get(k), Mapping)]
    if source != "auto":
        if source not in entries:
            raise KeyError(f"checkpoint has no {source!r} weights; entries with weights: {entries or 'none'}")
        return dict(checkpoint[source]), source
    if any(isinstance(k, str) and _strip_prefixes(k).startswith(("word_embed.", "block_chunks.")) for k in checkpoint):
        return dict(checkpoint), "plain state dict"
    if entries:
        return dict(checkpoint[entries[0]]), entries[0]
    raise KeyError(f"no GRN weights found: expected a state dict or one of {WRAPPER_KEYS}, got keys {sorted(map(str, checkpoint))[:10]}")


def _strip_prefixes(name: str) -> str:
    stripped = True
    while stripped:
        stripped = False
        for prefix in _WRAPPER_PREFIXES:
            if name.startswith(prefix):
                name, stripped = name[len(prefix) :], True
    return name


def released_to_ours(name: str, blocks_per_chunk: int) -> str:
    """`block_chunks.c.module.j.rest` → `blocks.{c·n + j}.rest`; other names unchanged (wrapper prefixes removed)."""
    name = _strip_prefixes(name)
    match = _RELEASED_BLOCK.match(name)
    if match is None:
        return name
    chunk, inner, rest = int(match[1]), int(match[2]), match[3]
    if inner >= blocks_per_chunk:
        raise CheckpointMismatchError(f"{name}: module index {inner} >= {blocks_per_chunk} blocks per chunk")
    return f"blocks.{chunk * blocks_per_chunk + inner}.{rest}"


def ours_to_released(name: str, blocks_per_chunk: int) -> str:
    """Inverse of :func:`released_to_ours`."""
    match = _OUR_BLOCK.match(name)
    if match is None:
        return name
    index, rest = int(match[1]), match[2]
    return f"block_chunks.{index // blocks_per_chunk}.module.{index % blocks_per_chunk}.{rest}"


def infer_blocks_per_chunk(released: Mapping[str, torch.Tensor], depth: int) -> int:
    """n from the file itself (largest module index + 1), checked against the model depth: chunks · n == depth."""
    chunks, inner = set(), set()
    for name in released:
        match = _RELEASED_BLOCK.match(_strip_prefixes(name))
        if match is not None:
            chunks.add(int(match[1]))
            inner.add(int(match[2]))
    if not inner:
        return depth  # no nested blocks in the file: nothing to un-nest (the missing blocks are reported later)
    n, num_chunks = max(inner) + 1, max(chunks) + 1
    if n * num_chunks != depth:
        raise CheckpointMismatchError(
            f"released blocks are nested as {num_chunks} chunks x {n} blocks = {n * num_chunks}, the model has depth {depth}"
        )
    return n


def convert_released_t2x_state_dict(
    released: Mapping[str, torch.Tensor],
    model: nn.Module,
    dtype: torch.dtype | None = torch.float32,
    blocks_per_chunk: int | None = None,
) -> dict[str, torch.Tensor]:
    """Released state dict → `model`'s names (model may live on the meta device; only names and shapes are read).

    dtype: cast floating tensors (None keeps the file's, e.g. bf16). blocks_per_chunk: None infers it from the file.
    Raises :class:`CheckpointMismatchError` listing every unmatched, duplicated, missing or mis-shaped key.
    """
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    n = infer_blocks_per_chunk(released, model.depth) if blocks_per_chunk is None else blocks_per_chunk
    out: dict[str, torch.Tensor] = {}
    unmatched, duplicated, misshaped, seen = [], [], [], set()
    for name, tensor in released.items():
        try:
            ours = released_to_ours(name, n)
        except CheckpointMismatchError:
            unmatched.append(name)
            continue
        if ours not in expected:
            unmatched.append(name)
        elif ours in seen:
            duplicated.append(f"{name} -> {ours}")
        elif tuple(tensor.shape) != expected[ours]:
            seen.add(ours)
            misshaped.append(f"{name}: file {tuple(tensor.shape)} vs model {expected[ours]}")
        else:
            seen.add(ours)
            out[ours] = tensor.to(dtype) if dtype is not None and tensor.is_floating_point() else tensor
    missing = sorted(set(expected) - seen)
    if unmatched or duplicated or missing or misshaped:
        lines = [f"released GRN state dict does not match {type(model).__name__}({getattr(model, 'size', '?')}), "
                 f"{len(expected)} tensors, {n} blocks per chunk:"]  # fmt: skip
        for title, keys in (
            ("unmatched (in file, not in model)", unmatched),
            ("duplicated (two file keys, one parameter)", duplicated),
            ("missing (in model, not in file)", [ours_to_released(k, n) + f" (ours: {k})" for k in missing]),
            ("shape mismatch", misshaped),
        ):
            if keys:
                lines.append(f"  {title}: {len(keys)}")
                lines += [f"    {k}" for k in keys[:50]] + ([f"    ... {len(keys) - 50} more"] if len(keys) > 50 else [])
        raise CheckpointMismatchError("\n".join(lines))
    return out


def to_released_t2x_state_dict(model: nn.Module, blocks_per_chunk: int | None = None) -> dict[str, torch.Tensor]:
    """Our weights under the released names; blocks nested as the release nests this size (None: model's
    `depth // release_chunks`)."""
    n = model.depth // model.release_chunks if blocks_per_chunk is None else blocks_per_chunk
    return {ours_to_released(k, n): v for k, v in model.state_dict().items()}


def load_released_t2x(model: nn.Module, path: str, source: str = "auto", trust_pickle: bool = False) -> dict:
    """Load a released GRN checkpoint file into `model` in place (strict); returns a summary."""
    released, chosen = select_t2x_weights(load_checkpoint_file(path, trust_pickle), source)
    file_dtypes = sorted({str(t.dtype).removeprefix("torch.") for t in released.values()})
    state = convert_released_t2x_state_dict(released, model, dtype=next(model.parameters()).dtype)
    model.load_state_dict(state, strict=True)
    return {
        "path": path, "source": chosen, "tensors": len(state), "parameters": sum(t.numel() for t in state.values()),
        "file_dtypes": file_dtypes,
    }  # fmt: skip
