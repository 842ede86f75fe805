"""Fréchet distance: closed forms for Gaussians whose covariances commute, and sample estimates of them."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import linalg

from synthray.metrics.fd import fd, feature_stats, frechet_distance

D = 8


def closed_form(mu1: np.ndarray, eig1: np.ndarray, mu2: np.ndarray, eig2: np.ndarray) -> float:
    """FD when both covariances are diagonal in one basis, with eigenvalues eig1, eig2 (D,) in that basis."""
    return float(((mu1 - mu2) ** 2).sum() + (eig1 + eig2 - 2 * np.sqrt(eig1 * eig2)).sum())


def gaussians(rotate: bool):
    """Two Gaussians (mu, covariance, eigenvalues, basis): diagonal, or sharing a random rotation (commuting)."""
    rng = np.random.default_rng(0)
    q = np.linalg.qr(rng.normal(size=(D, D)))[0] if rotate else np.eye(D)
    mu1, mu2 = rng.normal(size=D), rng.normal(size=D)
    eig1, eig2 = rng.uniform(0.2, 3.0, D), rng.uniform(0.2, 3.0, D)
    return [(mu, (q * e) @ q.T, e, q) for mu, e in ((mu1, eig1), (mu2, eig2))]


@pytest.mark.parametrize("rotate", [False, True])
def test_exact_parameters_match_closed_form(rotate):
    (mu1, s1, e1, _), (mu2, s2, e2, _) = gaussians(rotate)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(closed_form(mu1, e1, mu2, e2), abs=1e-8)
    assert frechet_distance(mu1, s1, mu1, s1) == pytest.approx(0.0, abs=1e-10)


@pytest.mark.parametrize("rotate", [False, True])
def test_samples_match_closed_form(rotate):
    (mu1, _, e1, q), (mu2, _, e2, _) = gaussians(rotate)
    rng = np.random.default_rng(1)
    n = 200_000
    x1 = mu1 + (rng.normal(size=(n, D)) * np.sqrt(e1)) @ q.T
    x2 = mu2 + (rng.normal(size=(n, D)) * np.sqrt(e2)) @ q.T
    expected = closed_form(mu1, e1, mu2, e2)
    # The FD is ~20; its sampling error at n = 200k has std ~0.05 here (mostly 2 (mu1 - mu2).(error of the
    # means)), measured over seeds, so 0.25 is ~5 sigma while a wrong formula is off by units.
    assert fd(x1, x2) == pytest.approx(expected, abs=0.25)
    assert fd(torch.from_numpy(x1), x2) == fd(x1, x2)


def test_set_with_itself_is_zero():
    x = np.random.default_rng(2).normal(size=(500, 32)) @ np.random.default_rng(3).normal(size=(32, 32))
    assert fd(x, x) == pytest.approx(0.0, abs=1e-9)
    few = x[:10]  # 10 samples in 32-d: a singular covariance, where plain sqrtm(S1 S2) goes complex
    assert fd(few, few) == pytest.approx(0.0, abs=1e-6)


def test_agrees_with_sqrtm_formula():
    rng = np.random.default_rng(4)
    a, b = rng.normal(size=(2000, 16)), rng.normal(size=(3000, 16)) @ rng.normal(size=(16, 16))
    (mu1, s1), (mu2, s2) = feature_stats(a), feature_stats(b)
    covmean = linalg.sqrtm(s1 @ s2).real
    standard = ((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(standard, rel=1e-9)


def test_feature_stats_shapes_and_errors():
    x = np.random.default_rng(5).normal(size=(50, 3)).astype(np.float32)
    mu, sigma = feature_stats(x)
    assert mu.shape == (3,) and sigma.shape == (3, 3) and mu.dtype == sigma.dtype == np.float64
    assert feature_stats(x[:, :1])[1].shape == (1, 1)
    with pytest.raises(ValueError):
        feature_stats(x[:1])
    with pytest.raises(ValueError):
        frechet_distance(mu, sigma, mu[:2], sigma[:2, :2])
