"""The one FLOP counter of every training benchmark (SPEC §11).

    FLOPs per step = 6 · Σ_groups (parameters of the group) · (tokens the group runs on)
                   + 6 · (parameters run once per sample) · (samples)
                   + 12 · depth · width · Σ_s n_s²       (attention scores and values, inside each sample only)

6 = 2 (a multiply-add) × 3 (forward, and twice that in backward). Parameters are classified by where they sit:
- once per sample: adaLN modulation (`ada`, `final_ada`), the ratio / timestep MLP (`ratio_embed`, `pt_embedder`):
  their input is one vector per sample, so counting them per token overstates GRN-B's FLOPs 1.5×;
- lookups, no FLOPs: `nn.Embedding` tables (the class embedding) and bare parameters added to activations (learned
  positions): a row is copied or added, nothing is multiplied;
- everything else (blocks, token embedding, head, text projection) once per token it is applied to: by default every
  real token of the step, or the count given per top-level child (`applied`, e.g. the C2I head runs on the 256 image
  tokens, not the 32 in-context ones; the T2X text projection on text tokens only).
Padding tokens are not counted (callers pass the real lengths), nor the recomputation activation checkpointing adds.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from torch import nn

PER_SAMPLE_MODULES = frozenset({"ada", "final_ada", "ratio_embed", "pt_embedder"})
WRAPPER_NAMES = frozenset({"_checkpoint_wrapped_module", "_orig_mod", "_fsdp_wrapped_module", "module"})


@dataclass(frozen=True)
class ParameterSplit:
    """Parameter counts: `per_token` by top-level child (e.g. {"blocks": ..., "head": ...}), `per_sample`, `lookup`."""

    per_token: dict[str, int]
    per_sample: int
    lookup: int

    @property
    def total(self) -> int:
        return sum(self.per_token.values()) + self.per_sample + self.lookup


@dataclass(frozen=True)
class StepFlops:
    """One training step's FLOPs by term (SPEC §11) and their sum."""

    per_token: float
    per_sample: float
    attention: float

    @property
    def total(self) -> float:
        return self.per_token + self.per_sample + self.attention


def split_parameters(model: nn.Module) -> ParameterSplit:
    """Classify every parameter of `model` as per-token (by top-level child), per-sample or lookup (module docstring);
    wrapper names added by compile, activation checkpointing and FSDP are looked through."""
    per_token: dict[str, int] = {}
    per_sample = lookup = 0
    for name, module in model.named_modules():
        own = sum(p.numel() for p in module.parameters(recurse=False))
        if not own:
            continue
        parts = [p for p in name.split(".") if p not in WRAPPER_NAMES]
        if PER_SAMPLE_MODULES.intersection(parts):
            per_sample += own
        elif isinstance(module, nn.Embedding):
            lookup += own
        elif module is model or not isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)) and not _is_norm(module):
            lookup += own  # bare parameters (learned positions, in-context tokens) are added, not multiplied
        else:
            top = parts[0] if parts else ""
            per_token[top] = per_token.get(top, 0) + own
    return ParameterSplit(per_token, per_sample, lookup)


def _is_norm(module: nn.Module) -> bool:
    # norm weights scale every token's features: per-token work (a negligible count next to the linears)
    return "norm" in type(module).__name__.lower()


def training_flops(
    model: nn.Module,
    sample_lengths: Sequence[int],
    applied: Mapping[str, int] | None = None,
    depth: int | None = None,
    width: int | None = None,
) -> StepFlops:
    """FLOPs of one training step of `model` over samples of `sample_lengths` real tokens each (SPEC §11).

    applied: tokens a top-level child runs on where it is not every token (e.g. {"head": batch · 256}).
    depth, width: of the attention term (default: the model's `depth` and `width` attributes).
    """
    split = split_parameters(model)
    tokens = sum(sample_lengths)
    applied = dict(applied or {})
    unknown = set(applied) - set(split.per_token)
    if unknown:
        raise ValueError(f"applied names {sorted(unknown)} are not per-token children of the model {sorted(split.per_token)}")
    per_token = sum(6.0 * count * applied.get(name, tokens) for name, count in split.per_token.items())
    depth = int(model.depth if depth is None else depth)
    width = int(model.width if width is None else width)
    attention = 12.0 * depth * width * sum(float(n) * n for n in sample_lengths)
    return StepFlops(per_token, 6.0 * split.per_sample * len(sample_lengths), attention)


def c2i_step_flops(model: nn.Module, batch: int) -> StepFlops:
    """A C2I step of `batch` images: the blocks see image + in-context tokens, the token embedding, final adaLN
    and head only the image tokens."""
    image = int(model.num_tokens)
    seq = image + int(model.in_context_tokens)
    split = split_parameters(model)
    applied = {name: batch * image for name in ("token_embed", "head") if name in split.per_token}
    return training_flops(model, [seq] * batch, applied)


def t2x_step_flops(model: nn.Module, sample_lengths: Sequence[int], text_tokens: int) -> StepFlops:
    """A packed T2X step: every real token runs through the blocks, the state embedding and the head (the
    transformer computes them at every position); the text projection runs on the `text_tokens` only."""
    return training_flops(model, sample_lengths, {"text_proj": text_tokens})
