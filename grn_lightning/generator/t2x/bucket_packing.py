"""Device-resident corruption and packing of one data-module batch (one bucket: every sample has the same T' × h × w).

`packing.pack_samples` builds rows sample by sample on the host; at the release's geometry (32 images of 32×32
tokens × 256 bits in one 40,960-token row) that costs most of a second of host time per step. Here the work is
split by what it needs:

    host   `plan_bucket`: the packing plan from integer lengths only (visual tokens, text lengths, I2V flags,
           template ratios): which samples share a row, their offsets, the text/ratio token slots, the RoPE
           templates and the loss weights. A few KiB of int tensors, pinned, copied without blocking.
    device `pack_bucket`: corruption (device RNG), label placement, the realised kept fraction for the ratio token,
           positions and segment ids per packed position, all as whole-tensor ops with no host sync.

Within one sample the layout is `packing.py`'s: [noisy visual | (I2V) clean first frame | text | ratio]. Because an
I2V sample's noisy frames plus its clean frame are its T'·h·w latent tokens in another order (frames 1.., then 0),
every sample of a bucket spans V = T'·h·w visual positions, and the clean frame is a roll by h·w tokens.
The result is the same `PackedBatch` that `pack_samples` gives for the same draws (tests/test_bucket_packing.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields

import torch

from grn_lightning.generator.t2x.packing import PackedBatch, PackingOverflowError, plan_rows, row_loss_weights
from grn_lightning.generator.t2x.rope3d import RATIO_TIME, visual_positions


@dataclass
class BucketPlan:
    """Host-side plan of one packed batch (index tensors small enough to copy every step).

    Ns kept samples (in packed order), Nt their text tokens, R distinct template ratios, V = T'·h·w.
    """

    kept: torch.Tensor  # int64 [Ns]: row of `tokens` / `keep_probability` of each packed sample
    flat_start: torch.Tensor  # int64 [Ns]: row · L + column of the sample's first token (ascending)
    text_len: torch.Tensor  # int64 [Ns]
    i2v: torch.Tensor  # bool [Ns]: clean first frame given (input only)
    template: torch.Tensor  # int64 [Ns]: index into `templates`
    templates: torch.Tensor  # int32 [R, V, 3]: RoPE positions of the grid in frame order, per template ratio
    text_select: torch.Tensor  # int64 [Nt]: rows of the input text states, packed order
    text_index: torch.Tensor  # int64 [Nt]: flat packed position of each text state
    ratio_index: torch.Tensor  # int64 [Ns]: flat packed position of each ratio token
    sample_row: torch.Tensor  # int64 [Ns]
    sample_start: torch.Tensor  # int64 [Ns]
    sample_visual: torch.Tensor  # int64 [Ns]: predicted visual tokens
    sample_weights: torch.Tensor  # float32 [Ns]
    rows: int
    length: int
    grid: tuple[int, int, int]
    kept_indices: list[int]  # index of each packed sample in the planned list
    dropped: list[int]  # indices (in the planned list) dropped for length or rows
    lengths: list[int]  # packed tokens of each packed sample (host facts for logging)

    @property
    def row_fill(self) -> float:
        """Share of the rows' tokens that belong to samples (the rest is padding)."""
        return sum(self.lengths) / (self.rows * self.length)

    @property
    def attention_fill(self) -> float:
        """Share of the rows' L × L attention scores that pair two tokens of one sample: what a dense masked kernel
        (SDPA) computes usefully. Rows holding many short samples waste the rest (flex_attention skips most of it)."""
        return sum(n * n for n in self.lengths) / (self.rows * self.length**2)

    def to(self, device: torch.device | str) -> BucketPlan:
        """Pinned, non-blocking copies to `device` (plain `.to` on CPU)."""
        cuda = torch.device(device).type == "cuda"

        def move(t):
            if not torch.is_tensor(t):
                return t
            return (t.pin_memory() if cuda else t).to(device, non_blocking=cuda)

        return BucketPlan(**{f.name: move(getattr(self, f.name)) for f in fields(self)})


