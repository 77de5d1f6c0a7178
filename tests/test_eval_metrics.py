"""Frechet distance, Inception Score, PSNR / SSIM, reference statistics; streaming and two-rank sync."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
import scipy.linalg
import torch

import grn_lightning  # noqa: F401
from grn_lightning.eval.metrics import (
    FrechetDistance,
    InceptionScore,
    frechet_distance,
    load_reference_stats,
    psnr_per_image,
    save_reference_stats,
    ssim_per_image,
)


def _features(seed: int, n: int = 600, d: int = 48, shift: float = 0.0, scale: float = 1.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    mixing = rng.normal(size=(d, d)) / math.sqrt(d)  # correlated features, like real embeddings
    return rng.normal(size=(n, d)) @ mixing * scale + shift


def _stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return x.mean(0), np.cov(x, rowvar=False)


def _scipy_frechet(a: np.ndarray, b: np.ndarray) -> float:
    (mu1, s1), (mu2, s2) = _stats(a), _stats(b)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


@pytest.mark.parametrize("shift,scale", [(0.0, 1.0), (0.3, 1.0), (-0.2, 1.7)])
def test_frechet_matches_pytorch_fid_and_scipy(shift, scale):
    from pytorch_fid.fid_score import calculate_frechet_distance

    a, b = _features(0), _features(1, n=500, shift=shift, scale=scale)
    ours = frechet_distance(*_stats(a), *_stats(b))
    reference = calculate_frechet_distance(*_stats(a), *_stats(b))
    assert ours == pytest.approx(reference, rel=1e-6)
    assert ours == pytest.approx(_scipy_frechet(a, b), rel=1e-6)


def test_frechet_of_a_set_against_itself_is_zero():
    a = _features(3)
    assert abs(frechet_distance(*_stats(a), *_stats(a))) < 1e-8
    metric = FrechetDistance(a.shape[1])
    metric.update(torch.from_numpy(a))
    metric.update(torch.from_numpy(a), real=True)
    assert abs(float(metric.compute())) < 1e-8


def test_streaming_batches_equal_one_shot():
    a, b = _features(4), _features(5, shift=0.5)
    metric = FrechetDistance(a.shape[1])
    for chunk in np.array_split(a, 7):  # uneven batch sizes, float32 inputs as from a network
        metric.update(torch.from_numpy(chunk).float())
    for chunk in np.array_split(b, 3):
        metric.update(torch.from_numpy(chunk).float(), real=True)
    mu, sigma = metric.statistics()
    a32 = a.astype(np.float32).astype(np.float64)
    np.testing.assert_allclose(mu, a32.mean(0), rtol=0, atol=1e-12)
    np.testing.assert_allclose(sigma, np.cov(a32, rowvar=False), rtol=0, atol=1e-10)
    expected = frechet_distance(*_stats(a32), *_stats(b.astype(np.float32).astype(np.float64)))
    assert float(metric.compute()) == pytest.approx(expected, rel=1e-9)


def test_reference_stats_roundtrip_and_fixed_reference(tmp_path):
    a, b = _features(6), _features(7, shift=0.2)
    path = tmp_path / "ref.npz"
    save_reference_stats(path, *_stats(b))
    with np.load(path) as data:  # pytorch-fid reads exactly these keys
        assert set(data.files) == {"mu", "sigma"}
    mu, sigma = load_reference_stats(path)
    np.testing.assert_array_equal(mu, _stats(b)[0])
    metric = FrechetDistance(a.shape[1], reference_stats=str(path))
    metric.update(torch.from_numpy(a))
    assert float(metric.compute()) == pytest.approx(frechet_distance(*_stats(a), *_stats(b)), rel=1e-12)
    with pytest.raises(ValueError, match="reference"):
        metric.update(torch.from_numpy(a), real=True)
    with pytest.raises(ValueError, match="features"):
        FrechetDistance(16, reference_stats=str(path))
    with pytest.raises(FileNotFoundError, match="fid_stats"):
        load_reference_stats(tmp_path / "missing.npz")


def test_too_few_samples_is_a_clear_error():
    metric = FrechetDistance(4)
    metric.update(torch.zeros(1, 4))
    metric.update(torch.zeros(5, 4), real=True)
    with pytest.raises(ValueError, match="at least 2 fake"):
        metric.compute()


def test_inception_score_on_known_logits():
    # Confident, evenly spread predictions over k classes: IS = k exactly (KL = log k for every sample).
    k = 8
    logits = torch.full((4 * k, 1008), -1e4)
    logits[torch.arange(4 * k), torch.arange(4 * k) % k] = 0.0
    metric = InceptionScore(splits=2)
    metric.update(logits[:10])
    metric.update(logits[10:])
    mean, std = metric.compute()
    assert float(mean) == pytest.approx(k, rel=1e-9) and float(std) == pytest.approx(0.0, abs=1e-9)
    # Identical predictions everywhere: IS = 1.
    same = InceptionScore(splits=1)
    same.update(torch.randn(1, 1008).repeat(16, 1))
    assert float(same.compute()[0]) == pytest.approx(1.0, abs=1e-9)


def test_inception_score_matches_direct_formula():
    logits = torch.randn(40, 1008, generator=torch.Generator().manual_seed(0)) * 3
    metric = InceptionScore(splits=4)
    metric.update(logits)
    probs = torch.softmax(logits.double(), 1).numpy()
    scores = []
    for part in np.split(probs, 4):
        py = part.mean(0, keepdims=True)
        scores.append(np.exp((part * (np.log(part) - np.log(py))).sum(1).mean()))
    mean, std = metric.compute()
    assert float(mean) == pytest.approx(np.mean(scores), rel=1e-9)
    assert float(std) == pytest.approx(np.std(scores), rel=1e-6)


def test_psnr_and_ssim_exact_values():
    real = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 1.6 - 0.8
    fake = real + 0.1  # 0.05 on the [0, 1] scale: MSE 0.0025, PSNR = 10 log10(400)
    np.testing.assert_allclose(psnr_per_image(fake, real).numpy(), [10 * math.log10(400)] * 3, rtol=1e-5)
    assert torch.allclose(ssim_per_image(real, real), torch.ones(3), atol=1e-6)
    from torchmetrics.functional.image import structural_similarity_index_measure

    expected = structural_similarity_index_measure((fake + 1) / 2, (real + 1) / 2, data_range=1.0)
    assert float(ssim_per_image(fake, real).mean()) == pytest.approx(float(expected), rel=1e-6)


# ---- two ranks (gloo): sums reduce to the one-shot value -------------------------------------------------


def _two_rank_worker(rank: int, port: int, out_dir: str) -> None:
    import torch.distributed as dist

    import grn_lightning  # noqa: F401,F811

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        a, b = _features(10), _features(11, shift=0.4)
        fd = FrechetDistance(a.shape[1])
        # Uneven split: rank 0 holds 2/3 of the fake set and none of the real set.
        cut = 2 * len(a) // 3
        fd.update(torch.from_numpy(a[:cut] if rank == 0 else a[cut:]))
        if rank == 1:
            fd.update(torch.from_numpy(b), real=True)
        logits = torch.from_numpy(_features(12, n=40, d=1008))
        score = InceptionScore(splits=1)
        score.update(logits[:25] if rank == 0 else logits[25:])
        sparse = InceptionScore(splits=1)  # rank 1 holds no samples at all, only an empty block
        sparse.update(logits if rank == 0 else logits[:0])
        result = {"fid": float(fd.compute()), "is": float(score.compute()[0]), "is_sparse": float(sparse.compute()[0])}
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as handle:
            json.dump(result, handle)
    finally:
        dist.destroy_process_group()


@pytest.mark.timeout(180)
def test_two_rank_sync_equals_one_shot(tmp_path, free_port):
    import torch.multiprocessing as mp

    mp.spawn(_two_rank_worker, args=(free_port, str(tmp_path)), nprocs=2, join=True)
    a, b = _features(10), _features(11, shift=0.4)
    expected_fid = frechet_distance(*_stats(a), *_stats(b))
    one_shot = InceptionScore(splits=1)
    one_shot.update(torch.from_numpy(_features(12, n=40, d=1008)))
    for rank in (0, 1):
        result = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert result["fid"] == pytest.approx(expected_fid, rel=1e-9)  # identical on both ranks
        assert result["is"] == pytest.approx(float(one_shot.compute()[0]), rel=1e-6)
        assert result["is_sparse"] == pytest.approx(float(one_shot.compute()[0]), rel=1e-6)
