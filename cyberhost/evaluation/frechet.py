"""Fréchet distance between Gaussians fitted to feature sets (the math of FID and FVD).

``d² = ‖μ₁ − μ₂‖² + Tr(Σ₁ + Σ₂ − 2 (Σ₁ Σ₂)^{1/2})``. The trace of the matrix square root is the
sum of the square roots of the eigenvalues of ``Σ₁ Σ₂`` (real and non-negative for two PSD
matrices; tiny negative/imaginary parts from round-off are dropped), which avoids the
``sqrtm`` iterations and their failure on singular covariances. Computed in float64.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["FeatureStats", "frechet_distance"]


def frechet_distance(mu1: torch.Tensor, sigma1: torch.Tensor, mu2: torch.Tensor, sigma2: torch.Tensor) -> float:
    """Squared Fréchet distance between ``N(mu1, sigma1)`` and ``N(mu2, sigma2)``.

    Args:
        mu1: ``(D,)`` mean of the first set.
        sigma1: ``(D, D)`` covariance of the first set.
        mu2: ``(D,)`` mean of the second set.
        sigma2: ``(D, D)`` covariance of the second set.

    Returns:
        The distance as a Python float.
    """
    mu1, mu2, sigma1, sigma2 = (torch.as_tensor(t, dtype=torch.float64) for t in (mu1, mu2, sigma1, sigma2))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != (mu1.numel(), mu1.numel()):
        raise ValueError(
            f"shape mismatch: mu {tuple(mu1.shape)}/{tuple(mu2.shape)}, sigma {tuple(sigma1.shape)}/{tuple(sigma2.shape)}"
        )
    eig = torch.linalg.eigvals(sigma1 @ sigma2)
    trace_sqrt = eig.real.clamp_min(0).sqrt().sum()
    diff = (mu1 - mu2).square().sum()
    return float(diff + sigma1.trace() + sigma2.trace() - 2 * trace_sqrt)


class FeatureStats:
    """Running mean and covariance of feature vectors (float64 sums, unbiased covariance)."""

    def __init__(self, dim: int) -> None:
        """Start empty.

        Args:
            dim: feature dimension D.
        """
        self.dim = dim
        self.count = 0
        self._sum = torch.zeros(dim, dtype=torch.float64)
        self._outer = torch.zeros(dim, dim, dtype=torch.float64)

    def update(self, features: torch.Tensor | np.ndarray) -> None:
        """Add ``(N, D)`` features."""
        feats = torch.as_tensor(features, dtype=torch.float64).reshape(-1, self.dim)
        self.count += feats.shape[0]
        self._sum += feats.sum(0)
        self._outer += feats.T @ feats

    def mean_cov(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean ``(D,)`` and unbiased covariance ``(D, D)``.

        Raises:
            ValueError: fewer than two samples were added.
        """
        if self.count < 2:
            raise ValueError(f"need at least 2 feature vectors for a covariance, got {self.count}")
        mean = self._sum / self.count
        cov = (self._outer - self.count * torch.outer(mean, mean)) / (self.count - 1)
        return mean, cov

    def distance(self, other: FeatureStats) -> float:
        """Fréchet distance between this set and ``other``."""
        return frechet_distance(*self.mean_cov(), *other.mean_cov())
