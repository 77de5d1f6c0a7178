"""GRN refinement sampler (SPEC §6, paper Alg. 3) on a fixed set of slots, with continuous batching and region edits.

Slots: `max_batch` requests are in flight; every per-request quantity (request index, step, Δ, labels, y_rand, …) is a
tensor over the slots, so one loop iteration is a fixed sequence of batched kernels with no Python loop over requests.
A request that has made its last step writes its labels to the output and frees its slot; the next queued request is
admitted into it on the device (a cumulative sum over free slots), so fewer steps (entropy-guided, adaptive.py) mean
fewer forwards, i.e. more images/s (the release kept finished samples in the batch).

Randomness is counter-based (noise.py): every draw of a request is a function of (seed, round, step, stream, element),
so a request gets bit-identical labels whatever else shares the batch, and no generator state lives on the host.

Two forward layouts (`static_shapes`):
- False: the forward gets only the occupied slots plus an unconditional row for those inside the CFG interval (the
  fewest rows; the row selection reads a mask back to the host each step). For eager CPU/GPU runs.
- True: the forward always gets every slot (and an unconditional row for every slot when cfg_scale ≠ 1): fixed
  shapes for compiled blocks, no per-step host sync. The host looks at the slots only at checkpoints, spaced by a
  lower bound on the steps left, to stop the loop and (`shrink_tail`) to halve the slot count when the queue is empty
  and at most half the slots are occupied, so the last long-running requests do not drag a mostly empty batch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from grn_lightning.generator.refinement import keep_fractions
from grn_lightning.generator.sampling import noise
from grn_lightning.generator.sampling.adaptive import AdaptiveSteps, normalised_entropy

SELECTIONS = ("random", "confidence")
TAIL_CHECK_EVERY = 4  # static shapes, empty queue: look at the slots at least this often to shrink the batch
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
    (fixed shapes, no host sync to select rows); the guided result is the same.
    """
    b = state.shape[0]
    if every_row:
        logits = model(torch.cat([state, state]), torch.cat([class_ids, torch.full_like(class_ids, null_class)]),
                       torch.cat([ratio, ratio])).float()  # fmt: skip
        cond, uncond = logits[:b], logits[b:]
        active = cfg_active.view(-1, *([1] * (cond.ndim - 1)))
        return cond, torch.where(active, uncond + cfg_scale * (cond - uncond), cond)
    idx = torch.nonzero(cfg_active, as_tuple=False).flatten()
    null = torch.full_like(class_ids[idx], null_class)
    logits = model(
        torch.cat([state, state[idx]]), torch.cat([class_ids, null]), torch.cat([ratio, ratio[idx]])
    ).float()
    cond, uncond = logits[:b], logits[b:]
    guided = cond.clone()
    guided[idx] = uncond + cfg_scale * (cond[idx] - uncond)
    return cond, guided


