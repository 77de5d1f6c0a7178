"""GRN refinement sampler (SPEC §6, paper Alg. 3) with continuous batching and region edits.

Every request (one image) carries its own `torch.Generator` seeded with its seed and draws, in a fixed
order, y_rand [N, G] once and then two uniforms [2, N, G] per step (category sample, kept mask). Its
random stream therefore never depends on which other requests share the batch, so a request sampled
inside a continuously refilled batch gets exactly the labels it gets alone with the same seed.

Continuous batching: `max_batch` slots; each step runs ONE forward over the active requests (plus the
unconditional rows of those inside the CFG interval); a request that has made its last step leaves and
the next queued request takes its slot. With entropy-guided step counts (adaptive.py) fewer steps
therefore mean fewer forwards, i.e. more images/s (the release kept finished samples in the batch).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from grn_lightning.generator.sampling.adaptive import AdaptiveSteps, normalised_entropy
from grn_lightning.generator.refinement import keep_fractions

SELECTIONS = ("random", "confidence")
Model = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class SampleResult:
    """Output of `RefinementSampler.sample` / `.edit`, rows in request order.

    labels: int64 [B, N, G] final full predictions; steps: int64 [B] network evaluations per sample
    (summed over edit rounds); entropy: float64 [B] normalised entropy of the conditional prediction at
    the entropy step; rows_forwarded / forward_calls: compute actually spent (CFG rows included).
    """

    labels: torch.Tensor
    steps: torch.Tensor
    entropy: torch.Tensor
    rows_forwarded: int
    forward_calls: int


def guided_logits(
    model: Model,
    state: torch.Tensor,
    class_ids: torch.Tensor,
    ratio: torch.Tensor,
    null_class: int,
    cfg_scale: float,
    cfg_active: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(conditional logits, guided logits), both float32 [B, N, G, K], from ONE batched forward.

    Rows with `cfg_active` get an extra unconditional row (null class) appended to the batch and
    ℓ = ℓ_u + w·(ℓ_c − ℓ_u); the others use ℓ_c (SPEC §6: CFG only inside the interval).
    """
    idx = torch.nonzero(cfg_active, as_tuple=False).flatten()
    null = torch.full_like(class_ids[idx], null_class)
    logits = model(
        torch.cat([state, state[idx]]), torch.cat([class_ids, null]), torch.cat([ratio, ratio[idx]])
    ).float()
    cond, uncond = logits[: state.shape[0]], logits[state.shape[0] :]
    guided = cond.clone()
    guided[idx] = uncond + cfg_scale * (cond[idx] - uncond)
    return cond, guided


