"""Sampling options as plain dicts (YAML-friendly) → `RefinementSampler` (SPEC §6).

Configs and `GenerationMetrics(sampling=...)` carry sampling arguments as a dict of `RefinementSampler`'s
keyword arguments; the `adaptive` entry may be a dict of `AdaptiveSteps` arguments, optionally with a `preset`
("paper" or "release", adaptive.py) that the other keys override, or null for fixed steps.
Per-call overrides are merged over the module's defaults, key by key (`adaptive` is replaced as a whole).
"""

from __future__ import annotations

from collections.abc import Mapping

from grn_lightning.generator.sampling.adaptive import AdaptiveSteps


def merge_sampling(defaults: Mapping | None, overrides: Mapping | None = None) -> dict:
    """A new dict: `defaults` updated with `overrides`; `cfg_interval` lists become tuples."""
    merged = dict(defaults or {})
    merged.update(dict(overrides or {}))
    if merged.get("cfg_interval") is not None:
        merged["cfg_interval"] = tuple(float(v) for v in merged["cfg_interval"])
    return merged


def build_sampler(options: Mapping):
    """`RefinementSampler(**options)` with `adaptive` turned into `AdaptiveSteps` when given as a dict.

    Unknown keys fail here with the sampler's own message (construction-time validation of configs).
    `decoding: mask` selects the MaskGIT-style baseline (mask_decoding.py; paper Table 7) instead of refinement."""
    from grn_lightning.generator.sampling.sampler import RefinementSampler

    kwargs = dict(options)
    decoding = kwargs.pop("decoding", "refine")
    if decoding not in ("refine", "mask"):
        raise ValueError(f"sampling decoding={decoding!r} is not one of ('refine', 'mask')")
    if decoding == "mask":
        from grn_lightning.generator.sampling.mask_decoding import MaskDecodingSampler

        if kwargs.pop("adaptive", None) is not None:
            raise ValueError("sampling decoding='mask' uses fixed steps: set adaptive to null")
        kwargs.pop("max_batch", None), kwargs.pop("entropy_step", None)  # batching knobs; results do not depend on them
        try:
            return MaskDecodingSampler(**kwargs)
        except TypeError as err:
            raise ValueError(f"bad mask-decoding options {sorted(kwargs)}: {err}") from err
    adaptive = kwargs.get("adaptive")
    if isinstance(adaptive, Mapping):
        adaptive = dict(adaptive)
        preset = adaptive.pop("preset", None)  # {"preset": "release", "t_min": 10}: a preset with overrides
        kwargs["adaptive"] = AdaptiveSteps.preset(preset, **adaptive) if preset else AdaptiveSteps(**adaptive)
    try:
        return RefinementSampler(**kwargs)
    except TypeError as err:
        raise ValueError(f"bad sampling options {sorted(kwargs)}: {err}") from err
