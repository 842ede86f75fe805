"""Fréchet distance between two feature sets, each summarised by a Gaussian (the FID formula on any features).

  FD = ||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^{1/2})

The trace of the matrix square root is taken from eigenvalues of a symmetric matrix instead of
`scipy.linalg.sqrtm(S1 @ S2)`: with A = S1^{1/2}, S1 S2 = A (A S2 A) A^{-1} is similar to the symmetric PSD matrix
A S2 A, so Tr((S1 S2)^{1/2}) = sum_i sqrt(lambda_i(A S2 A)). That is exact, real, and needs no eps offset when
S1 S2 is singular (fewer samples than dimensions), where sqrtm returns complex or non-finite values.
"""

from __future__ import annotations

import numpy as np
import torch


def _float64(x: np.ndarray | torch.Tensor) -> np.ndarray:
    return x.detach().cpu().double().numpy() if torch.is_tensor(x) else np.asarray(x, dtype=np.float64)


def feature_stats(x: np.ndarray | torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Mean (D,) and unbiased covariance (D, D), in float64, of features x (N, D), N >= 2."""
    x = _float64(x)
    if x.ndim != 2 or len(x) < 2:
        raise ValueError(f"feature_stats needs features of shape (N >= 2, D), got {x.shape}")
    return x.mean(axis=0), np.cov(x, rowvar=False).reshape(x.shape[1], x.shape[1])  # reshape: D = 1 gives a 0-d cov


def _psd_sqrt(s: np.ndarray) -> np.ndarray:
    """Symmetric square root of a PSD matrix (D, D); rounding's tiny negative eigenvalues are taken as 0."""
    w, v = np.linalg.eigh(s)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """Tr((S1 S2)^{1/2}) for PSD S1, S2 (D, D)."""
    a = _psd_sqrt(sigma1)
    m = a @ sigma2 @ a
    w = np.linalg.eigvalsh((m + m.T) / 2)  # symmetrise away the products' rounding before eigvalsh
    return float(np.sqrt(np.clip(w, 0.0, None)).sum())


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """FD of N(mu1 (D,), sigma1 (D, D)) and N(mu2, sigma2); never negative (rounding is clipped at 0)."""
    mu1, mu2 = np.atleast_1d(_float64(mu1)), np.atleast_1d(_float64(mu2))
    sigma1, sigma2 = np.atleast_2d(_float64(sigma1)), np.atleast_2d(_float64(sigma2))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != (len(mu1), len(mu1)):
        raise ValueError(f"mismatched shapes: mu {mu1.shape}, {mu2.shape}; sigma {sigma1.shape}, {sigma2.shape}")
    diff = mu1 - mu2
    value = diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_sqrt_product(sigma1, sigma2)
    return max(float(value), 0.0)


def fd(real: np.ndarray | torch.Tensor, fake: np.ndarray | torch.Tensor) -> float:
    """Fréchet distance between features real (N, D) and fake (M, D)."""
    return frechet_distance(*feature_stats(real), *feature_stats(fake))
