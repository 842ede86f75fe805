"""The chunked torch PRDC against the `prdc` reference, its invariants, and the per-class split."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from prdc import compute_prdc

from synthray.metrics.prdc import METRICS, prdc, prdc_per_class


def reference(real: np.ndarray, fake: np.ndarray, k: int) -> dict[str, float]:
    return {name: float(v) for name, v in compute_prdc(real_features=real, fake_features=fake, nearest_k=k).items()}


def features(n: int, m: int, d: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """float64 (the reference rounds float32 input's distances to float32, which creates ties) with a shift and
    a wider spread for the fakes, so none of the four metrics is trivially 0 or 1."""
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, d)), 1.2 * rng.normal(size=(m, d)) + 0.3


def assert_close(ours: dict[str, float], ref: dict[str, float]) -> None:
    assert set(ours) == set(METRICS)
    for name in METRICS:
        assert abs(ours[name] - ref[name]) <= 1e-6, (name, ours, ref)


@pytest.mark.parametrize("n, m, d, k, chunk", [
    (50, 200, 2, 1, 4096),
    (200, 50, 16, 3, 4096),
    (200, 1000, 128, 5, 4096),
    (1000, 200, 2, 10, 4096),
    (1000, 1000, 16, 5, 4096),
    (50, 50, 128, 10, 4096),
    (200, 1000, 16, 3, 37),     # chunk smaller than both sets, and not dividing either
    (1000, 50, 128, 10, 64),
])
def test_matches_reference(n, m, d, k, chunk):
    real, fake = features(n, m, d, seed=n + m + d + k)
    assert_close(prdc(real, fake, k=k, chunk=chunk), reference(real, fake, k))


def test_chunking_does_not_change_the_result():
    real, fake = features(300, 400, 8, seed=1)
    whole = prdc(real, fake, k=5)
    for chunk in (7, 299, 300, 401):
        assert prdc(real, fake, k=5, chunk=chunk) == whole


def test_inputs_torch_and_float32():
    real, fake = features(200, 300, 16, seed=2)
    expected = prdc(real, fake, k=5)
    assert prdc(torch.from_numpy(real), torch.from_numpy(fake), k=5) == expected
    # float32 input is cast to float64 before any arithmetic (the reference instead rounds its float64 distances
    # back to float32, which can tie a distance with a radius: the comparison tests use float64 features).
    r32, f32 = real.astype(np.float32), fake.astype(np.float32)
    assert prdc(r32, f32, k=5) == prdc(r32.astype(np.float64), f32.astype(np.float64), k=5)


def test_set_against_itself():
    x, _ = features(300, 1, 16, seed=3)
    for fake in (x, x.copy()):
        out = prdc(x, fake, k=5, chunk=64)
        assert out["precision"] == out["recall"] == out["coverage"] == 1.0
        assert out["density"] == pytest.approx(1.0, abs=1e-12)  # each point holds exactly k others strictly inside


def test_far_shifted_copy():
    x, _ = features(300, 1, 16, seed=4)
    assert prdc(x, x + 100.0, k=5) == dict.fromkeys(METRICS, 0.0)


def test_k_bounds():
    real, fake = features(20, 30, 4, seed=5)
    with pytest.raises(ValueError, match="k < number of samples"):
        prdc(real, fake, k=20)
    with pytest.raises(ValueError, match="k < number of samples"):
        prdc(fake, real, k=25)
    with pytest.raises(ValueError):
        prdc(real, fake, k=0)
    # k = N - 1 is defined (the farthest other point); the reference's argpartition refuses it, we do not.
    assert prdc(real, fake, k=19)["coverage"] == 1.0
    with pytest.raises(ValueError, match="width"):
        prdc(real, fake[:, :3], k=3)


def test_per_class_matches_reference_on_each_subset():
    rng = np.random.default_rng(6)
    real, fake = features(600, 500, 8, seed=6)
    real_labels = rng.integers(0, 3, len(real))
    fake_labels = rng.integers(0, 3, len(fake))
    real_labels[:4] = 3   # class 3: 4 real samples, <= k
    fake_labels[fake_labels == 0] = 1
    fake_labels[:20] = 4  # class 0 absent from fake; class 4 absent from real
    out = prdc_per_class(real, real_labels, fake, fake_labels, k=5, chunk=50)
    assert set(out) == {*METRICS, "macro"}
    for name in METRICS:
        assert list(out[name]) == [0, 1, 2, 3, 4]
        assert out[name][0] is out[name][3] is out[name][4] is None
    for c in (1, 2):
        ours = {name: out[name][c] for name in METRICS}
        assert_close(ours, reference(real[real_labels == c], fake[fake_labels == c], 5))
    for name in METRICS:
        assert out["macro"][name] == pytest.approx((out[name][1] + out[name][2]) / 2)


def test_per_class_torch_inputs_and_no_valid_class():
    real, fake = features(40, 40, 4, seed=7)
    labels = np.repeat(np.arange(4), 10)
    a = prdc_per_class(real, labels, fake, labels, k=3)
    t = torch.from_numpy
    b = prdc_per_class(t(real), t(labels), t(fake), t(labels), k=3)
    assert a == b
    empty = prdc_per_class(real, labels, fake, labels, k=10)
    assert empty["macro"] == dict.fromkeys(METRICS)


def test_float32_dtype_close_to_float64_despite_an_offset():
    # Features far from the origin (as network features can be): uncentred, the float32 expansion moves the
    # metrics by ~0.02 here; centred, allow a couple of near-tie flips (each moves a metric by 1/1000).
    real, fake = features(1000, 1000, 64, seed=8)
    real, fake = real + 1000.0, fake + 1000.0
    exact, fast = prdc(real, fake, k=5), prdc(real, fake, k=5, dtype=torch.float32)
    for name in METRICS:
        assert abs(exact[name] - fast[name]) <= 2 / 1000 + 1e-12, (name, exact, fast)


# --- Cosine distance, the study's (issue 12, item 2) ---------------------------------------------------------------


def study_prdc(real_features: np.ndarray, fake_features: np.ndarray, nearest_k: int) -> dict[str, float]:
    """image_dist/prdc.py of the study, verbatim but for the print: the `prdc` package with sklearn's cosine
    pairwise distances (n_jobs=16, so sklearn's threaded path, which leaves the self-distances as computed)."""
    import sklearn.metrics

    def compute_pairwise_distance(data_x, data_y=None):
        if data_y is None:
            data_y = data_x
        return sklearn.metrics.pairwise_distances(data_x, data_y, metric='cosine', n_jobs=16)

    def get_kth_value(unsorted, k, axis=-1):
        indices = np.argpartition(unsorted, k, axis=axis)[..., :k]
        k_smallests = np.take_along_axis(unsorted, indices, axis=axis)
        return k_smallests.max(axis=axis)

    def compute_nearest_neighbour_distances(input_features, nearest_k):
        distances = compute_pairwise_distance(input_features)
        return get_kth_value(distances, k=nearest_k + 1, axis=-1)

    real_nearest_neighbour_distances = compute_nearest_neighbour_distances(real_features, nearest_k)
    fake_nearest_neighbour_distances = compute_nearest_neighbour_distances(fake_features, nearest_k)
    distance_real_fake = compute_pairwise_distance(real_features, fake_features)
    precision = (distance_real_fake < np.expand_dims(real_nearest_neighbour_distances, axis=1)).any(axis=0).mean()
    recall = (distance_real_fake < np.expand_dims(fake_nearest_neighbour_distances, axis=0)).any(axis=1).mean()
    density = (1. / float(nearest_k)) * (
        distance_real_fake < np.expand_dims(real_nearest_neighbour_distances, axis=1)).sum(axis=0).mean()
    coverage = (distance_real_fake.min(axis=1) < real_nearest_neighbour_distances).mean()
    values = {"precision": precision, "recall": recall, "density": density, "coverage": coverage}
    return {name: float(v) for name, v in values.items()}


@pytest.mark.parametrize("n, m, d, k, chunk", [
    (50, 200, 3, 1, 4096),
    (200, 50, 16, 3, 4096),
    (300, 700, 64, 5, 4096),
    (700, 300, 8, 10, 4096),
    (300, 700, 64, 5, 37),      # chunk smaller than both sets, and not dividing either
])
def test_cosine_matches_the_studys_sklearn_reference(n, m, d, k, chunk):
    real, fake = features(n, m, d, seed=n + m + d + k)
    real[3] = 0.0  # a zero row: sklearn leaves it zero, at cosine distance 1 from everything
    ref = study_prdc(real, fake, k)
    assert_close(prdc(real, fake, k=k, chunk=chunk, distance="cosine"), ref)
    assert prdc(real, fake, k=k, distance="cosine") != prdc(real, fake, k=k)  # not the euclidean figures


def test_cosine_ignores_length_and_is_exact_against_itself():
    real, fake = features(300, 400, 16, seed=9)
    scale = np.random.default_rng(9).uniform(0.1, 10.0, size=(len(fake), 1))
    # Rescaled rows are the same directions; sklearn's normalise rounds them alike up to an ulp.
    assert_close(prdc(real, fake * scale, k=5, distance="cosine"), prdc(real, fake, k=5, distance="cosine"))
    out = prdc(real, real.copy(), k=5, chunk=64, distance="cosine")
    assert out["precision"] == out["recall"] == out["coverage"] == 1.0
    assert out["density"] == pytest.approx(1.0, abs=1e-12)
    cone = real + 10.0  # every row near the direction (1, ..., 1)
    far = prdc(cone, -cone, k=5, distance="cosine")  # the opposite cone: every distance to a fake is ~2
    assert far == dict.fromkeys(METRICS, 0.0)


def test_cosine_float32_and_per_class():
    real, fake = features(1000, 1000, 64, seed=10)
    exact, fast = prdc(real, fake, k=5, distance="cosine"), prdc(real, fake, k=5, distance="cosine", dtype=torch.float32)
    for name in METRICS:
        assert abs(exact[name] - fast[name]) <= 2 / 1000 + 1e-12, (name, exact, fast)
    labels_r, labels_f = np.arange(1000) % 2, np.arange(1000) % 2
    out = prdc_per_class(real, labels_r, fake, labels_f, k=5, distance="cosine")
    for c in (0, 1):
        assert_close({name: out[name][c] for name in METRICS}, study_prdc(real[labels_r == c], fake[labels_f == c], 5))
    with pytest.raises(ValueError, match="unknown PRDC distance 'manhattan'"):
        prdc(real, fake, k=5, distance="manhattan")
