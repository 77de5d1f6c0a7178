"""Streaming, rank-synchronised metrics (SPEC section 7): Frechet distance (FID / rFID / FVD), Inception Score,
per-frame PSNR / SSIM, reference statistics files.

The metrics take features, not images: the frozen feature networks live in the callbacks
(``eval/features.py``, ``eval/i3d.py``) so a metric object stays small, picklable and network-free.
"""

from __future__ import annotations

import os

import numpy as np
import torch
from torchmetrics import Metric

__all__ = [
    "FrechetDistance",
    "InceptionScore",
    "frechet_distance",
    "load_reference_stats",
    "psnr_per_image",
    "save_reference_stats",
    "ssim_per_image",
]


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """d^2 = |mu1 - mu2|^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)), in float64.

    Tr((S1 S2)^(1/2)) is the sum of square roots of the eigenvalues of S1 S2. With a pivoted Cholesky factor
    S1 = A A^T (LAPACK pstrf, exact for rank-deficient S1, e.g. fewer samples than features), those are the
    eigenvalues of the symmetric PSD matrix A^T S2 A. One factorisation and one symmetric eigenvalue solve
    replace pytorch-fid's non-symmetric ``scipy.linalg.sqrtm`` (much slower at 2048-d, and it needs an
    imaginary-part workaround); the two agree to ~1e-9 relative.
    """
    from scipy.linalg import lapack

    mu1, mu2 = (np.asarray(m, dtype=np.float64).reshape(-1) for m in (mu1, mu2))
    s1, s2 = (np.asarray(s, dtype=np.float64) for s in (sigma1, sigma2))
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.size, mu1.size):
        raise ValueError(
            f"Frechet distance needs matching statistics, got mu {mu1.shape} / {mu2.shape}, "
            f"sigma {s1.shape} / {s2.shape}"
        )
    s1, s2 = (s1 + s1.T) / 2, (s2 + s2.T) / 2
    factor, pivots, rank, info = lapack.dpstrf(s1, lower=1)  # P^T S1 P = L L^T, rank-revealing
    if info < 0:
        raise ValueError(f"pivoted Cholesky failed (LAPACK info {info})")
    a = np.empty((s1.shape[0], rank))
    a[pivots - 1] = np.tril(factor)[:, :rank]  # S1 = A A^T
    a_t = torch.from_numpy(a)
    middle = a_t.T @ torch.from_numpy(s2) @ a_t
    trace_sqrt = torch.linalg.eigvalsh((middle + middle.T) / 2).clamp_min(0).sqrt().sum().item()
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * trace_sqrt)


def load_reference_stats(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """``mu`` / ``sigma`` from an ``.npz`` (pytorch-fid stats files and ADM reference batches both use them)."""
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"reference statistics {path} not found; compute them with `python tools/fid_stats.py` "
            f"or use the ADM / JiT ImageNet-256 reference .npz (SPEC section 7)"
        )
    with np.load(path) as data:
        if "mu" not in data or "sigma" not in data:
            raise KeyError(f"{path} has keys {sorted(data.files)}; expected 'mu' and 'sigma'")
        return data["mu"].astype(np.float64), data["sigma"].astype(np.float64)


def save_reference_stats(path: str | os.PathLike, mu, sigma, **extra) -> None:
    """Write ``mu`` / ``sigma`` (float64) plus optional extra arrays, readable by pytorch-fid."""
    np.savez(path, mu=np.asarray(mu, dtype=np.float64), sigma=np.asarray(sigma, dtype=np.float64), **extra)


