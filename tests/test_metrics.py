import numpy as np

from synthray.metrics.accuracy import top1
from synthray.metrics.distribution import density_coverage


def test_top1():
    logits = np.array([[2.0, 1.0], [0.0, 3.0], [5.0, 0.0]])
    assert top1(np.array([0, 1, 1]), logits) == 2 / 3


def test_density_coverage_invariants():
    rng = np.random.default_rng(0)
    real = rng.normal(size=(300, 16))
    same = density_coverage(real, real.copy(), k=5)
    assert abs(same["coverage"] - 1.0) < 1e-9 and abs(same["density"] - 1.0) < 1e-9
    far = density_coverage(real, real + 100.0, k=5)
    assert far["density"] == 0.0 and far["coverage"] == 0.0
    # A collapsed copy (one real point repeated): dense where it is, but covers almost nothing.
    collapsed = density_coverage(real, np.repeat(real[:1], 300, axis=0), k=5)
    assert collapsed["coverage"] < 0.05
