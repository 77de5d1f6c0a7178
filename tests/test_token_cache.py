"""TokenCache: a sample seen before is not encoded again, a changed one (flipped) is, labels come back in batch order
as the tokenizer gives them, the byte budget holds; T2XModule uses it for training batches only."""

from __future__ import annotations

import pytest
import torch

from grn_lightning.generator.token_cache import TokenCache
from tests.test_c2i_module import real_images, tokenizer  # noqa: F401  (tokenizer: the C = 16 fixture)
from tests.test_t2x_module import CAPTIONS, tiny_module

pytestmark = pytest.mark.usefixtures("one_thread")


class CountingTokenizer:
    """A stand-in whose labels are worked out by hand: per sample, the pixel sum rounded, in a [1, 2] map. Records
    how many samples each call encoded."""

    def __init__(self, offset: int = 0) -> None:
        self.offset, self.calls = offset, []

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        self.calls.append(len(pixels))
        total = pixels.flatten(1).sum(1).round().long() + self.offset
        return torch.stack([total, total + 1], dim=1)


def samples(count: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(count, 3, 2, 4, 4, generator=torch.Generator().manual_seed(seed))


def expected(pixels: torch.Tensor, offset: int = 0) -> torch.Tensor:
    total = [round(float(sample.sum())) + offset for sample in pixels]
    return torch.tensor([[t, t + 1] for t in total])


def test_only_unseen_samples_are_encoded_and_order_is_kept():
    cache, tok = TokenCache(1 << 20), CountingTokenizer()
    first = samples(4)
    assert torch.equal(cache.tokenize(first, tok), expected(first)) and tok.calls == [4]
    # two seen samples, one new one, and a seen one flipped left-right (other bytes: a new input)
    new, flipped = samples(1, seed=1), first[1:2].flip(-1)
    mixed = torch.cat([first[2:3], new, first[0:1], flipped])
    labels = cache.tokenize(mixed, tok)
    assert tok.calls == [4, 2]  # the new and the flipped sample, in one call
    assert labels.dtype == torch.int64 and torch.equal(labels, expected(mixed))
    assert (cache.hits, cache.misses, len(cache)) == (2, 6, 6)
    # all seen: no call at all
    assert torch.equal(cache.tokenize(mixed.flip(0), tok), expected(mixed.flip(0))) and tok.calls == [4, 2]


def test_the_byte_budget_holds_and_over_it_samples_are_still_answered():
    # labels 0..255 are stored as uint8: 2 bytes a sample, so 5 bytes hold two samples
    cache, tok = TokenCache(5), CountingTokenizer()
    pixels = samples(3)
    assert torch.equal(cache.tokenize(pixels, tok), expected(pixels))
    assert len(cache) == 2 and cache.stored_bytes == 4
    assert torch.equal(cache.tokenize(pixels, tok), expected(pixels))
    assert tok.calls == [3, 1]  # the third sample, never stored, is encoded again


def test_rows_of_different_stored_dtypes_come_back_together():
    cache = TokenCache(1 << 20)
    small, large = samples(2), samples(2, seed=5)
    cache.tokenize(small, CountingTokenizer())  # labels < 256: uint8
    cache.tokenize(large, CountingTokenizer(offset=1000))  # labels > 255: int16
    assert {row.dtype for row in cache._labels.values()} == {torch.uint8, torch.int16}
    both = torch.cat([large[:1], small[:1]])
    out = cache.tokenize(both, CountingTokenizer(offset=-10**6))  # never called: both are cached
    assert torch.equal(out, torch.cat([expected(large[:1], 1000), expected(small[:1])]))


def test_a_non_positive_budget_is_refused():
    with pytest.raises(ValueError, match="positive byte budget"):
        TokenCache(0)
    with pytest.raises(ValueError, match="token_cache_mib must be >= 0"):
        tiny_module(token_cache_mib=-1)


def test_t2x_training_batches_are_encoded_once_and_evaluation_always(tokenizer):  # noqa: F811
    """Real photos through the real frozen HBQ tokenizer: cached labels equal a fresh encoding; a second training
    step on the same photos encodes nothing; evaluation never reads or fills the cache."""
    module = tiny_module(tokenizer=tokenizer, token_cache_mib=1)
    encoded = []
    original = tokenizer.tokenize
    tokenizer.tokenize = lambda pixels: (encoded.append(len(pixels)), original(pixels))[1]
    try:
        pixels = real_images()
        batch = {"pixels": pixels, "caption": list(CAPTIONS), "valid": torch.ones(len(pixels), dtype=torch.bool)}
        module.train()
        first = module.index_labels(batch)
        again = module.index_labels(batch)
        assert encoded == [len(pixels)]
        assert torch.equal(first, again) and torch.equal(first, original(pixels.float()))
        module.eval()
        module.index_labels(batch)
        assert encoded == [len(pixels)] * 2 and module.token_cache.hits == len(pixels)
    finally:
        tokenizer.tokenize = original
    assert tiny_module(tokenizer=tokenizer).token_cache is None  # off by default
