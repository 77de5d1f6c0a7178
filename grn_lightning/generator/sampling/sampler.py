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

from collections.abc import Callable, Sequence

import torch

from grn_lightning.generator.refinement import keep_fractions
from grn_lightning.generator.sampling import noise
from grn_lightning.generator.sampling.adaptive import AdaptiveSteps
from grn_lightning.generator.sampling.guidance import SELECTIONS, Model, SampleResult, model_geometry
from grn_lightning.generator.sampling.slot_run import Requests, SlotRun


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
        n, g, k, null = model_geometry(model, num_tokens, groups, classes, null_class)
        device = class_ids.device
        requests = Requests(class_ids.long(), noise.request_keys(_seed_tensor(seeds, len(class_ids), device)))
        return SlotRun(self, model, requests, (n, g), k, null, device, self.adaptive, 1, 0.0, 0.5, lockstep).run()

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
        _, _, k, null = model_geometry(model, n, g, classes, null_class)
        device = source_labels.device
        keys = noise.request_keys(_seed_tensor(seeds, b, device))
        requests = Requests(class_ids.long().to(device), keys, source_labels.long(), ~region_mask.bool().to(device))
        return SlotRun(self, model, requests, (n, g), k, null, device, None, rounds, start_ratio, revise_ratio,
                       lockstep).run()  # fmt: skip

    # ------------------------------------------------------------------ internals
    def first_step(self, ratio: float) -> int:
        """First loop index of the fixed schedule whose kept fraction reaches `ratio` (edit round starts)."""
        return next((i for i, p in enumerate(self.keep) if p >= ratio), self.steps - 1)


def _seed_tensor(seeds: Sequence[int] | torch.Tensor, count: int, device: torch.device) -> torch.Tensor:
    values = seeds.to(device=device, dtype=torch.long) if isinstance(seeds, torch.Tensor) else None
    if values is None:
        values = torch.tensor([int(s) for s in seeds], dtype=torch.long, device=device)
    if values.numel() != count:
        raise ValueError(f"need one seed per request: got {values.numel()} seeds for {count} requests")
    return values.reshape(count)
