"""umT5 text encoder (SPEC section 5): task tags, token lengths, batch independence, cache, real loading path."""

from __future__ import annotations

import sys

import pytest
import torch

import grn_lightning  # noqa: F401  (torchvision compatibility before transformers)
from grn_lightning.generator.t2x.text import TASK_TAGS, UMT5TextEncoder, tag_caption
from grn_lightning.weights import MissingWeightsError

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = {"d_model": 64, "d_kv": 16, "d_ff": 128, "num_layers": 2, "num_heads": 4, "vocab_size": 384}


def tiny(**kwargs) -> UMT5TextEncoder:
    kwargs.setdefault("dtype", "float32")
    return UMT5TextEncoder(random_init=TINY, **kwargs)


def byte_count(caption: str, task: str = "t2i") -> int:
    """ByT5 tokens of a tagged caption: one per UTF-8 byte, plus EOS."""
    return len(tag_caption(caption, task).encode("utf-8")) + 1


def count_forwards(encoder: UMT5TextEncoder) -> list[int]:
    """Batch size of every encoder forward, recorded by a hook."""
    calls: list[int] = []
    encoder.encoder.register_forward_hook(
        lambda module, args, kwargs, out: calls.append(kwargs["input_ids"].shape[0]), with_kwargs=True
    )
    return calls


def test_tag_caption():
    assert TASK_TAGS == {"t2i": "<T2I>", "t2v": "<T2V>", "i2v": "<I2V>"}
    assert tag_caption("a red fox", "t2i") == "<T2I> a red fox"
    assert tag_caption("waves at dusk ", "t2v") == "<T2V> waves at dusk"
    assert tag_caption("", "i2v") == "<I2V>"
    with pytest.raises(ValueError, match="t2i, t2v, i2v"):
        tag_caption("x", "t2x")


def test_constructor_errors(tmp_path):
    with pytest.raises(ValueError, match="exactly one"):
        UMT5TextEncoder()
    with pytest.raises(ValueError, match="exactly one"):
        UMT5TextEncoder(path=str(tmp_path), random_init=TINY)
    with pytest.raises(ValueError, match="float32, bfloat16, float16"):
        UMT5TextEncoder(random_init=TINY, dtype="fp32")


def test_missing_folder_names_umt5(tmp_path, monkeypatch):
    monkeypatch.setenv("GRN_WEIGHTS", str(tmp_path / "env"))
    with pytest.raises(MissingWeightsError, match="umt5") as err:
        UMT5TextEncoder(path=str(tmp_path / "nowhere"))
    assert "fetch_weights.py" in str(err.value) and str(tmp_path / "nowhere") in str(err.value)


def test_missing_transformers_is_a_clear_import_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)  # makes `import transformers` raise ImportError
    with pytest.raises(ImportError, match=r"pip install 'grn-lightning\[text\]'"):
        tiny()


def test_lengths_width_and_truncation():
    enc = tiny(max_length=32)
    captions = ["", "a cat", "café ☃ in snow", "x" * 100]
    feats = enc.encode(captions)
    assert enc.width == 64
    assert [f.shape for f in feats] == [(min(byte_count(c), 32), 64) for c in captions]
    assert [f.shape[0] for f in feats] == [6, 12, 24, 32]  # multi-byte characters count per byte; 100 x's truncate
    assert all(f.dtype == torch.float32 and torch.isfinite(f).all() for f in feats)
    # The tokenizer's own count of real tokens agrees (truncation keeps EOS as the last token).
    ids = enc.tokenizer([tag_caption("x" * 100, "t2i")], truncation=True, max_length=32)["input_ids"][0]
    assert len(ids) == 32 and ids[-1] == enc.tokenizer.eos_token_id


def test_features_do_not_depend_on_batch_mates():
    enc = tiny(cache_size=0)
    alone = enc.encode(["a small boat"])[0]
    batched = enc.encode(["a much longer caption about a small boat on a lake at sunset " * 4, "a small boat"])[1]
    assert alone.shape == batched.shape
    torch.testing.assert_close(batched, alone, atol=1e-5, rtol=0)


