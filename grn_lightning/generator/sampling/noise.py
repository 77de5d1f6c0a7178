"""Counter-based per-request randomness for the refinement sampler, drawn on the device with no generator state.

Every random number of a request is a pure function of (seed, round, step, stream, element index), computed by an
integer hash. A request therefore gets the same draws whatever else shares the batch, in whichever slot it runs, on
any device (integer arithmetic is exact everywhere), and a whole batch of slots draws its noise in a few elementwise
kernels: no per-request generators, no host-to-device copies, no Python loop over requests.

The hash is Chris Wellons' "lowbias32" 32-bit integer mixer (xor-shift / multiply rounds; a bijection on 32 bits with
low avalanche bias). PyTorch has no uint32 arithmetic on every device, so values live in int64 lanes in [0, 2^32) and
the 32-bit products are formed from 16-bit halves of the constant, which keeps every intermediate below 2^49 (exact,
no signed overflow). An element's value is hash(hash(e ^ key_a) ^ key_b) with two keys derived from the counter, so
neighbouring elements and neighbouring counters decorrelate through two full mixing rounds.
"""

from __future__ import annotations

import torch

MASK32 = 0xFFFFFFFF
# streams: which use a draw serves (part of the counter, so the uses never share values)
CATEGORY, KEEP, LABELS, RESTART = 0, 1, 2, 3


def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    """(x · c) mod 2^32 for int64 x in [0, 2^32) and a 32-bit constant c, exact in int64."""
    lo, hi = c & 0xFFFF, c >> 16
    return (x * lo + (((x * hi) & 0xFFFF) << 16)) & MASK32


def hash32(x: torch.Tensor) -> torch.Tensor:
    """lowbias32 on int64 values in [0, 2^32) → int64 values in [0, 2^32)."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def request_keys(seeds: torch.Tensor) -> torch.Tensor:
    """int64 [B] seeds (any int64, e.g. 62-bit) → int64 [B] 32-bit request keys mixing both halves of the seed."""
    lo, hi = seeds & MASK32, (seeds >> 32) & MASK32
    return hash32(hash32(lo ^ 0x68E31DA4) ^ hi)


def _counter_keys(keys: torch.Tensor, rounds: torch.Tensor, steps: torch.Tensor, stream: int):
    # round < 2^12, step < 2^18, stream < 4: one 32-bit counter word per (round, step, stream)
    word = ((rounds & 0xFFF) << 20) | ((steps & 0x3FFFF) << 2) | stream
    key_a = hash32(keys ^ word)
    return key_a, hash32(key_a ^ 0x5BD1E995)


def random_bits(keys: torch.Tensor, rounds: torch.Tensor, steps: torch.Tensor, stream: int, shape) -> torch.Tensor:
    """int64 [B, *shape] uniform 32-bit values for request keys [B] at counters (rounds [B], steps [B], stream)."""
    key_a, key_b = _counter_keys(keys, rounds, steps, stream)
    count = 1
    for s in shape:
        count *= int(s)
    element = torch.arange(count, device=keys.device, dtype=torch.int64).view(1, *shape)
    view = (-1, *([1] * len(shape)))
    return hash32(hash32(element ^ key_a.view(view)) ^ key_b.view(view))


def uniform(keys, rounds, steps, stream: int, shape) -> torch.Tensor:
    """float32 [B, *shape] uniforms in [0, 1) on a 2^-24 grid (the top 24 bits: exact in float32)."""
    return (random_bits(keys, rounds, steps, stream, shape) >> 8).to(torch.float32) * (1.0 / (1 << 24))


def randint(keys, rounds, steps, stream: int, shape, high: int) -> torch.Tensor:
    """int64 [B, *shape] uniform integers in [0, high): ⌊bits · high / 2^32⌋ (unbiased for a power-of-two high)."""
    if not 1 <= high <= 1 << 16:
        raise ValueError(f"randint needs 1 <= high <= 65536, got {high}")
    return (random_bits(keys, rounds, steps, stream, shape) * high) >> 32
