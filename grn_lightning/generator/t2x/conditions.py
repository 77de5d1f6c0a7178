"""Text-conditioned refinement sampling (SPEC §6 for T2I / T2V / I2V) through the C2I `RefinementSampler`.

The sampler drives any `model(state [B, N, G], condition [B], ratio [B]) -> logits [B, N, G, K]` and gives it
continuous batching, CFG in one batched forward, temperature, schedules, entropy-guided step counts and region
edits. `PromptConditions` makes the packed T2X transformer look like that: a "condition" is an index into a table
of encoded prompts, the last entry being the unconditional one (empty caption or negative prompt), so
`null_class = len(texts) − 1`. Each request becomes one packed row [visual | (I2V) clean first frame | text |
ratio]; rows differ only in text length and are padded with a block-diagonal mask (no mask when they are equal).

I2V guidance: the conditional rows carry the caption AND the clean first frame, the unconditional row neither
(it is a T2V row with the empty caption, which training shows the model through caption dropout), so CFG pushes
towards both the text and the given image.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import nn

from grn_lightning.generator.t2x.packing import PackedBatch, T2XSample, pack_rows

LAYOUT_CACHE = 16  # packed layouts kept per PromptConditions (one per distinct set of in-flight conditions)


class PromptConditions:
    """A `GRNT2XTransformer` as a condition-indexed model for `RefinementSampler`.

    Args:
        model: the T2X transformer (raw or EMA weights).
        texts: text-encoder states per condition, each [L_i, text_dim] on the model's device; the LAST entry is the
            unconditional prompt used for classifier-free guidance.
        grid: (T, h, w) latent grid of the frames to generate (I2V: the frames after the given first one).
        clean_first: I2V only: int [len(texts) − 1, h, w, G] clean first-frame labels of the conditional prompts.
        aspect_ratio: canvas h/w for the 3D RoPE (None: h / w of the grid).
    """

    def __init__(
        self,
        model: nn.Module,
        texts: Sequence[torch.Tensor],
        grid: tuple[int, int, int],
        clean_first: torch.Tensor | None = None,
        aspect_ratio: float | None = None,
    ) -> None:
        if len(texts) < 2:
            raise ValueError("give at least one prompt plus the unconditional prompt (last)")
        t, h, w = grid
        self.model, self.texts, self.grid, self.aspect_ratio = model, list(texts), (t, h, w), aspect_ratio
        self.groups, self.classes = int(model.groups), int(model.classes)
        if clean_first is not None and tuple(clean_first.shape) != (len(texts) - 1, h, w, self.groups):
            raise ValueError(
                f"clean_first must be [{len(texts) - 1}, {h}, {w}, {self.groups}] (one frame per conditional prompt), "
                f"got {tuple(clean_first.shape)}"
            )
        self.clean_first = None if clean_first is None else clean_first.long().cpu()
        self.num_tokens = t * h * w
        self.null_class = len(texts) - 1
        self._layouts: OrderedDict[tuple[int, ...], tuple[PackedBatch, bool]] = OrderedDict()

    def _layout(self, conditions: tuple[int, ...], device: torch.device) -> tuple[PackedBatch, bool]:
        """Packed rows for these conditions with zero states (positions, text, segments); cached because the set of
        in-flight requests changes only when one finishes or joins."""
        if conditions in self._layouts:
            self._layouts.move_to_end(conditions)
            return self._layouts[conditions]
        zeros = torch.zeros(1, 1, 1, 1, dtype=torch.long).expand(*self.grid, self.groups)
        rows = []
        for c in conditions:
            first = None if self.clean_first is None or c == self.null_class else self.clean_first[c]
            rows.append([T2XSample(zeros, self.texts[c], 0.0, clean_first=first, aspect_ratio=self.aspect_ratio)])
        packed = pack_rows(rows).to(device)
        padded = bool((packed.segment_ids < 0).any())
        self._layouts[conditions] = (packed, padded)
        if len(self._layouts) > LAYOUT_CACHE:
            self._layouts.popitem(last=False)
        return packed, padded

    def __call__(self, state: torch.Tensor, conditions: torch.Tensor, ratio: torch.Tensor) -> torch.Tensor:
        """state int [B, N, G], conditions int [B] (indices into `texts`), ratio float [B] → float32 [B, N, G, K]."""
        if state.shape[1:] != (self.num_tokens, self.groups):
            raise ValueError(f"state {tuple(state.shape)} does not match [B, {self.num_tokens}, {self.groups}]")
        # The condition ids come from the host-side sampler; reading them back costs one small copy per step.
        packed, padded = self._layout(tuple(int(c) for c in conditions.tolist()), state.device)
        inputs = packed.model_inputs()
        full = packed.state.clone()
        full[:, : self.num_tokens] = state  # visual tokens open every row (packing order)
        inputs.update(state=full, ratio=ratio.float())
        if not padded:
            inputs["segment_ids"] = None  # one sample per row, no padding: full attention, the fast path
        return self.model(**inputs)[:, : self.num_tokens]
