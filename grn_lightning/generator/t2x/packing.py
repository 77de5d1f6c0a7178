"""Sequence packing for the T2I/T2V/I2V GRN (SPEC §5): samples → packed rows, positions, segments, loss weights.

One sample is the token run
    [visual tokens (t, h, w order) | I2V clean first-frame tokens (h, w) | text tokens (≤ 512) | one ratio token]
with the 3D RoPE positions of `rope3d.py`. Samples are filled greedily, in arrival order, into rows of at most
`budget` tokens (release: 40,960 per GPU); a sample longer than `max_fraction` (40%) of the budget is dropped and
counted. Every sample gets its own segment id, so attention is block-diagonal (`t2x_transformer.segment_mask`).

Loss (SPEC §5): per sample, the mean over its visual (predicted) tokens of the mean cross-entropy over the token's
groups (bits); samples in a row are weighted ∝ (number of visual tokens)^0.5, normalised to sum 1 per row; the
batch loss is the mean over rows. I2V clean first-frame tokens are inputs only, never in the loss.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, fields

import torch
import torch.nn.functional as F

from grn_lightning.generator.t2x.rope3d import TEXT_MAX_LEN, ratio_position, text_positions, visual_positions

RELEASE_TOKEN_BUDGET = 40960  # tokens per GPU in the release's packing
RELEASE_MAX_FRACTION = 0.4  # samples longer than this share of the budget are dropped


@dataclass
class T2XSample:
    """One sample before packing.

    state: int [T, h, w, G] network input labels F of the frames to predict (corrupted y_gt in training).
    text: float [L_text, C_text] text-encoder states, L_text ≤ 512 (0 allowed).
    ratio: kept fraction fed to the ratio token.
    labels: int [T, h, w, G] targets y_gt (None when only logits are needed, e.g. sampling).
    clean_first: int [h, w, G] I2V clean first-frame labels (input only), or None.
    aspect_ratio: the bucket's h/w for the RoPE canvas; None uses h / w of the grid.
    """

    state: torch.Tensor
    text: torch.Tensor
    ratio: float
    labels: torch.Tensor | None = None
    clean_first: torch.Tensor | None = None
    aspect_ratio: float | None = None

    def __post_init__(self) -> None:
        if self.state.ndim != 4:
            raise ValueError(f"state must be [T, h, w, G], got shape {tuple(self.state.shape)}")
        if self.labels is not None and self.labels.shape != self.state.shape:
            raise ValueError(f"labels {tuple(self.labels.shape)} must match state {tuple(self.state.shape)}")
        if self.clean_first is not None and self.clean_first.shape != self.state.shape[1:]:
            raise ValueError(f"clean_first {tuple(self.clean_first.shape)} must be [h, w, G] = {tuple(self.state.shape[1:])}")
        if self.text.ndim != 2 or self.text.shape[0] > TEXT_MAX_LEN:
            raise ValueError(f"text must be [L_text <= {TEXT_MAX_LEN}, C], got shape {tuple(self.text.shape)}")

    @property
    def num_visual(self) -> int:
        """Predicted (noisy) visual tokens T·h·w."""
        t, h, w, _ = self.state.shape
        return t * h * w

    @property
    def num_clean(self) -> int:
        """I2V clean first-frame tokens (0 without one)."""
        return 0 if self.clean_first is None else self.state.shape[1] * self.state.shape[2]

    @property
    def num_tokens(self) -> int:
        """Packed length: visual + clean + text + 1 ratio token."""
        return self.num_visual + self.num_clean + self.text.shape[0] + 1

    def positions(self) -> torch.Tensor:
        """int64 [num_tokens, 3] RoPE positions in packed order (I2V: clean frame at time 600, noisy from 601)."""
        t, h, w, _ = self.state.shape
        offset = 0 if self.clean_first is None else 1
        parts = [visual_positions(t, h, w, self.aspect_ratio, time_offset=offset)]
        if self.clean_first is not None:
            parts.append(visual_positions(1, h, w, self.aspect_ratio, time_offset=0))
        parts += [text_positions(self.text.shape[0]), ratio_position()]
        return torch.cat(parts)


class PackingOverflowError(ValueError):
    """Every sample of a batch is longer than the packing cap (max_fraction · budget): nothing can be packed."""


@dataclass
class PackPlan:
    """rows: sample indices per packed row (arrival order); dropped: indices of samples over the length cap."""

    rows: list[list[int]]
    dropped: list[int]


def greedy_pack(
    lengths: Sequence[int], budget: int = RELEASE_TOKEN_BUDGET, max_fraction: float = RELEASE_MAX_FRACTION
) -> PackPlan:
    """Next-fit packing: append each sample to the open row while it fits in `budget`, else open a new row.

    Samples longer than max_fraction·budget are dropped (release: 40%), so every kept sample fits an empty row and
    one long sample never fills a row alone.
    """
    if budget < 1 or not 0 < max_fraction <= 1:
        raise ValueError(f"budget must be >= 1 and max_fraction in (0, 1], got {budget}, {max_fraction}")
    cap = max_fraction * budget
    rows: list[list[int]] = []
    dropped: list[int] = []
    used = budget + 1  # no open row yet
    for index, n in enumerate(lengths):
        if n > cap:
            dropped.append(index)
            continue
        if used + n > budget:
            rows.append([])
            used = 0
        rows[-1].append(index)
        used += n
    return PackPlan(rows, dropped)


def plan_rows(
    lengths: Sequence[int], budget: int, max_fraction: float, max_rows: int | None = None
) -> PackPlan:
    """`greedy_pack`, then with `max_rows` keep only the first rows: the samples of later rows are dropped too (a
    fixed step shape and memory bound, instead of a mostly empty extra row when a batch overflows the budget)."""
    plan = greedy_pack(lengths, budget, max_fraction)
    if max_rows is None:
        return plan
    if max_rows < 1:
        raise ValueError(f"max_rows must be >= 1, got {max_rows}")
    overflow = [i for row in plan.rows[max_rows:] for i in row]
    return PackPlan(plan.rows[:max_rows], sorted(plan.dropped + overflow))


def row_loss_weights(visual_counts: torch.Tensor, rows: torch.Tensor, num_rows: int, exponent: float = 0.5) -> torch.Tensor:
    """float32 [Ns] weights ∝ visual_counts^exponent, normalised to sum 1 within each row (samples with no visual
    token get 0)."""
    raw = visual_counts.float().clamp(min=0).pow(exponent) * (visual_counts > 0)
    total = torch.zeros(num_rows, dtype=raw.dtype, device=raw.device).index_add(0, rows, raw)
    return raw / total[rows].clamp(min=torch.finfo(raw.dtype).tiny)


@dataclass
class PackedBatch:
    """Packed rows ready for `GRNT2XTransformer(**batch.model_inputs())` and `packed_loss`.

    B rows of L positions; Ns samples with global ids 0..Ns−1 (segment id), Nt text states in total.
    """

    state: torch.Tensor  # int64 [B, L, G]: visual and clean-frame labels, 0 elsewhere
    text: torch.Tensor  # [Nt, C_text]
    text_index: torch.Tensor  # int64 [Nt] flat positions row·L + column
    ratio: torch.Tensor  # float32 [Ns]
    ratio_index: torch.Tensor  # int64 [Ns]
    positions: torch.Tensor  # int64 [B, L, 3]
    segment_ids: torch.Tensor  # int64 [B, L], −1 = padding
    labels: torch.Tensor  # int64 [B, L, G]: targets at predicted positions, 0 elsewhere
    loss_mask: torch.Tensor  # bool [B, L]: predicted (noisy visual) positions with labels
    sample_row: torch.Tensor  # int64 [Ns]
    sample_start: torch.Tensor  # int64 [Ns]: column of the sample's first token
    sample_visual: torch.Tensor  # int64 [Ns]: its predicted visual tokens
    sample_weights: torch.Tensor  # float32 [Ns], sum 1 per row
    sample_indices: list[int] = field(default_factory=list)  # index of each packed sample in the input list
    dropped: list[int] = field(default_factory=list)  # input indices dropped for length

    @property
    def num_dropped(self) -> int:
        return len(self.dropped)

    def model_inputs(self) -> dict[str, torch.Tensor]:
        return {k: getattr(self, k) for k in ("state", "text", "text_index", "ratio", "ratio_index", "positions", "segment_ids")}

    def sample_logits(self, logits: torch.Tensor, sample: int) -> torch.Tensor:
        """[T·h·w, G, K] logits of packed sample `sample`'s predicted visual tokens (t, h, w order)."""
        row, start, n = (int(t[sample]) for t in (self.sample_row, self.sample_start, self.sample_visual))
        return logits[row, start : start + n]

    def to(self, device: torch.device | str) -> PackedBatch:
        moved = {f.name: getattr(self, f.name) for f in fields(self)}
        return PackedBatch(**{k: v.to(device) if torch.is_tensor(v) else v for k, v in moved.items()})