def sample_categorical(probs: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
    """Inverse-CDF draw: probs [..., K], uniform [...] in [0, 1) → int64 [...] (one uniform per element)."""
    cdf = probs.cumsum(dim=-1)
    return (cdf < uniform[..., None]).sum(dim=-1).clamp(max=probs.shape[-1] - 1)


@dataclass
class _Requests:
    """The queue, on the sampling device: class ids [R], seeds [R] and, for edits, sources [R, N, G] and the tokens
    held to them [R, N] (True = fixed)."""

    class_ids: torch.Tensor
    keys: torch.Tensor
    source: torch.Tensor | None = None
    fixed: torch.Tensor | None = None

    @property
    def count(self) -> int:
        return self.class_ids.shape[0]


class RefinementSampler:
    """Sample or edit GRN labels by iterative refinement (SPEC §6).

    Args:
        steps: refinement steps T with a fixed schedule (ignored by `sample` when `adaptive` is set).
        schedule: "linear" (p_i = i/T, C2I), "cosine" (T2I/T2V release) or T explicit kept fractions.
        cfg_scale: classifier-free guidance weight w (1 = no guidance; the unconditional forward is skipped).
        cfg_interval: (low, high): CFG applies only while low <= p_i <= high.
        temperature: τ dividing the guided logits.
        adaptive: entropy-guided step counts (AdaptiveSteps) or None for a fixed T.
        selection: "random" (Bernoulli keep, the GRN default) or "confidence" (keep the round(p·E) most
            probable sampled elements; ablation only, paper Table 10).
        max_batch: slots of the continuous batch (requests in flight; the forward has up to 2× rows with CFG).
        entropy_step: without `adaptive`, the entropy is reported from the forward of this loop index (0-based,
            clipped to T − 1; 5 = the 6th forward, as Eq. 9 reads it); with `adaptive` it is `adaptive.t0`.
        static_shapes: forward every slot at every step (fixed shapes for compiled blocks, no per-step host sync)
            instead of only the occupied slots and the unconditional rows CFG needs (module docstring).
        shrink_tail: with `static_shapes`, halve the slots once the queue is empty and at most half are occupied.
    """

    def __init__(
        self,
        steps: int = 50,
        schedule: str | Sequence[float] = "linear",
        cfg_scale: float = 2.4,
        cfg_interval: tuple[float, float] = (0.40, 1.0),
        temperature: float = 1.33,
        adaptive: AdaptiveSteps | None = None,
        selection: str = "random",
        max_batch: int = 64,
        entropy_step: int = 5,
        static_shapes: bool = False,
        shrink_tail: bool = True,
    ) -> None:
        keep_fractions(steps, schedule)  # validates steps and schedule
        if selection not in SELECTIONS:
            raise ValueError(f"selection={selection!r} is not one of {SELECTIONS}")
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        low, high = cfg_interval
        if not 0.0 <= low <= high <= 1.0:
            raise ValueError(f"cfg_interval must satisfy 0 <= low <= high <= 1, got {cfg_interval}")
        if max_batch < 1 or entropy_step < 0:
            raise ValueError(f"max_batch must be >= 1 and entropy_step >= 0, got {max_batch}, {entropy_step}")
        self.steps, self.schedule = steps, schedule
        self.keep = keep_fractions(steps, schedule)
        self.cfg_scale, self.cfg_interval = float(cfg_scale), (float(low), float(high))
        self.temperature, self.adaptive, self.selection = float(temperature), adaptive, selection
        self.max_batch, self.entropy_step = max_batch, entropy_step
        self.static_shapes, self.shrink_tail = bool(static_shapes), bool(shrink_tail)

    # ------------------------------------------------------------------ public API
    @torch.no_grad()
    def sample(
        self,
        model: Model,
        class_ids: torch.Tensor,
        seeds: Sequence[int] | torch.Tensor,
        num_tokens: int | None = None,
        groups: int | None = None,
        classes: int | None = None,
        null_class: int | None = None,
        lockstep: Callable[[bool], bool] | None = None,
    ) -> SampleResult:
        """Generate labels [B, N, G] for `class_ids` [B]; geometry defaults to the model's attributes.

        `lockstep` (for sharded models, see lockstep.py): called at every step with "this process still has
        requests", it must return "some process still has requests"; while it does, a process that has
        finished keeps making dummy forwards so every process makes the same number of forward calls
        (FSDP gathers weights collectively in each forward; adaptive step counts differ between processes).
        """
        n, g, k, null = self._geometry(model, num_tokens, groups, classes, null_class)
        device = class_ids.device
        requests = _Requests(class_ids.long(), noise.request_keys(_seed_tensor(seeds, len(class_ids), device)))
        return _SlotRun(self, model, requests, (n, g), k, null, device, self.adaptive, 1, 0.0, 0.5, lockstep).run()

    @torch.no_grad()
    def edit(
        self,
        model: Model,
        source_labels: torch.Tensor,
        region_mask: torch.Tensor,
        class_ids: torch.Tensor,
        seeds: Sequence[int] | torch.Tensor,
        rounds: int = 1,
        start_ratio: float = 0.0,
        revise_ratio: float = 0.5,
        classes: int | None = None,
        null_class: int | None = None,
        lockstep: Callable[[bool], bool] | None = None,
    ) -> SampleResult:
        """Regenerate the tokens inside `region_mask` [B, N] (True = regenerate) of `source_labels` [B, N, G].

        Tokens outside the region are kept with probability 1 (fixed to the source in the network input
        and in the output at every step). Round 1 starts at the first step whose kept fraction reaches
        `start_ratio` (0 = sketch the region from scratch); rounds 2.. revise the previous round's region
        starting at `revise_ratio`. The network's ratio input is the whole state's expected kept fraction,
        (fixed fraction) + (free fraction)·p. Edits use the fixed schedule (`adaptive` is not applied).
        `lockstep` as in `sample`.
        """
        b, n, g = source_labels.shape
        if region_mask.shape != (b, n):
            raise ValueError(f"region_mask shape {tuple(region_mask.shape)} must be [B, N] = {(b, n)}")
        if rounds < 1:
            raise ValueError(f"rounds must be >= 1, got {rounds}")
        for name, v in (("start_ratio", start_ratio), ("revise_ratio", revise_ratio)):
            if not 0.0 <= v < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {v}")
        _, _, k, null = self._geometry(model, n, g, classes, null_class)
        device = source_labels.device
        keys = noise.request_keys(_seed_tensor(seeds, b, device))
        requests = _Requests(class_ids.long().to(device), keys, source_labels.long(), ~region_mask.bool().to(device))
        return _SlotRun(self, model, requests, (n, g), k, null, device, None, rounds, start_ratio, revise_ratio,
                        lockstep).run()  # fmt: skip

    # ------------------------------------------------------------------ internals
    def _geometry(self, model, n, g, k, null):
        def pick(value, attr):
            if value is None:
                value = getattr(model, attr, None)
            if value is None:
                raise ValueError(f"pass {attr}= explicitly: the model has no attribute {attr!r}")
            return int(value)

        return pick(n, "num_tokens"), pick(g, "groups"), pick(k, "classes"), pick(null, "null_class")

    def first_step(self, ratio: float) -> int:
        """First loop index of the fixed schedule whose kept fraction reaches `ratio` (edit round starts)."""
        return next((i for i, p in enumerate(self.keep) if p >= ratio), self.steps - 1)


class _SlotRun:
    """One `sample` / `edit` call: the slot tensors and the loop (see the module docstring)."""

    def __init__(self, cfg: RefinementSampler, model, requests: _Requests, shape, classes, null, device, adaptive,
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


def _seed_tensor(seeds: Sequence[int] | torch.Tensor, count: int, device: torch.device) -> torch.Tensor:
    values = seeds.to(device=device, dtype=torch.long) if isinstance(seeds, torch.Tensor) else None
    if values is None:
        values = torch.tensor([int(s) for s in seeds], dtype=torch.long, device=device)
    if values.numel() != count:
        raise ValueError(f"need one seed per request: got {values.numel()} seeds for {count} requests")
    return values.reshape(count)
