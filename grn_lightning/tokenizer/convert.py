"""Load released HBQ tokenizer checkpoints (bytedance-research/GRN) into :class:`CausalVAE` / :class:`HBQTokenizer`.

Facts used (shared/reference/official-keys/README.md): a released file is a dict whose weights sit under
``"ema"`` (EMA copy) and/or ``"vae"`` (raw); both are plain state dicts with keys ``encoder.*``, ``conv1.*``,
``conv2.*``, ``decoder.*`` (196 tensors) and may be bf16 or fp32. The tokenizer evaluator also knows legacy
extras (``quantizer.scale_learnable_parameters``, ``z_mean``, ``z_std``) that carry nothing the model needs.

Our VAE uses the released module names, so the name map is the identity inside the VAE plus the ``vae.``
prefix when the target is an :class:`HBQTokenizer`. The release's own loaders are lenient (strict=False in the
evaluator); here every released key must land on a parameter of the same shape and every parameter must be
covered, or the conversion fails listing the offending keys.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

# Keys the release may carry that hold no VAE weights (legacy quantizer scale, latent statistics).
LEGACY_EXTRAS = ("quantizer.scale_learnable_parameters", "z_mean", "z_std")
# Which weights to use when a file has both; the T2IV inference loader prefers the EMA copy.
SOURCES = ("auto", "ema", "vae")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "keep": None}


class CheckpointMismatchError(KeyError):
    """A released state dict does not cover the model exactly (unmatched, missing or mis-shaped keys)."""

    def __str__(self) -> str:  # KeyError would repr() the message; keep the listing readable
        return str(self.args[0]) if self.args else ""


def _target_prefix(model: nn.Module) -> str:
    """'' for a bare CausalVAE, 'vae.' for an HBQTokenizer (anything holding the VAE as `.vae`)."""
    return "vae." if isinstance(getattr(model, "vae", None), nn.Module) else ""


def select_released_weights(checkpoint: Mapping, source: str = "auto") -> tuple[dict[str, torch.Tensor], str]:
    """(state dict, which entry) from a loaded released file.

    source: "auto" (``ema`` if present, else ``vae``, else the mapping itself if it already is a state dict),
    "ema" or "vae" (that entry or an error naming the entries the file has).
    """
    if source not in SOURCES:
        raise ValueError(f"source must be one of {SOURCES}, got {source!r}")
    entries = [k for k in ("ema", "vae") if isinstance(checkpoint.get(k), Mapping)]
    if source != "auto":
        if source not in entries:
            raise KeyError(f"checkpoint has no {source!r} weights; entries with weights: {entries or 'none'}")
        return dict(checkpoint[source]), source
    if entries:
        return dict(checkpoint[entries[0]]), entries[0]
    if any(isinstance(k, str) and k.startswith("encoder.") for k in checkpoint):
        return dict(checkpoint), "plain state dict"
    raise KeyError(f"no tokenizer weights found: expected 'ema' or 'vae' entries, got keys {sorted(map(str, checkpoint))[:10]}")


def released_to_ours(name: str, prefix: str) -> str:
    """Released parameter name -> our name (identity inside the VAE; `prefix` places it in the tokenizer)."""
    return prefix + (name[len("module.") :] if name.startswith("module.") else name)


def ours_to_released(name: str, prefix: str) -> str:
    """Inverse of :func:`released_to_ours`."""
    if not name.startswith(prefix):
        raise KeyError(f"{name!r} is not a VAE parameter (expected prefix {prefix!r})")
    return name[len(prefix) :]


def convert_released_state_dict(
    released: Mapping[str, torch.Tensor],
    model: nn.Module,
    dtype: torch.dtype | None = torch.float32,
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Map a released state dict onto `model`'s names; returns (state dict, dropped legacy keys).

    `model` only provides names and shapes (it may live on the meta device). Raises
    :class:`CheckpointMismatchError` listing every unmatched, missing or mis-shaped key.
    dtype: cast floating tensors to this dtype (None keeps the file's, e.g. bf16).
    """
    prefix = _target_prefix(model)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    out: dict[str, torch.Tensor] = {}
    dropped, unmatched, misshaped, seen = [], [], [], set()
    for name, tensor in released.items():
        bare = name[len("module.") :] if name.startswith("module.") else name
        if bare in LEGACY_EXTRAS:
            dropped.append(name)
            continue
        ours = released_to_ours(name, prefix)
        if ours not in expected:
            unmatched.append(name)
        elif tuple(tensor.shape) != expected[ours]:
            seen.add(ours)
            misshaped.append(f"{name}: file {tuple(tensor.shape)} vs model {expected[ours]}")
        else:
            out[ours] = tensor.to(dtype) if dtype is not None and tensor.is_floating_point() else tensor
    missing = sorted(set(expected) - set(out) - seen)
    if unmatched or missing or misshaped:
        lines = [f"released state dict does not match the model ({type(model).__name__}, {len(expected)} tensors):"]
        for title, keys in (("unmatched (in file, not in model)", unmatched), ("missing (in model, not in file)", missing),
                            ("shape mismatch", misshaped)):  # fmt: skip
            if keys:
                lines.append(f"  {title}: {len(keys)}")
                lines += [f"    {k}" for k in keys[:50]] + ([f"    ... {len(keys) - 50} more"] if len(keys) > 50 else [])
        raise CheckpointMismatchError("\n".join(lines))
    return out, dropped


def to_released_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Our VAE weights under the released names (inverse of :func:`convert_released_state_dict`)."""
    prefix = _target_prefix(model)
    return {ours_to_released(k, prefix): v for k, v in model.state_dict().items() if k.startswith(prefix)}


def load_checkpoint_file(path: str, trust_pickle: bool = False) -> Mapping:
    """torch.load on CPU, memory-mapped when the file format allows (a 700M-parameter file stays off the heap).

    trust_pickle: allow arbitrary pickled objects (only for files from a trusted source).
    """
    try:
        return torch.load(path, map_location="cpu", weights_only=not trust_pickle, mmap=True)
    except RuntimeError as err:
        if "mmap" not in str(err):
            raise
        return torch.load(path, map_location="cpu", weights_only=not trust_pickle)  # legacy (non-zip) format


def load_released_tokenizer(model: nn.Module, path: str, source: str = "auto", trust_pickle: bool = False) -> dict:
    """Load a released checkpoint file into `model` (CausalVAE or HBQTokenizer) in place; returns a summary."""
    checkpoint = load_checkpoint_file(path, trust_pickle)
    released, chosen = select_released_weights(checkpoint, source)
    file_dtypes = sorted({str(t.dtype).removeprefix("torch.") for t in released.values()})
    state, dropped = convert_released_state_dict(released, model, dtype=next(model.parameters()).dtype)
    model.load_state_dict(state, strict=True)
    return {
        "path": path, "source": chosen, "tensors": len(state), "parameters": sum(t.numel() for t in state.values()),
        "file_dtypes": file_dtypes, "dropped": dropped,
    }  # fmt: skip