def sample_categorical(probs: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
    """Inverse-CDF draw: probs [..., K], uniform [...] in [0, 1) → int64 [...] (one uniform per element)."""
    cdf = probs.cumsum(dim=-1)
    return (cdf < uniform[..., None]).sum(dim=-1).clamp(max=probs.shape[-1] - 1)


class _Request:
    """Per-image sampling state; `fixed` marks tokens held to `source` (region edits)."""

    def __init__(self, index, class_id, seed, shape, classes, source, fixed, rounds, noise_device):
        self.index, self.class_id, self.shape, self.classes = index, class_id, shape, classes
        self.gen = torch.Generator(device=noise_device).manual_seed(int(seed))
        self.noise_device = noise_device
        self.source, self.fixed, self.rounds_left = source, fixed, rounds
        self.fixed_frac = 0.0 if fixed is None else float(fixed.float().mean())
        self.total_steps, self.entropy = 0, float("nan")
        self.y = source

    def uniforms(self) -> torch.Tensor:
        return torch.rand((2, *self.shape), generator=self.gen, device=self.noise_device)

    def start_round(self, steps: int, first_step: int, device: torch.device) -> None:
        """Start a (new) refinement round at `first_step`: fresh y_rand drawn from the request's generator."""
        self.y_rand = torch.randint(0, self.classes, self.shape, generator=self.gen, device=self.noise_device).to(device)
        self.step, self.steps, self.delta = first_step, steps, None
        self.state = self.y_rand
        self.rounds_left -= 1


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
        entropy_step: without `adaptive`, the entropy is reported after this many steps (clipped to T);
            with `adaptive` it is `adaptive.t0`.
        noise_device: device of the per-request generators ("cpu": the same noise stream for a seed on any
            machine; "cuda": no host-side generation, for large batches).
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
        noise_device: str = "cpu",
    ) -> None:
        keep_fractions(steps, schedule)  # validates steps and schedule
        if selection not in SELECTIONS:
            raise ValueError(f"selection={selection!r} is not one of {SELECTIONS}")
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        low, high = cfg_interval
        if not 0.0 <= low <= high <= 1.0:
            raise ValueError(f"cfg_interval must satisfy 0 <= low <= high <= 1, got {cfg_interval}")
        try:
            torch.device(noise_device)
        except RuntimeError as err:
            raise ValueError(f"noise_device={noise_device!r} is not a torch device (e.g. 'cpu', 'cuda')") from err
        if max_batch < 1 or entropy_step < 1:
            raise ValueError(f"max_batch and entropy_step must be >= 1, got {max_batch}, {entropy_step}")
        self.steps, self.schedule = steps, schedule
        self.keep = keep_fractions(steps, schedule)
        self.cfg_scale, self.cfg_interval = float(cfg_scale), (float(low), float(high))
        self.temperature, self.adaptive, self.selection = float(temperature), adaptive, selection
        self.max_batch, self.entropy_step, self.noise_device = max_batch, entropy_step, noise_device

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

        `lockstep` (for sharded models, see lockstep.py): called once per step with "this process still has
        requests", it must return "some process still has requests"; while it does, a process that has
        finished keeps making 1-row dummy forwards so every process makes the same number of forward calls
        (FSDP gathers weights collectively in each forward; adaptive step counts differ between processes).
        """
        n, g, k, null = self._geometry(model, num_tokens, groups, classes, null_class)
        reqs = [
            _Request(i, int(c), s, (n, g), k, None, None, 1, self.noise_device)
            for i, (c, s) in enumerate(zip(class_ids.tolist(), _seed_list(seeds, len(class_ids))))
        ]
        return self._run(model, reqs, (n, g), null, class_ids.device, self.adaptive, 0.0, lockstep=lockstep)

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
        fixed = ~region_mask.bool()
        reqs = [
            _Request(i, int(c), s, (n, g), k, source_labels[i], fixed[i, :, None].expand(n, g), rounds, self.noise_device)
            for i, (c, s) in enumerate(zip(class_ids.tolist(), _seed_list(seeds, b)))
        ]
        return self._run(model, reqs, (n, g), null, source_labels.device, None, start_ratio, revise_ratio, lockstep)

    # ------------------------------------------------------------------ internals
    def _geometry(self, model, n, g, k, null):
        def pick(value, attr):
            if value is None:
                value = getattr(model, attr, None)
            if value is None:
                raise ValueError(f"pass {attr}= explicitly: the model has no attribute {attr!r}")
            return int(value)

        return pick(n, "num_tokens"), pick(g, "groups"), pick(k, "classes"), pick(null, "null_class")

    def _first_step(self, ratio: float) -> int:
        return next((i for i, p in enumerate(self.keep) if p >= ratio), self.steps - 1)

    def _keep_fraction(self, r: _Request, adaptive: AdaptiveSteps | None) -> float:
        if adaptive is None:
            return self.keep[r.step]
        return adaptive.keep_fraction(r.step, r.delta if r.delta is not None else adaptive.t_max - adaptive.t0)

    def _run(
        self, model, reqs, shape, null, device, adaptive, start_ratio, revise_ratio=0.5, lockstep=None
    ) -> SampleResult:
        queue, active, done = deque(reqs), [], []
        rows = calls = 0
        steps0 = adaptive.t_max if adaptive is not None else self.steps
        ent_step = adaptive.t0 if adaptive is not None else min(self.entropy_step, self.steps)
        while True:
            local = bool(queue or active)
            if not (lockstep(local) if lockstep is not None else local):
                break
            if not local:  # keep collective forwards in step with the processes that still sample
                dummy = torch.zeros((1, *shape), dtype=torch.long, device=device)
                model(dummy, torch.full((1,), null, device=device), torch.zeros(1, device=device))
                calls += 1
                continue
            while queue and len(active) < self.max_batch:
                r = queue.popleft()
                r.start_round(steps0, self._first_step(start_ratio) if r.fixed is not None else 0, device)
                if r.fixed is not None:
                    self._restart_state(r, self.keep[r.step], device)
                active.append(r)
            # Per-request scalars are built on the host (no device syncs); tensors are batched below.
            p = torch.tensor([self._keep_fraction(r, adaptive) for r in active], dtype=torch.float32)
            fixed_frac = torch.tensor([r.fixed_frac for r in active])
            ratio_in = fixed_frac + (1 - fixed_frac) * p
            low, high = self.cfg_interval
            cfg = (ratio_in >= low) & (ratio_in <= high) & (self.cfg_scale != 1.0)
            state = torch.stack([r.state for r in active])
            cls = torch.tensor([r.class_id for r in active], device=device)
            cond, guided = guided_logits(model, state, cls, ratio_in.to(device), null, self.cfg_scale, cfg)
            rows, calls = rows + state.shape[0] + int(cfg.sum()), calls + 1
            tau = torch.tensor([self.temperature * self._tau_factor(r, adaptive) for r in active], device=device)
            probs = torch.softmax(guided / tau[:, None, None, None], dim=-1)
            noise = torch.stack([r.uniforms() for r in active]).to(device)
            y = sample_categorical(probs, noise[:, 0])
            editing = active[0].fixed is not None  # a run is all samples or all edits
            if editing:
                fixed = torch.stack([r.fixed for r in active])
                source = torch.stack([r.source for r in active])
                y = torch.where(fixed, source, y)
            hit = [j for j, r in enumerate(active) if r.step + 1 == ent_step]
            entropy = normalised_entropy(cond[hit]).tolist() if hit else []
            deltas = adaptive.remaining_steps(torch.tensor(entropy, dtype=torch.float64)).tolist() if adaptive else []
            for j, r in enumerate(active):
                r.y = y[j]
                r.step += 1
                r.total_steps += 1
            for pos, j in enumerate(hit):
                active[j].entropy = entropy[pos]
                if adaptive is not None:
                    active[j].delta = deltas[pos]
                    active[j].steps = adaptive.t0 + deltas[pos]
            # F_{i+1} = s·y + (1−s)·y_rand for every row (finished rows are simply not used).
            p_next = torch.tensor(
                [self._keep_fraction(r, adaptive) if r.step < r.steps else 1.0 for r in active], device=device
            )
            if self.selection == "confidence":
                conf = probs.gather(-1, y[..., None])[..., 0].flatten(1)
                rank = conf.argsort(dim=1, descending=True, stable=True).argsort(dim=1)
                keep = (rank < torch.round(p_next * conf.shape[1])[:, None]).view_as(y)
            else:
                keep = noise[:, 1] < p_next[:, None, None]
            nxt = torch.where(keep, y, torch.stack([r.y_rand for r in active]))
            if editing:
                nxt = torch.where(fixed, source, nxt)
            still = []
            for j, r in enumerate(active):
                if r.step < r.steps:
                    r.state = nxt[j]
                    still.append(r)
                elif r.rounds_left > 0:
                    r.source = r.y
                    r.start_round(self.steps, self._first_step(revise_ratio), device)
                    self._restart_state(r, self.keep[r.step], device)
                    still.append(r)
                else:
                    done.append(r)
            active = still
        done.sort(key=lambda r: r.index)
        return SampleResult(
            labels=torch.stack([r.y for r in done]) if done else torch.zeros((0, *shape), dtype=torch.long, device=device),
            steps=torch.tensor([r.total_steps for r in done], dtype=torch.long),
            entropy=torch.tensor([r.entropy for r in done], dtype=torch.float64),
            rows_forwarded=rows,
            forward_calls=calls,
        )

    def _tau_factor(self, r: _Request, adaptive: AdaptiveSteps | None) -> float:
        if adaptive is None or r.delta is None:
            return 1.0
        return adaptive.temperature_factor(r.delta)

    def _restart_state(self, r: _Request, p: float, device: torch.device) -> None:
        """Edit round start: region elements keep Bernoulli(p) of the current labels (p = 0: pure noise)."""
        keep = r.uniforms()[1].to(device) < p
        r.state = torch.where(r.fixed | keep, r.source, r.y_rand)


def _seed_list(seeds: Sequence[int] | torch.Tensor, count: int) -> list[int]:
    values = seeds.tolist() if isinstance(seeds, torch.Tensor) else [int(s) for s in seeds]
    if len(values) != count:
        raise ValueError(f"need one seed per request: got {len(values)} seeds for {count} requests")
    return values
