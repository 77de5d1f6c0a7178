"""Text-conditioned refinement sampling (SPEC §6 for T2I / T2V / I2V) through the C2I `RefinementSampler`.

The sampler drives any `model(state [B, N, G], condition [B], ratio [B]) -> logits [B, N, G, K]` and gives it
continuous batching, CFG in one batched forward, temperature, schedules, entropy-guided step counts and region
edits. `PromptConditions` makes the packed T2X transformer look like that: a "condition" is an index into a table
of encoded prompts, the last entry being the unconditional one (empty caption or negative prompt), so
`null_class = len(texts) − 1`. Each request becomes one row [visual | (I2V) clean first frame | text | ratio |
padding], assembled on the device from per-condition templates (no host read-back of the conditions).

I2V guidance, two choices (`guide_first_frame`; `T2XModule(i2v_guidance=...)`):
- False (default; "text"): each request's unconditional row keeps its clean first frame and drops only the caption
  (an I2V row with the empty caption, which training shows the model through caption dropout), so CFG pushes
  towards the text alone, and both rows generate the same frames at the same RoPE times;
- True ("text_and_frame"): the conditional rows carry the caption AND the clean first frame, the unconditional row
  neither (a T2V row with the empty caption), so CFG pushes towards both. That row generates from time 600, where a
  video's first latent frame (one image, not four frames) sits, while the conditional row's frames start at 601; in
  the Fashion-MNIST reproduction items then broke up mid-clip (docs/REPRODUCTION.md).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from grn_lightning.generator.t2x.packing import T2XSample, pack_rows


class PromptConditions:
    """A `GRNT2XTransformer` as a condition-indexed model for `RefinementSampler`.

    Every condition gets a one-row layout template at construction, all of one length L (visual tokens + the I2V
    clean frame + the longest text + the ratio token), so a batch of any conditions is assembled on
    the device by indexing the templates with the condition tensor: no read-back of the conditions, no per-step
    packing, and a row is computed the same way whatever else shares the batch. Shorter rows are padded after their
    ratio token (segment id −1, masked out); when every template has the full length no mask is built.

    Args:
        model: the T2X transformer (raw or EMA weights).
        texts: text-encoder states per condition, each [L_i, text_dim] on the model's device; the LAST entry is the
            unconditional prompt used for classifier-free guidance.
        grid: (T, h, w) latent grid of the frames to generate (I2V: the frames after the given first one).
        clean_first: I2V only: int [len(texts) − 1, h, w, G] clean first-frame labels of the conditional prompts.
        aspect_ratio: canvas h/w for the 3D RoPE (None: h / w of the grid).
        guide_first_frame: I2V only: False keeps each request's first frame in its unconditional row (CFG on the
            text alone; module docstring); conditions len(texts) .. 2·len(texts) − 2 are those rows. True: one
            frameless unconditional row.
    """

    def __init__(
        self,
        model: nn.Module,
        texts: Sequence[torch.Tensor],
        grid: tuple[int, int, int],
        clean_first: torch.Tensor | None = None,
        aspect_ratio: float | None = None,
        guide_first_frame: bool = False,
    ) -> None:
        if len(texts) < 2:
            raise ValueError("give at least one prompt plus the unconditional prompt (last)")
        t, h, w = grid
        self.model, self.grid = model, (t, h, w)
        self.groups, self.classes = int(model.groups), int(model.classes)
        if clean_first is not None and tuple(clean_first.shape) != (len(texts) - 1, h, w, self.groups):
            raise ValueError(
                f"clean_first must be [{len(texts) - 1}, {h}, {w}, {self.groups}] (one frame per conditional prompt), "
                f"got {tuple(clean_first.shape)}"
            )
        self.num_tokens = t * h * w
        self.null_class = len(texts) - 1
        # text-only I2V guidance: one more condition per prompt, the unconditional text with that prompt's frame
        self.frame_kept_nulls = clean_first is not None and not guide_first_frame
        self._build_templates(list(texts), clean_first, aspect_ratio)

    def unconditional_of(self, conditions: torch.Tensor) -> torch.Tensor:
        """The unconditional condition of each row of `conditions` (guidance.py): the null class, or with
        `guide_first_frame` False the null text beside that prompt's first frame."""
        if self.frame_kept_nulls:
            return conditions.long() + self.null_class + 1
        return torch.full_like(conditions, self.null_class)

    def _build_templates(self, texts, clean_first, aspect_ratio) -> None:
        t, h, w = self.grid
        device = texts[0].device
        zeros = torch.zeros(1, 1, 1, 1, dtype=torch.long).expand(t, h, w, self.groups)
        samples = []
        for c, text in enumerate(texts):
            first = None if clean_first is None or c == self.null_class else clean_first[c].long().cpu()
            samples.append(T2XSample(zeros, text.cpu(), 0.0, clean_first=first, aspect_ratio=aspect_ratio))
        if self.frame_kept_nulls:
            null_text = texts[self.null_class].cpu()
            samples += [T2XSample(zeros, null_text, 0.0, clean_first=f.long().cpu(), aspect_ratio=aspect_ratio)
                        for f in clean_first]  # fmt: skip
        longest_text = max(s.text.shape[0] for s in samples)
        # room for every condition's clean frame AND the longest text: the unused text slots of a shorter prompt
        # then always fit in its own padding
        length = self.num_tokens + max(s.num_clean for s in samples) + longest_text + 1
        rows = [pack_rows([[s]], pad_to=length) for s in samples]
        text_table = torch.zeros(len(samples), longest_text, texts[0].shape[-1], dtype=texts[0].dtype)
        text_cols = torch.zeros(len(samples), longest_text, dtype=torch.long)
        for c, (s, row) in enumerate(zip(samples, rows)):
            n_text = s.text.shape[0]
            text_table[c, :n_text] = s.text
            # the text slots a shorter prompt does not use point at its padding (after its ratio token): their zero
            # states land on masked positions; a full-length template has no unused slot
            text_cols[c] = torch.cat([row.text_index, torch.arange(longest_text - n_text) + s.num_tokens])
        self.length, self.longest_text = length, longest_text
        self.padded = any(s.num_tokens < length for s in samples)
        self.state_table = torch.stack([row.state[0] for row in rows]).to(device)
        self.position_table = torch.stack([row.positions[0] for row in rows]).to(device)
        self.segment_table = torch.stack([row.segment_ids[0] for row in rows]).to(device)
        self.ratio_cols = torch.stack([row.ratio_index[0] for row in rows]).to(device)
        self.text_table, self.text_cols = text_table.to(device), text_cols.to(device)

    def __call__(self, state: torch.Tensor, conditions: torch.Tensor, ratio: torch.Tensor) -> torch.Tensor:
        """state int [B, N, G], conditions int [B] (indices into `texts`), ratio float [B] → float32 [B, N, G, K]."""
        if state.shape[1:] != (self.num_tokens, self.groups):
            raise ValueError(f"state {tuple(state.shape)} does not match [B, {self.num_tokens}, {self.groups}]")
        b, conditions = state.shape[0], conditions.long()
        full = self.state_table[conditions].clone()
        full[:, : self.num_tokens] = state  # visual tokens open every row (packing order)
        row_start = torch.arange(b, device=state.device) * self.length
        inputs = dict(
            state=full,
            text=self.text_table[conditions].reshape(b * self.longest_text, -1),
            text_index=(row_start[:, None] + self.text_cols[conditions]).reshape(-1),
            ratio=ratio.float(),
            ratio_index=row_start + self.ratio_cols[conditions],
            positions=self.position_table[conditions],
            # one sample per row: no padding anywhere → full attention, the fast path
            segment_ids=self.segment_table[conditions] if self.padded else None,
        )
        return self.model(**inputs)[:, : self.num_tokens]