def plan_bucket(
    grid: tuple[int, int, int],
    text_lengths: Sequence[int],
    i2v: Sequence[bool],
    aspect_ratios: Sequence[float | None],
    budget: int,
    max_fraction: float,
    pad_to_budget: bool = False,
    pad_multiple: int = 1,
    max_rows: int | None = None,
    weight_exponent: float = 0.5,
    text_starts: Sequence[int] | None = None,
    sources: Sequence[int] | None = None,
) -> BucketPlan:
    """The packing plan of samples that share the latent `grid` (T', h, w), from their lengths alone.

    Greedy next-fit into rows of `budget` tokens as `pack_samples` does (samples over max_fraction·budget and, with
    `max_rows`, those of later rows are dropped). Raises `PackingOverflowError` when nothing fits.
    text_starts: first row of each sample's states in the text tensor (None: the samples' texts back to back).
    sources: row of `tokens` / `keep_probability` holding each sample (None: sample i is row i).
    """
    t, h, w = grid
    count = len(text_lengths)
    if not len(i2v) == len(aspect_ratios) == count:
        raise ValueError(f"{count} text lengths, {len(i2v)} I2V flags and {len(aspect_ratios)} ratios differ")
    if any(flag and t < 2 for flag in i2v):
        raise ValueError(f"an I2V sample needs >= 2 latent frames, the grid has {t}")
    visual = t * h * w  # noisy + clean tokens of every sample (see the module docstring)
    lengths = [visual + n + 1 for n in text_lengths]
    plan = plan_rows(lengths, budget, max_fraction, max_rows)
    if not plan.rows:
        raise PackingOverflowError(f"all {count} samples exceed {max_fraction:g} of the {budget}-token budget")
    used = [sum(lengths[i] for i in row) for row in plan.rows]
    length = budget if pad_to_budget else -(-max(used) // pad_multiple) * pad_multiple
    kept = [i for row in plan.rows for i in row]
    sample_row, sample_start = [], []
    for r, row in enumerate(plan.rows):
        col = 0
        for i in row:
            sample_row.append(r)
            sample_start.append(col)
            col += lengths[i]
    ratios = list(dict.fromkeys(aspect_ratios[i] for i in kept))
    templates = torch.stack([visual_positions(t, h, w, r) for r in ratios]).int()
    flat_start = torch.tensor(sample_row) * length + torch.tensor(sample_start)
    text_len = torch.tensor([text_lengths[i] for i in kept], dtype=torch.long)
    if text_starts is None:
        text_starts = torch.tensor([0, *text_lengths]).cumsum(0).tolist()
    text_select = torch.cat([torch.arange(text_starts[i], text_starts[i] + text_lengths[i]) for i in kept])
    text_index = torch.cat([torch.arange(n) + s + visual for s, n in zip(flat_start.tolist(), text_len.tolist())])
    predicted = torch.tensor([visual - (h * w if i2v[i] else 0) for i in kept], dtype=torch.long)
    rows_t = torch.tensor(sample_row, dtype=torch.long)
    source = list(range(count)) if sources is None else list(sources)
    return BucketPlan(
        kept=torch.tensor([source[i] for i in kept], dtype=torch.long),
        flat_start=flat_start,
        text_len=text_len,
        i2v=torch.tensor([bool(i2v[i]) for i in kept]),
        template=torch.tensor([ratios.index(aspect_ratios[i]) for i in kept], dtype=torch.long),
        templates=templates,
        text_select=text_select.long(),
        text_index=text_index.long(),
        ratio_index=flat_start + visual + text_len,
        sample_row=rows_t,
        sample_start=torch.tensor(sample_start, dtype=torch.long),
        sample_visual=predicted,
        sample_weights=row_loss_weights(predicted, rows_t, len(plan.rows), weight_exponent),
        rows=len(plan.rows),
        length=length,
        grid=(t, h, w),
        kept_indices=kept,
        dropped=plan.dropped,
        lengths=[lengths[i] for i in kept],
    )


def label_dtype(classes: int) -> torch.dtype:
    """The smallest integer dtype that holds labels 0..classes−1 (uint8 for bits and for M ≤ 8 index labels)."""
    return torch.uint8 if classes <= 256 else torch.int32


def pack_bucket(
    plan: BucketPlan,
    tokens: torch.Tensor,
    texts: torch.Tensor,
    keep_probability: torch.Tensor,
    classes: int,
    generator: torch.Generator | None = None,
) -> PackedBatch:
    """Corrupt the kept samples on `tokens`' device and lay them out as `plan` says (no host sync).

    Args:
        plan: `plan_bucket`'s plan, on the tokens' device (`plan.to(device)`).
        tokens: int [N, T'·h·w, G] clean labels of ALL input samples (frame order), any integer dtype.
        texts: [ΣL, C] text states of all input samples, concatenated in input order.
        keep_probability: float [N] the drawn kept fraction p per input sample (SPEC §3).
        classes: K.
        generator: device RNG for y_rand and the Bernoulli draws (None: the default generator).
    """
    device = tokens.device
    t, h, w = plan.grid
    visual, frame = t * h * w, h * w
    g = tokens.shape[-1]
    dtype = label_dtype(classes)
    # -- corruption of the kept samples, in frame order: F = s·y + (1 − s)·y_rand (SPEC §3) --------------------
    labels = tokens.index_select(0, plan.kept).to(dtype)  # [Ns, V, G]
    ns = labels.shape[0]
    index = torch.arange(visual, device=device)
    clean = plan.i2v[:, None] & (index < frame)[None]  # [Ns, V]: the I2V first frame, given, never corrupted
    p = keep_probability.index_select(0, plan.kept).float()
    keep = torch.rand(labels.shape, generator=generator, device=device) < p[:, None, None]
    keep |= clean[..., None]
    noise = torch.randint(0, classes, labels.shape, generator=generator, device=device, dtype=dtype)
    state = torch.where(keep, labels, noise)
    # the ratio token carries the REALISED kept fraction of the predicted tokens (SPEC §5)
    realised = (keep & ~clean[..., None]).sum((1, 2)).float() / (plan.sample_visual.float() * g)
    # -- placement: every packed position finds its sample and its offset inside the sample ------------------
    b, length = plan.rows, plan.length
    flat = torch.arange(b * length, device=device)
    sid = torch.searchsorted(plan.flat_start, flat, right=True) - 1
    sid_c = sid.clamp(min=0)
    local = flat - plan.flat_start[sid_c]
    text_len = plan.text_len[sid_c]
    inside = (sid >= 0) & (local <= visual + text_len)  # up to and including the ratio token
    is_visual = inside & (local < visual)
    is_text = inside & ~is_visual & (local < visual + text_len)
    is_ratio = inside & (local == visual + text_len)
    # packed order puts an I2V sample's noisy frames first and its clean frame after them: a roll by one frame
    source = torch.where(plan.i2v[sid_c], (local + frame) % visual, local).clamp(0, visual - 1)
    gather = sid_c * visual + source
    packed_state = torch.where(is_visual[:, None], state.reshape(ns * visual, g)[gather], 0)
    predicted = is_visual & ~clean.reshape(-1)[gather]
    packed_labels = torch.where(predicted[:, None], labels.reshape(ns * visual, g)[gather], 0)
    grid_pos = plan.templates[plan.template[sid_c], source].long()  # [B·L, 3]
    # text token k at (k, 0, 0), the ratio token at (512, 0, 0); Python scalars, so nothing is copied to the device
    time = torch.where(is_text, local - visual, torch.where(is_ratio, RATIO_TIME, 0))
    positions = torch.where(is_visual[:, None], grid_pos, torch.stack([time, time * 0, time * 0], -1))
    return PackedBatch(
        state=packed_state.view(b, length, g),
        text=texts.index_select(0, plan.text_select),
        text_index=plan.text_index,
        ratio=realised,
        ratio_index=plan.ratio_index,
        positions=positions.view(b, length, 3),
        segment_ids=torch.where(inside, sid, -1).view(b, length),
        labels=packed_labels.view(b, length, g),
        loss_mask=predicted.view(b, length),
        sample_row=plan.sample_row,
        sample_start=plan.sample_start,
        sample_visual=plan.sample_visual,
        sample_weights=plan.sample_weights,
        sample_indices=list(plan.kept_indices),
        dropped=list(plan.dropped),
    )
