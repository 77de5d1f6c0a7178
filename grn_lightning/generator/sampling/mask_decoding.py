"""Mask-based decoding with a GRN network: the paper's Table 7 baseline ("mask-based" instead of refinement).

MaskGIT-style decoding fixes an element once it is chosen and never revises it; undecided elements are shown to
the network as the fixed random draw y_rand (a GRN network has no mask token: "random" is what it was trained to
read as "not yet known"). Per step i: predict every element, sample it (CFG, τ as in refinement), then decide
more elements so that the decided fraction reaches the schedule's p_{i+1} — randomly ("random") or the most
confident undecided ones ("confidence", MaskGIT); decided elements keep the value sampled when they were decided.
After the last step (p = 1) every element is decided. Refinement (sampler.py) instead resamples every element at
every step and keeps a fresh Bernoulli(p) subset, so early mistakes can be revised.

Selected with the sampling option ``decoding: mask`` (options.build_sampler); fixed steps only (no adaptive steps,
no region edits), every request in one batch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from grn_lightning.generator.refinement import keep_fractions
from grn_lightning.generator.sampling.guidance import SELECTIONS, SampleResult, guided_logits, model_geometry, sample_categorical


class MaskDecodingSampler:
    """Decode GRN labels MaskGIT-style (decided elements frozen). Arguments as `RefinementSampler`'s.

    Args:
        steps: decoding steps T.
        schedule: "linear", "cosine" or T explicit decided fractions (the last must be 1 to decode everything).
        cfg_scale: classifier-free guidance weight (1: none).
        cfg_interval: CFG only while low <= p_i <= high.
        temperature: τ dividing the guided logits.
        selection: "random" (a random subset of the undecided elements) or "confidence" (the most probable ones).
        noise_device: device of the per-request generators.
    """

    def __init__(
        self,
        steps: int = 50,
        schedule: str | Sequence[float] = "linear",
        cfg_scale: float = 2.4,
        cfg_interval: tuple[float, float] = (0.40, 1.0),
        temperature: float = 1.33,
        selection: str = "confidence",
        noise_device: str = "cpu",
    ) -> None:
        self.keep = keep_fractions(steps, schedule)
        if selection not in SELECTIONS:
            raise ValueError(f"selection={selection!r} is not one of {SELECTIONS}")
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.steps, self.schedule, self.cfg_scale = steps, schedule, float(cfg_scale)
        self.cfg_interval = tuple(float(v) for v in cfg_interval)
        self.temperature, self.selection, self.noise_device = float(temperature), selection, noise_device

    @torch.no_grad()
    def sample(
        self,
        model: Callable,
        class_ids: torch.Tensor,
        seeds: Sequence[int] | torch.Tensor,
        num_tokens: int | None = None,
        groups: int | None = None,
        classes: int | None = None,
        null_class: int | None = None,
        lockstep: Callable[[bool], bool] | None = None,
    ) -> SampleResult:
        """Labels [B, N, G] for `class_ids` [B]; every request makes exactly `steps` forwards."""
        n, g, k, null = model_geometry(model, num_tokens, groups, classes, null_class)
        device, b = class_ids.device, class_ids.shape[0]
        seed_values = seeds.tolist() if isinstance(seeds, torch.Tensor) else list(seeds)
        gens = [torch.Generator(device=self.noise_device).manual_seed(int(s)) for s in seed_values]
        y_rand = torch.stack([torch.randint(0, k, (n, g), generator=gen, device=self.noise_device) for gen in gens]).to(device)
        decided = torch.zeros(b, n, g, dtype=torch.bool, device=device)
        value = y_rand.clone()
        rows = calls = 0
        low, high = self.cfg_interval
        for i in range(self.steps):
            if lockstep is not None:
                lockstep(True)
            p_in = 0.0 if i == 0 else self.keep[i - 1]
            ratio = torch.full((b,), p_in, device=device)
            cfg = torch.full((b,), low <= p_in <= high and self.cfg_scale != 1.0, dtype=torch.bool)
            state = torch.where(decided, value, y_rand)
            _, guided = guided_logits(model, state, class_ids, ratio, null, self.cfg_scale, cfg)
            rows, calls = rows + b + int(cfg.sum()), calls + 1
            probs = torch.softmax(guided / self.temperature, dim=-1)
            noise = torch.stack([torch.rand((2, n, g), generator=gen, device=self.noise_device) for gen in gens]).to(device)
            y = sample_categorical(probs, noise[:, 0])
            target = round(self.keep[i] * n * g)  # decided elements after this step
            # score of each undecided element; decided ones rank last so they are never chosen again
            score = probs.gather(-1, y[..., None])[..., 0] if self.selection == "confidence" else noise[:, 1]
            score = score.masked_fill(decided, -1.0).flatten(1)
            new = (target - decided.flatten(1).sum(1)).clamp_min(0)
            rank = score.argsort(dim=1, descending=True, stable=True).argsort(dim=1)
            chosen = (rank < new[:, None]).view_as(decided) & ~decided
            value = torch.where(chosen, y, value)
            decided |= chosen
        value = torch.where(decided, value, y)  # a schedule ending below 1 leaves the last prediction
        return SampleResult(
            labels=value,
            steps=torch.full((b,), self.steps, dtype=torch.long),
            entropy=torch.full((b,), float("nan"), dtype=torch.float64),
            rows_forwarded=rows,
            forward_calls=calls,
        )