def test_different_captions_and_tasks_differ():
    enc = tiny()
    a, b = enc.encode(["a red fox", "a red box"])
    assert a.shape == b.shape and not torch.allclose(a, b, atol=1e-3)
    t2i, t2v = enc.encode(["a red fox", "a red fox"], task=["t2i", "t2v"])
    torch.testing.assert_close(t2i, a)
    assert not torch.allclose(t2i, t2v, atol=1e-3)
    assert enc.encode([]) == []
    with pytest.raises(ValueError, match="2 tasks for 1 captions"):
        enc.encode(["x"], task=["t2i", "t2v"])
    with pytest.raises(ValueError, match="allowed tasks"):
        enc.encode(["x"], task="c2i")


def test_cache_hits_skip_the_encoder_and_return_equal_copies():
    enc = tiny(cache_size=2)
    calls = count_forwards(enc)
    first = enc.encode(["", "a dog"])
    assert calls == [2]
    again = enc.encode(["a dog", "", "a dog"])
    assert calls == [2]  # all cached: no forward
    torch.testing.assert_close(again[0], first[1], atol=0, rtol=0)
    torch.testing.assert_close(again[1], first[0], atol=0, rtol=0)
    again[0].zero_()  # callers get copies: editing one must not corrupt the cache
    torch.testing.assert_close(enc.encode(["a dog"])[0], first[1], atol=0, rtol=0)
    # Mixed batch: only the uncached caption goes through the encoder, once although it appears twice.
    enc.encode(["a dog", "a cow", "a cow"])
    assert calls == [2, 1]
    # LRU of size 2 holding (a dog, a cow): a hit on "a dog" makes "a cow" the oldest, so adding "" evicts
    # "a cow" (a FIFO would evict "a dog").
    enc.encode(["a dog"])
    # Re-encoded alone, not padded in a batch of two: equal up to float rounding (the matmul shapes differ; bit
    # equality across batch shapes is not promised by the CPU kernels). The forward count below proves the eviction.
    torch.testing.assert_close(enc.encode([""])[0], first[0], atol=1e-5, rtol=1e-4)
    assert calls == [2, 1, 1]
    enc.encode(["a dog"])
    assert calls == [2, 1, 1]
    enc.encode(["a cow"])
    assert calls == [2, 1, 1, 1]


def test_cache_disabled_re_encodes_identically():
    enc = tiny(cache_size=0)
    calls = count_forwards(enc)
    one, two = enc.encode(["a tree"]), enc.encode(["a tree"])
    assert calls == [1, 1]
    torch.testing.assert_close(one[0], two[0], atol=0, rtol=0)


def test_frozen_and_always_eval():
    enc = tiny(cache_size=0)
    assert not any(p.requires_grad for p in enc.parameters())
    enc.train()
    assert not enc.training and not any(m.training for m in enc.modules())
    # Dropout (rate 0.1 in UMT5Config) stays off after .train(): two passes agree exactly.
    torch.testing.assert_close(enc.encode(["a bird"])[0], enc.encode(["a bird"])[0], atol=0, rtol=0)


def test_random_init_is_seeded_and_leaves_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    a, b, c = tiny(), tiny(), tiny(seed=1)
    assert torch.equal(torch.rand(3), expected)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


def test_bfloat16_compute_returns_float32_close_to_float32():
    ref = tiny().encode(["a lighthouse at night"])[0]
    enc = tiny(dtype="bfloat16")
    assert {p.dtype for p in enc.parameters()} == {torch.bfloat16}
    out = enc.encode(["a lighthouse at night"])[0]
    assert out.dtype == torch.float32 and out.shape == ref.shape
    assert (out - ref).norm() / ref.norm() < 0.05


def test_save_and_load_through_path(tmp_path, monkeypatch):
    monkeypatch.setenv("GRN_WEIGHTS", str(tmp_path / "env"))
    src = tiny(max_length=40)
    folder = tmp_path / "umt5-xxl"  # the registered folder name, so the parent directory resolves too
    src.encoder.save_pretrained(folder)
    src.tokenizer.save_pretrained(folder)
    captions = ["a mountain lake", "", "x" * 80]
    want = src.encode(captions, task="t2v")
    for path in (folder, tmp_path):
        loaded = UMT5TextEncoder(path=str(path), dtype="float32", max_length=40)
        assert type(loaded.tokenizer).__name__ == "ByT5Tokenizer" and loaded.width == 64
        got = loaded.encode(captions, task="t2v")
        assert [g.shape[0] for g in got] == [byte_count(captions[0], "t2v"), 6, 40]
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w, atol=0, rtol=0)