def pack_rows(
    rows: Sequence[Sequence[T2XSample]],
    pad_to: int | None = None,
    pad_multiple: int = 1,
    weight_exponent: float = 0.5,
) -> PackedBatch:
    """Lay out given rows of samples (no dropping; see `pack_samples` for the greedy fill).

    pad_to: fixed row length L (e.g. the budget, for static shapes); None pads to the longest row rounded up to
        `pad_multiple`.
    """
    samples = [s for row in rows for s in row]
    if not samples:
        raise ValueError("nothing to pack: no samples")
    groups = {s.state.shape[-1] for s in samples}
    text_dims = {s.text.shape[-1] for s in samples}
    if len(groups) != 1 or len(text_dims) != 1:
        raise ValueError(f"samples disagree on groups per token {sorted(groups)} or text width {sorted(text_dims)}")
    (g,), (c_text,) = groups, text_dims
    lengths = [sum(s.num_tokens for s in row) for row in rows]
    longest = -(-max(lengths) // pad_multiple) * pad_multiple
    length = longest if pad_to is None else pad_to
    if length < max(lengths):
        raise ValueError(f"pad_to={pad_to} is shorter than the longest row ({max(lengths)} tokens)")
    b = len(rows)
    state = torch.zeros(b, length, g, dtype=torch.long)
    labels = torch.zeros(b, length, g, dtype=torch.long)
    loss_mask = torch.zeros(b, length, dtype=torch.bool)
    positions = torch.zeros(b, length, 3, dtype=torch.long)
    segment_ids = torch.full((b, length), -1, dtype=torch.long)
    texts, text_index, ratio, ratio_index, sample_row, sample_start, sample_visual = [], [], [], [], [], [], []
    sid = 0
    for r, row in enumerate(rows):
        col = 0
        for s in row:
            n_vis, n_clean, n_text = s.num_visual, s.num_clean, s.text.shape[0]
            end = col + s.num_tokens
            state[r, col : col + n_vis] = s.state.reshape(n_vis, g).long()
            if s.labels is not None:
                labels[r, col : col + n_vis] = s.labels.reshape(n_vis, g).long()
                loss_mask[r, col : col + n_vis] = True
            if s.clean_first is not None:
                state[r, col + n_vis : col + n_vis + n_clean] = s.clean_first.reshape(n_clean, g).long()
            text_start = col + n_vis + n_clean
            texts.append(s.text)
            text_index.append(torch.arange(text_start, text_start + n_text) + r * length)
            ratio.append(float(s.ratio))
            ratio_index.append(r * length + end - 1)
            positions[r, col:end] = s.positions()
            segment_ids[r, col:end] = sid
            sample_row.append(r)
            sample_start.append(col)
            sample_visual.append(n_vis)
            col, sid = end, sid + 1
    sample_row_t = torch.tensor(sample_row, dtype=torch.long)
    # weights count only samples that are in the loss (a sample without labels contributes nothing)
    counted = torch.tensor([s.num_visual if s.labels is not None else 0 for s in samples], dtype=torch.long)
    dtype = texts[0].dtype if texts[0].is_floating_point() else torch.float32
    return PackedBatch(
        state=state,
        text=torch.cat([t.to(dtype) for t in texts]).reshape(-1, c_text),
        text_index=torch.cat(text_index).long(),
        ratio=torch.tensor(ratio, dtype=torch.float32),
        ratio_index=torch.tensor(ratio_index, dtype=torch.long),
        positions=positions,
        segment_ids=segment_ids,
        labels=labels,
        loss_mask=loss_mask,
        sample_row=sample_row_t,
        sample_start=torch.tensor(sample_start, dtype=torch.long),
        sample_visual=torch.tensor(sample_visual, dtype=torch.long),
        sample_weights=row_loss_weights(counted, sample_row_t, b, weight_exponent),
    )


def pack_samples(
    samples: Sequence[T2XSample],
    budget: int = RELEASE_TOKEN_BUDGET,
    max_fraction: float = RELEASE_MAX_FRACTION,
    pad_to_budget: bool = False,
    pad_multiple: int = 1,
    weight_exponent: float = 0.5,
    max_rows: int | None = None,
) -> PackedBatch:
    """Greedy fill of `samples` into rows of at most `budget` tokens (`greedy_pack`), then `pack_rows`.

    The result's `dropped` lists the samples over max_fraction·budget, `sample_indices` the input index of every
    packed sample. pad_to_budget: every row is exactly `budget` long (static shapes for compiled kernels).
    max_rows: keep only the first rows (`plan_rows`).
    """
    plan = plan_rows([s.num_tokens for s in samples], budget, max_fraction, max_rows)
    if not plan.rows:
        raise PackingOverflowError(f"all {len(samples)} samples exceed {max_fraction:g} of the {budget}-token budget")
    batch = pack_rows(
        [[samples[i] for i in row] for row in plan.rows],
        pad_to=budget if pad_to_budget else None,
        pad_multiple=pad_multiple,
        weight_exponent=weight_exponent,
    )
    batch.sample_indices = [i for row in plan.rows for i in row]
    batch.dropped = plan.dropped
    return batch


@dataclass
class PackedLoss:
    """loss: scalar (mean over rows of the weighted per-sample losses); per_sample / weights / rows: [Ns]."""

    loss: torch.Tensor
    per_sample: torch.Tensor
    weights: torch.Tensor
    rows: torch.Tensor


def packed_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    loss_mask: torch.Tensor,
    segment_ids: torch.Tensor,
    num_samples: int | None = None,
    weight_exponent: float = 0.5,
) -> PackedLoss:
    """SPEC §5 loss of a packed batch, with static shapes and no host sync when `num_samples` is given.

    Args:
        logits: float [B, L, G, K]; labels: int [B, L, G]; loss_mask: bool [B, L] predicted positions;
        segment_ids: int [B, L] global sample ids (−1 padding); num_samples: Ns (None: max id + 1, read on the host).
    """
    b, length, g, k = logits.shape
    ns = int(segment_ids.max()) + 1 if num_samples is None else num_samples
    # Cross-entropy at every position, then masked: boolean indexing (logits[loss_mask]) would need the count of
    # True values on the host, a sync every step. Padding/text positions cost a little arithmetic, nothing more.
    token_ce = F.cross_entropy(logits.reshape(-1, k).float(), labels.reshape(-1).long(), reduction="none")
    token_ce = token_ce.view(b * length, g).mean(-1)  # mean over the token's groups
    mask = loss_mask.reshape(-1)
    seg = segment_ids.reshape(-1).long().clamp(min=0)  # padding lands on sample 0 with weight 0
    counts = torch.zeros(ns, dtype=torch.long, device=logits.device).index_add(0, seg, mask.long())
    sums = torch.zeros(ns, dtype=token_ce.dtype, device=logits.device).index_add(0, seg, torch.where(mask, token_ce, 0.0))
    per_sample = sums / counts.clamp(min=1)
    # each sample's row, read off its positions (padding, id −1, scatters nothing: it adds 0 to sample 0)
    real = (segment_ids.reshape(-1) >= 0).long()
    row_ids = torch.arange(b, device=logits.device).repeat_interleave(length)
    rows = torch.zeros(ns, dtype=torch.long, device=logits.device).index_add(0, seg, row_ids * real)
    rows = rows // torch.zeros(ns, dtype=torch.long, device=logits.device).index_add(0, seg, real).clamp(min=1)
    weights = row_loss_weights(counts, rows, b, weight_exponent)
    active_rows = torch.zeros(b, dtype=torch.long, device=logits.device).index_add(0, rows, (counts > 0).long()) > 0
    loss = (weights * per_sample).sum() / active_rows.sum().clamp(min=1)
    return PackedLoss(loss, per_sample, weights, rows)
