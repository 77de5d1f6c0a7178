"""The loop of one `RefinementSampler.sample` / `.edit` call over a fixed set of slots (sampler.py's docstring says
how the slots, continuous batching, static shapes and tail shrinking work)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from grn_lightning.generator.sampling import noise
from grn_lightning.generator.sampling.adaptive import normalised_entropy
from grn_lightning.generator.sampling.guidance import SampleResult, guided_logits, sample_categorical

if TYPE_CHECKING:
    from grn_lightning.generator.sampling.sampler import RefinementSampler

TAIL_CHECK_EVERY = 4  # static shapes, empty queue: look at the slots at least this often to shrink the batch


@dataclass
class Requests:
    """The queue, on the sampling device: class ids [R], seeds [R] and, for edits, sources [R, N, G] and the tokens
    held to them [R, N] (True = fixed)."""

    class_ids: torch.Tensor
    keys: torch.Tensor
    source: torch.Tensor | None = None
    fixed: torch.Tensor | None = None

    @property
    def count(self) -> int:
        return self.class_ids.shape[0]


class SlotRun:
    """One `sample` / `edit` call: the slot tensors and the loop (see the module docstring)."""

    def __init__(self, cfg: RefinementSampler, model, requests: Requests, shape, classes, null, device, adaptive,
                 rounds, start_ratio, revise_ratio, lockstep):  # fmt: skip
        self.cfg, self.model, self.req, self.shape, self.k, self.null = cfg, model, requests, shape, classes, null
        self.device, self.adaptive, self.rounds, self.lockstep = device, adaptive, rounds, lockstep
        self.editing = requests.source is not None
        self.first_step, self.revise_step = cfg.first_step(start_ratio), cfg.first_step(revise_ratio)
        self.keep_table = torch.tensor(cfg.keep, dtype=torch.float64, device=device)
        self.ent_step = adaptive.t0 if adaptive is not None else min(cfg.entropy_step, cfg.steps - 1)
        self.round_steps = adaptive.t_max if adaptive is not None else cfg.steps  # before Δ is known
        self.rows_per_slot = 1 if cfg.cfg_scale == 1.0 else 2
        r, (n, g) = requests.count, shape
        # outputs get one spare row (index R) that absorbs the writes of slots that finish nothing this step
        self.out_labels = torch.zeros((r + 1, n, g), dtype=torch.long, device=device)
        self.out_steps = torch.zeros(r + 1, dtype=torch.long, device=device)
        self.out_entropy = torch.full((r + 1,), float("nan"), dtype=torch.float64, device=device)
        self.next_request = torch.zeros((), dtype=torch.long, device=device)
        self.rows = torch.zeros((), dtype=torch.long, device=device)
        self.calls = self.slot_rows = self.checks = 0
        self._make_slots(min(cfg.max_batch, max(r, 1)))

    # -- slot state ---------------------------------------------------------------------------------------
    SLOT_FIELDS = ("request", "step", "steps", "delta", "round", "total", "entropy", "fresh", "state", "y", "y_rand",
                   "source", "fixed")  # fmt: skip

    def _make_slots(self, count: int) -> None:
        n, g = self.shape
        zeros = dict(dtype=torch.long, device=self.device)
        self.request = torch.full((count,), -1, **zeros)  # request index, −1 = empty
        self.step, self.steps, self.delta = (torch.zeros(count, **zeros) for _ in range(3))
        self.round, self.total = torch.zeros(count, **zeros), torch.zeros(count, **zeros)
        self.entropy = torch.full((count,), float("nan"), dtype=torch.float64, device=self.device)
        self.fresh = torch.zeros(count, dtype=torch.bool, device=self.device)  # (re)started round: draw y_rand
        self.state, self.y, self.y_rand = (torch.zeros((count, n, g), **zeros) for _ in range(3))
        self.source = torch.zeros((count, n, g), **zeros) if self.editing else None
        self.fixed = torch.zeros((count, n), dtype=torch.bool, device=self.device) if self.editing else None

    def _compact(self, count: int) -> None:
        """Keep `count` slots, the occupied ones first (tail shrinking, static shapes)."""
        order = torch.argsort((self.request < 0).to(torch.int8), stable=True)[:count]
        for name in self.SLOT_FIELDS:
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, value[order])

    # -- one iteration ------------------------------------------------------------------------------------
    def _admit(self) -> None:
        """Fill empty slots with queued requests (on the device) and start the rounds of fresh slots."""
        free = self.request < 0
        candidate = self.next_request + torch.cumsum(free.long(), 0) - 1
        admit = free & (candidate < self.req.count)
        self.next_request = self.next_request + admit.sum()
        self.request = torch.where(admit, candidate, self.request)
        zero = torch.zeros_like(self.step)
        for name in ("round", "total", "delta"):
            setattr(self, name, torch.where(admit, zero, getattr(self, name)))
        self.entropy = torch.where(admit, torch.full_like(self.entropy, float("nan")), self.entropy)
        index = self.request.clamp(min=0)
        if self.editing:
            self.source = torch.where(admit[:, None, None], self.req.source[index], self.source)
            self.fixed = torch.where(admit[:, None], self.req.fixed[index], self.fixed)
        fresh = self.fresh | admit
        keys = self.req.keys[index]
        y_rand = noise.randint(keys, self.round, zero, noise.LABELS, self.shape, self.k)
        self.y_rand = torch.where(fresh[:, None, None], y_rand, self.y_rand)
        if self.editing:
            start = torch.where(self.round > 0, self.revise_step, self.first_step)
            self.step = torch.where(fresh, start, self.step)
            self.steps = torch.where(fresh, self.cfg.steps, self.steps)
            # region elements keep Bernoulli(p) of the source at the round's first kept fraction (p = 0: pure noise)
            u = noise.uniform(keys, self.round, self.step, noise.RESTART, self.shape)
            kept = self.fixed[:, :, None] | (u < self._keep(self.step, self.delta).float()[:, None, None])
            self.state = torch.where(fresh[:, None, None], torch.where(kept, self.source, self.y_rand), self.state)
        else:
            self.step = torch.where(fresh, zero, self.step)
            self.steps = torch.where(fresh, self.round_steps, self.steps)
            self.state = torch.where(fresh[:, None, None], self.y_rand, self.state)
        self.fresh = torch.zeros_like(self.fresh)

    def _keep(self, step: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        """float64 kept fraction p at loop index `step` of each slot's round."""
        if self.adaptive is not None:
            return self.adaptive.keep_fractions(step, delta)
        return self.keep_table[step.clamp(max=self.cfg.steps - 1)]

    def _ratio_input(self, p: torch.Tensor) -> torch.Tensor:
        """float32 network ratio: the expected kept fraction of the whole state (fixed tokens count as kept)."""
        if not self.editing:
            return p.float()
        fixed_fraction = self.fixed.double().mean(dim=1)
        return (fixed_fraction + (1.0 - fixed_fraction) * p).float()

    def _iterate(self) -> None:
        cfg, occupied = self.cfg, self.request >= 0
        ratio = self._ratio_input(self._keep(self.step, self.delta))
        low, high = cfg.cfg_interval
        cfg_on = (ratio >= low) & (ratio <= high) & occupied & (cfg.cfg_scale != 1.0)
        cls = self.req.class_ids[self.request.clamp(min=0)]
        slots = self.request.shape[0]
        if cfg.static_shapes:
            cond, guided = guided_logits(self.model, self.state, cls, ratio, self.null, cfg.cfg_scale, cfg_on,
                                         every_row=cfg.cfg_scale != 1.0)  # fmt: skip
            self.rows += slots * self.rows_per_slot
        else:  # only the occupied slots: scatter their logits back into slot order
            idx = torch.nonzero(occupied, as_tuple=False).flatten()
            c_sub, g_sub = guided_logits(self.model, self.state[idx], cls[idx], ratio[idx], self.null, cfg.cfg_scale,
                                         cfg_on[idx])  # fmt: skip
            cond = c_sub.new_zeros((slots, *c_sub.shape[1:])).index_copy(0, idx, c_sub)
            guided = g_sub.new_zeros((slots, *g_sub.shape[1:])).index_copy(0, idx, g_sub)
            self.rows += idx.numel() + cfg_on.sum()
        self.calls += 1
        self.slot_rows += slots * self.rows_per_slot
        keys = self.req.keys[self.request.clamp(min=0)]
        # Eq. 9: the entropy forward's conditional, pre-CFG, pre-τ prediction sets Δ before this step's draw
        at_entropy = occupied & (self.step == self.ent_step)
        entropy = normalised_entropy(cond)
        self.entropy = torch.where(at_entropy, entropy, self.entropy)
        if self.adaptive is not None:
            delta = self.adaptive.remaining_steps(entropy)
            self.delta = torch.where(at_entropy, delta, self.delta)
            self.steps = torch.where(at_entropy, self.adaptive.t0 + delta, self.steps)
            tau = cfg.temperature * self.adaptive.temperature_factors(self.delta)
        else:
            tau = torch.full((slots,), cfg.temperature, dtype=torch.float64, device=self.device)
        probs = torch.softmax(guided / tau.float().view(-1, 1, 1, 1), dim=-1)
        y = sample_categorical(probs, noise.uniform(keys, self.round, self.step, noise.CATEGORY, self.shape))
        if self.editing:
            y = torch.where(self.fixed[:, :, None], self.source, y)
        self.y = torch.where(occupied[:, None, None], y, self.y)
        self.step = self.step + occupied
        self.total = self.total + occupied
        # F_{i+1} = s·y + (1−s)·y_rand with s ~ Bernoulli(p_{i+1}) (finished slots' next state is never used)
        p_next = self._keep(self.step, self.delta).float()
        if cfg.selection == "confidence":
            conf = probs.gather(-1, y[..., None])[..., 0].flatten(1)
            rank = conf.argsort(dim=1, descending=True, stable=True).argsort(dim=1)
            kept = (rank < torch.round(p_next * conf.shape[1])[:, None]).view_as(y)
        else:
            kept = noise.uniform(keys, self.round, self.step - 1, noise.KEEP, self.shape) < p_next[:, None, None]
        nxt = torch.where(kept, y, self.y_rand)
        if self.editing:
            nxt = torch.where(self.fixed[:, :, None], self.source, nxt)
        self.state = torch.where(occupied[:, None, None], nxt, self.state)
        self._finish(occupied & (self.step >= self.steps))

    def _finish(self, finished: torch.Tensor) -> None:
        """Slots past their last step: start the next edit round, or write the output and free the slot."""
        if self.editing and self.rounds > 1:
            again = finished & (self.round + 1 < self.rounds)
            self.round = self.round + again
            self.source = torch.where(again[:, None, None], self.y, self.source)
            self.fresh = self.fresh | again
            finished = finished & ~again
        target = torch.where(finished, self.request, self.req.count)
        self.out_labels.index_copy_(0, target, self.y)
        self.out_steps.index_copy_(0, target, self.total)
        self.out_entropy.index_copy_(0, target, self.entropy)
        self.request = torch.where(finished, torch.full_like(self.request, -1), self.request)

    # -- the loop -----------------------------------------------------------------------------------------
    def _steps_left_bound(self) -> torch.Tensor:
        """int64 [slots]: fewest iterations each occupied slot still needs (0 for empty slots)."""
        if self.adaptive is not None:
            total = torch.where(self.delta > 0, self.steps, self.adaptive.t_min)
        else:
            total = self.steps
        left = (total - self.step).clamp(min=1)
        if self.editing:
            left = left + (self.rounds - 1 - self.round) * (self.cfg.steps - self.revise_step)
        return torch.where(self.request >= 0, left, torch.zeros_like(left))

    def _shortest_request(self) -> int:
        if self.editing:
            return (self.cfg.steps - self.first_step) + (self.rounds - 1) * (self.cfg.steps - self.revise_step)
        return self.adaptive.t_min if self.adaptive is not None else self.cfg.steps

    def run(self) -> SampleResult:
        until_check = 0
        while True:
            self._admit()
            if until_check == 0:  # a host checkpoint: one small read-back
                pending, occupied, left = torch.stack([
                    self.req.count - self.next_request, (self.request >= 0).sum(), self._steps_left_bound().max(),
                ]).tolist()  # fmt: skip
                self.checks += 1
                local = pending > 0 or occupied > 0
                if not (self.lockstep(local) if self.lockstep is not None else local):
                    break
                if not local:  # keep collective forwards in step with the processes that still sample
                    self._dummy_forward()
                    continue
                slots = self.request.shape[0]
                if self.cfg.static_shapes and self.cfg.shrink_tail and pending == 0 and 0 < occupied <= slots // 2:
                    self._compact(max(1, 1 << (occupied - 1).bit_length()))
                # nothing can finish before `left` more iterations (nor a queued request before its shortest run)
                until_check = max(left, self._shortest_request() if pending else 1)
                if self.lockstep is not None:
                    until_check = 1  # the collective flag exchange must happen at the same iteration on every process
                elif self.cfg.static_shapes and self.cfg.shrink_tail and pending == 0:
                    until_check = min(until_check, TAIL_CHECK_EVERY)
                elif not self.cfg.static_shapes:
                    until_check = 1  # the row selection syncs every step anyway: stop exactly
            self._iterate()
            until_check -= 1
        r = self.req.count
        return SampleResult(
            labels=self.out_labels[:r],
            steps=self.out_steps[:r].cpu(),
            entropy=self.out_entropy[:r].cpu(),
            rows_forwarded=int(self.rows),
            forward_calls=self.calls,
            slot_rows=self.slot_rows,
            host_checks=self.checks,
        )

    def _dummy_forward(self) -> None:
        n, g = self.shape
        dummy = torch.zeros((1, n, g), dtype=torch.long, device=self.device)
        self.model(dummy, torch.full((1,), self.null, device=self.device), torch.zeros(1, device=self.device))
        self.calls += 1
