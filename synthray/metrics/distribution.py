"""Distribution metrics of a synthetic set against the real training set, on each configured feature encoder.

Per encoder: precision, recall, density and coverage (Naeem et al., 2020; exact, chunked: `prdc.py`), globally
and per class, and the Fréchet distance (`fd.py`). Density ~1 and high coverage mean the synthetic set sits on
the real manifold and spans it. The first encoder's values are also the unprefixed columns (density, coverage,
precision, recall, fd); every encoder's are `<encoder>_<metric>`.

What is compared (`metrics`): each set's rows sampled by `max_samples` (null: all of them), pooled over classes;
with `equal_counts` the larger side is cut to the smaller one's count by a seeded random subset, as the study cuts
both file lists to `min_len` (image_dist/calc.py); distances are `distance` (euclidean | cosine, the study's).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from synthray.metrics.fd import fd
from synthray.metrics.prdc import METRICS, prdc, prdc_per_class

FeatureSets = Mapping[str, tuple[np.ndarray, np.ndarray]]  # encoder -> (features (N, D), labels (N,))

def equal_subsets(n_real: int, n_fake: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Row indices (sorted) that cut both sides to min(n_real, n_fake): all rows of the smaller side, a seeded
    random subset of the larger one. The same for every encoder, whose feature rows come in one id order."""
    n = min(n_real, n_fake)
    rng = np.random.default_rng(seed)

    def pick(total: int) -> np.ndarray:
        return np.arange(total) if total == n else np.sort(rng.choice(total, n, replace=False))

    return pick(n_real), pick(n_fake)


def distribution_metrics(metrics: Mapping[str, Any], seed: int, real_features: FeatureSets, fake_features: FeatureSets) -> dict[str, Any]:
    """Result columns for a synthetic set against the real set, from their feature sets ({encoder: (features
    (N, D), labels (N,))}, encoders in the sweep's order: `features.features`). `metrics`: the metrics section
    (prdc_k, distance, equal_counts, per_class); `seed` cuts the larger side to the smaller one's count."""
    k, distance = int(metrics["prdc_k"]), str(metrics.get("distance", "euclidean"))
    row: dict[str, Any] = {}
    for i, name in enumerate(real_features):
        (real_x, real_y), (fake_x, fake_y) = real_features[name], fake_features[name]
        if metrics.get("equal_counts", False):
            keep_real, keep_fake = equal_subsets(len(real_x), len(fake_x), int(seed))
            real_x, real_y, fake_x, fake_y = real_x[keep_real], real_y[keep_real], fake_x[keep_fake], fake_y[keep_fake]
        values = dict(prdc(real_x, fake_x, k=k, distance=distance), fd=fd(real_x, fake_x))
        row.update({f"{name}_{metric}": v for metric, v in values.items()})
        if metrics.get("per_class"):
            per_class = prdc_per_class(real_x, real_y, fake_x, fake_y, k=k, distance=distance)
            row[f"{name}_per_class"] = {m: {str(c): v for c, v in per_class[m].items()} for m in METRICS}
            row.update({f"{name}_{m}_macro": per_class["macro"][m] for m in METRICS})
        if i == 0:
            row.update(values)
    return row
