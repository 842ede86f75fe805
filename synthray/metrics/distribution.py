"""Distribution metrics of a synthetic set against the real training set, on each configured feature encoder.

Per encoder: precision, recall, density and coverage (Naeem et al., 2020; exact, chunked: `prdc.py`), globally
and per class, and the Fréchet distance (`fd.py`). Density ~1 and high coverage mean the synthetic set sits on
the real manifold and spans it. The first encoder's values are also the unprefixed columns (density, coverage,
precision, recall, fd); every encoder's are `<encoder>_<metric>`.
"""

from __future__ import annotations

from typing import Any

from synthray.artifacts import DatasetRef
from synthray.metrics.fd import fd
from synthray.metrics.features import encoder_names, features
from synthray.metrics.prdc import METRICS, prdc, prdc_per_class


def distribution_metrics(cfg: Any, real: DatasetRef, fake: DatasetRef) -> dict[str, Any]:
    """Result columns for the synthetic set `fake` against the real set `real`."""
    k = int(cfg.metrics.prdc_k)
    row: dict[str, Any] = {}
    real_features, fake_features = features(cfg, real), features(cfg, fake)
    for i, name in enumerate(encoder_names(cfg)):
        (real_x, real_y), (fake_x, fake_y) = real_features[name], fake_features[name]
        values = dict(prdc(real_x, fake_x, k=k), fd=fd(real_x, fake_x))
        row.update({f"{name}_{metric}": v for metric, v in values.items()})
        if cfg.metrics.per_class:
            per_class = prdc_per_class(real_x, real_y, fake_x, fake_y, k=k)
            row[f"{name}_per_class"] = {m: {str(c): v for c, v in per_class[m].items()} for m in METRICS}
            row.update({f"{name}_{m}_macro": per_class["macro"][m] for m in METRICS})
        if i == 0:
            row.update(values)
    return row
