import numpy as np

from synthray.metrics.accuracy import per_class, top1, topk
from synthray.metrics.distribution import density_coverage


def test_top1_topk_per_class():
    logits = np.array([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0], [5.0, 0.0, 1.0]])
    labels = np.array([0, 1, 2])
    assert top1(labels, logits) == 2 / 3
    assert topk(labels, logits, 2) == 1.0 and topk(labels, logits, 1) == 2 / 3
    assert topk(labels, logits, 5) == 1.0  # k larger than the class count means every class
    assert per_class(labels, logits, 4) == [1.0, 1.0, 0.0, None]


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