class FrechetDistance(Metric):
    """Frechet distance between a generated feature set and a real set or fixed reference statistics.

    Each set is kept as running float64 sums (n, sum x, sum x x^T) reduced with ``sum`` across ranks, so the
    result does not depend on how samples were split over batches or ranks, and memory is O(D^2) whatever the
    sample count. The covariance is the unbiased one (``np.cov``), as in pytorch-fid.

    Args:
        num_features: feature width (2048 for Inception pool3, 400 for I3D logits).
        reference_stats: ``.npz`` with ``mu``/``sigma`` to compare against; when None the real set is
            accumulated with ``update(features, real=True)`` (rFID, rFVD).
    """

    full_state_update = False
    higher_is_better = False
    is_differentiable = False

    def __init__(self, num_features: int, reference_stats: str | None = None, **kwargs):
        super().__init__(**kwargs)
        if num_features < 1:
            raise ValueError(f"FrechetDistance num_features must be >= 1, got {num_features}")
        self.num_features = num_features
        sets = ("fake",) if reference_stats else ("fake", "real")
        for name in sets:
            self.add_state(f"{name}_n", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
            self.add_state(f"{name}_sum", torch.zeros(num_features, dtype=torch.float64), dist_reduce_fx="sum")
            self.add_state(
                f"{name}_outer", torch.zeros(num_features, num_features, dtype=torch.float64), dist_reduce_fx="sum"
            )
        self.reference: tuple[np.ndarray, np.ndarray] | None = None
        if reference_stats:
            self.reference = load_reference_stats(reference_stats)
            if self.reference[0].shape != (num_features,):
                raise ValueError(
                    f"reference statistics {reference_stats} have {self.reference[0].shape[0]} features, "
                    f"the metric was built for {num_features}"
                )

    def update(self, features: torch.Tensor, real: bool = False) -> None:
        if real and self.reference is not None:
            raise ValueError("FrechetDistance has fixed reference statistics; real features cannot be added")
        if features.ndim != 2 or features.shape[1] != self.num_features:
            raise ValueError(f"features must be [N, {self.num_features}], got {tuple(features.shape)}")
        x = features.detach().to(torch.float64)
        prefix = "real" if real else "fake"
        setattr(self, f"{prefix}_n", getattr(self, f"{prefix}_n") + x.shape[0])
        setattr(self, f"{prefix}_sum", getattr(self, f"{prefix}_sum") + x.sum(0))
        setattr(self, f"{prefix}_outer", getattr(self, f"{prefix}_outer") + x.T @ x)

    def statistics(self, real: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """(mu, sigma) of the accumulated set, after syncing when called through ``compute``."""
        prefix = "real" if real else "fake"
        n = float(getattr(self, f"{prefix}_n"))
        if n < 2:
            raise ValueError(f"Frechet distance needs at least 2 {prefix} samples, got {int(n)}")
        total, outer = getattr(self, f"{prefix}_sum"), getattr(self, f"{prefix}_outer")
        mu = total / n
        sigma = (outer - n * torch.outer(mu, mu)) / (n - 1)
        return mu.cpu().numpy(), sigma.cpu().numpy()

    def compute(self) -> torch.Tensor:
        mu_fake, sigma_fake = self.statistics(real=False)
        mu_real, sigma_real = self.reference if self.reference is not None else self.statistics(real=True)
        return torch.tensor(frechet_distance(mu_fake, sigma_fake, mu_real, sigma_real), dtype=torch.float64)


class InceptionScore(Metric):
    """Inception Score exp(E_x KL(p(y|x) || p(y))), mean and std over ``splits`` equal chunks.

    Logits are gathered from all ranks (IS is not a sum statistic). The splits (10 over 50,000 samples in the
    reference evaluators, which read the samples in generation order) follow the global sample numbers passed to
    ``update``, so the score does not depend on how the samples were spread over ranks; rows given without
    numbers keep the gathered order.

    Args:
        splits: number of chunks the score is averaged over.
    """

    full_state_update = False
    higher_is_better = True
    is_differentiable = False

    def __init__(self, splits: int = 10, **kwargs):
        super().__init__(**kwargs)
        if splits < 1:
            raise ValueError(f"InceptionScore splits must be >= 1, got {splits}")
        self.splits = splits
        self.add_state("logits", [], dist_reduce_fx="cat")
        self.add_state("index", [], dist_reduce_fx="cat")  # gathered in the same rank order as the logits

    def update(self, logits: torch.Tensor, index: torch.Tensor | None = None) -> None:
        """logits: [N, classes]; index: int [N] global sample numbers (None: -1, i.e. arrival order)."""
        if index is None:
            index = torch.full((logits.shape[0],), -1, dtype=torch.long)
        if index.shape != (logits.shape[0],):
            raise ValueError(f"index must be [N] for logits {tuple(logits.shape)}, got {tuple(index.shape)}")
        self.logits.append(logits.detach().float())
        self.index.append(index.to(device=logits.device, dtype=torch.long))

    def compute(self) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.logits if isinstance(self.logits, torch.Tensor) else torch.cat(self.logits)
        index = self.index if isinstance(self.index, torch.Tensor) else torch.cat(self.index)
        logits = logits[index.argsort(stable=True)]  # rank blocks -> global sample order (stable: -1 rows keep theirs)
        if logits.shape[0] < self.splits:
            raise ValueError(f"InceptionScore needs at least splits={self.splits} samples, got {logits.shape[0]}")
        probs = logits.double().softmax(dim=1)
        scores = []
        for chunk in probs.chunk(self.splits):
            marginal = chunk.mean(0, keepdim=True)
            kl = (chunk * (chunk.clamp_min(1e-30).log() - marginal.clamp_min(1e-30).log())).sum(1).mean()
            scores.append(kl.exp())
        scores = torch.stack(scores)
        return scores.mean(), scores.std(unbiased=False)


def psnr_per_image(fake: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """PSNR in dB per image on [0, 1] (inputs in [-1, 1], [N, 3, H, W]); SPEC section 7: per frame, averaged."""
    fake01, real01 = (fake.float().clamp(-1, 1) + 1) / 2, (real.float().clamp(-1, 1) + 1) / 2
    mse = (fake01 - real01).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(1.0 / mse.clamp_min(1e-10))


def ssim_per_image(fake: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """SSIM per image on [0, 1], 11x11 Gaussian window, sigma 1.5 (inputs in [-1, 1], [N, 3, H, W])."""
    from torchmetrics.functional.image import structural_similarity_index_measure

    fake01, real01 = (fake.float().clamp(-1, 1) + 1) / 2, (real.float().clamp(-1, 1) + 1) / 2
    return structural_similarity_index_measure(
        fake01, real01, gaussian_kernel=True, sigma=1.5, kernel_size=11, data_range=1.0, reduction="none"
    )
