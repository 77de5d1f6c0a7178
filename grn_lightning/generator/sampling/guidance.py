"""What every GRN decoder shares (refinement in sampler.py, mask-based in mask_decoding.py): the result record, one
forward with classifier-free guidance, the inverse-CDF draw, and the geometry a decoder reads from its model."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

SELECTIONS = ("random", "confidence")
Model = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class SampleResult:
    """Output of `RefinementSampler.sample` / `.edit`, rows in request order.

    labels: int64 [B, N, G] final full predictions; steps: int64 [B] network evaluations per sample (summed over edit
    rounds); entropy: float64 [B] normalised entropy of the conditional prediction at the entropy forward (NaN when a
    request never ran it); rows_forwarded / forward_calls: compute actually spent (CFG rows included); slot_rows: the
    capacity of those calls (slots × rows per slot), which counts the empty slots of a part-empty batch; host_checks:
    loop checkpoints that read the slots back to the host (without static shapes the row selection also syncs at
    every step).
    """

    labels: torch.Tensor
    steps: torch.Tensor
    entropy: torch.Tensor
    rows_forwarded: int
    forward_calls: int
    slot_rows: int = 0
    host_checks: int = 0


def guided_logits(
    model: Model,
    state: torch.Tensor,
    class_ids: torch.Tensor,
    ratio: torch.Tensor,
    null_class: int,
    cfg_scale: float,
    cfg_active: torch.Tensor,
    every_row: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(conditional logits, guided logits), both float32 [B, N, G, K], from ONE batched forward.

    Rows with `cfg_active` use ℓ = ℓ_u + w·(ℓ_c − ℓ_u) from an unconditional row (null class) appended to the batch;
    the others use ℓ_c (SPEC §6: CFG only inside the interval). `every_row` appends an unconditional row for every row
    (fixed shapes, no host sync to select rows); the guided result is the same. A model with a method
    `unconditional_of(class_ids)` names each row's own unconditional condition instead of the one null class (T2X
    I2V guided on the text only: the unconditional row keeps that request's first frame, conditions.py).
    """
    b = state.shape[0]
    if every_row:
        logits = model(torch.cat([state, state]), torch.cat([class_ids, unconditional(model, class_ids, null_class)]),
                       torch.cat([ratio, ratio])).float()  # fmt: skip
        cond, uncond = logits[:b], logits[b:]
        active = cfg_active.view(-1, *([1] * (cond.ndim - 1)))
        return cond, torch.where(active, uncond + cfg_scale * (cond - uncond), cond)
    idx = torch.nonzero(cfg_active, as_tuple=False).flatten()
    null = unconditional(model, class_ids[idx], null_class)
    logits = model(
        torch.cat([state, state[idx]]), torch.cat([class_ids, null]), torch.cat([ratio, ratio[idx]])
    ).float()
    cond, uncond = logits[:b], logits[b:]
    guided = cond.clone()
    guided[idx] = uncond + cfg_scale * (cond[idx] - uncond)
    return cond, guided


def unconditional(model: Model, class_ids: torch.Tensor, null_class: int) -> torch.Tensor:
    """The condition of each row's unconditional branch: the model's `unconditional_of`, else the null class."""
    of = getattr(model, "unconditional_of", None)
    return of(class_ids) if of is not None else torch.full_like(class_ids, null_class)


def sample_categorical(probs: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
    """Inverse-CDF draw: probs [..., K], uniform [...] in [0, 1) → int64 [...] (one uniform per element)."""
    cdf = probs.cumsum(dim=-1)
    return (cdf < uniform[..., None]).sum(dim=-1).clamp(max=probs.shape[-1] - 1)


def model_geometry(model, num_tokens=None, groups=None, classes=None, null_class=None) -> tuple[int, int, int, int]:
    """(tokens N, groups G, classes K, null class id): each argument given, else the model's attribute of that name."""

    def pick(value, attr):
        if value is None:
            value = getattr(model, attr, None)
        if value is None:
            raise ValueError(f"pass {attr}= explicitly: the model has no attribute {attr!r}")
        return int(value)

    return pick(num_tokens, "num_tokens"), pick(groups, "groups"), pick(classes, "classes"), pick(null_class, "null_class")
