"""Per-call sampling overrides (YAML-friendly dicts) over a module's sampler (SPEC §6).

The generator modules receive their sampler as an object (configs: `model.init_args.sampler`, a `RefinementSampler`
or the `MaskDecodingSampler` baseline); callbacks such as `GenerationMetrics(sampling=...)` and
`T2XSampleLogger(sampling=...)` may override some of its keyword arguments for their own calls. The overrides are
merged over the sampler's arguments, key by key (`adaptive`, a dict of `AdaptiveSteps` arguments, optionally with a
`preset` ("paper" or "release", adaptive.py) that the other keys override, or null, is replaced as a whole;
`decoding: mask` selects the baseline), and a new sampler is built.
"""

from __future__ import annotations

import inspect
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
        for knob in ("max_batch", "entropy_step", "static_shapes", "shrink_tail"):  # refinement batching knobs: results
            kwargs.pop(knob, None)  # do not depend on them, and a refinement sampler's options carry them
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


def sampler_options(sampler) -> dict:
    """The keyword arguments `sampler` was built with, read back from its same-named attributes."""
    names = [n for n in inspect.signature(type(sampler).__init__).parameters if n != "self"]
    missing = [n for n in names if not hasattr(sampler, n)]
    if missing:
        raise TypeError(f"{type(sampler).__name__} must keep its init arguments {missing} as attributes")
    return {n: getattr(sampler, n) for n in names}


def with_overrides(sampler, overrides: Mapping | None):
    """`sampler` itself without overrides, else a new sampler of its arguments updated with `overrides`."""
    if not overrides:
        return sampler
    from grn_lightning.generator.sampling.mask_decoding import MaskDecodingSampler

    options = {"decoding": "mask" if isinstance(sampler, MaskDecodingSampler) else "refine", **sampler_options(sampler)}
    return build_sampler(merge_sampling(options, overrides))
