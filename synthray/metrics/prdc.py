"""Precision, recall, density and coverage (Naeem et al., 2020) with chunked nearest neighbours in torch.

Same definitions as the `prdc` package (`prdc.compute_prdc`), but the N x N, M x M and N x M distance matrices
are never held whole: rows are processed `chunk` at a time, so memory is O(chunk x max(N, M)) and the work runs
on a GPU when there is one. With real features R (N, D), fake features F (M, D) and k:

  r_i  = distance from R_i to its k-th nearest neighbour in R, the point itself counted as its own 0-th
         neighbour (the reference takes the (k+1)-th smallest entry of the row, whose diagonal is exactly 0);
  s_j  = the same for F_j within F;
  precision = mean_j [exists i: d(R_i, F_j) < r_i]     recall   = mean_i [exists j: d(R_i, F_j) < s_j]
  density   = mean_j #{i: d(R_i, F_j) < r_i} / k       coverage = mean_i [min_j d(R_i, F_j) < r_i]

Comparisons are strict, as in the reference; coverage's `min_j d < r_i` is the same as `exists j: d < r_i`,
which lets it share the precision/density mask. Duplicated points count as neighbours at distance ~0.

`distance`: `euclidean` (the `prdc` package's) or `cosine`, 1 - a.b / (|a| |b|) clipped to [0, 2], the study's
(its image_dist/prdc.py calls `sklearn.metrics.pairwise_distances(..., metric='cosine')`): rows are normalised
once, as sklearn's `cosine_similarity` does (a zero row stays zero, at distance 1 from everything), and each
chunk's distances are 1 - the normalised dot products, sklearn's arithmetic.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch

METRICS = ("precision", "recall", "density", "coverage")
DISTANCES = ("euclidean", "cosine")


def _as_tensor(x: np.ndarray | torch.Tensor, device: torch.device, dtype: torch.dtype, name: str) -> torch.Tensor:
    t = torch.as_tensor(x).to(device=device, dtype=dtype)
    if t.ndim != 2:
        raise ValueError(f"{name} must be 2-D (samples, features), got shape {tuple(t.shape)}")
    return t


def _sq_distances(a: torch.Tensor, a_sq: torch.Tensor, b: torch.Tensor, b_sq: torch.Tensor) -> torch.Tensor:
    """(len(a), len(b)) squared distances, ||a||^2 + ||b||^2 - 2 a.b, clamped at 0.

    The norms are summed first so d(a_i, b_j) and d(b_j, a_i) round the same way: a set compared with itself
    then meets its own radii exactly (density 1, not 1 + a few ulp-ties)."""
    out = a_sq[:, None] + b_sq[None, :]
    out.addmm_(a, b.T, alpha=-2.0)  # in place: one (chunk, N) buffer, no separate product matrix
    return out.clamp_min_(0.0)


def _cos_distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(len(a), len(b)) cosine distances of unit (or zero) rows: 1 - a.b clipped to [0, 2], as sklearn computes
    them (`S *= -1; S += 1; clip`). Each entry is one dot product, so d(a_i, b_j) and d(b_j, a_i) round alike."""
    return (a @ b.T).neg_().add_(1.0).clamp_(0.0, 2.0)


def unit_rows(x: torch.Tensor) -> torch.Tensor:
    """x (N, D) with each row divided by its L2 norm; a zero row stays zero (sklearn's `normalize`)."""
    norms = torch.linalg.vector_norm(x, dim=1, keepdim=True)
    return x / torch.where(norms == 0, torch.ones_like(norms), norms)


def knn_radii(x: torch.Tensor, k: int, chunk: int = 4096, distance: str = "euclidean") -> torch.Tensor:
    """(N,) distance of each row of x (N, D) to its k-th nearest other row (requires k < N). With
    `distance="cosine"` the rows must already be unit rows (`unit_rows`)."""
    cosine = _distance_kind(distance) == "cosine"
    x_sq = None if cosine else (x * x).sum(dim=1)
    radii = torch.empty(len(x), dtype=x.dtype, device=x.device)
    for start in range(0, len(x), chunk):
        if cosine:
            d = _cos_distances(x[start:start + chunk], x)
            d.diagonal(offset=start).zero_()  # a point is its own 0-th neighbour (1 - x.x rounds to ~1e-16)
            radii[start:start + chunk] = d.topk(k + 1, dim=1, largest=False, sorted=False).values.amax(dim=1)
            continue
        d2 = _sq_distances(x[start:start + chunk], x_sq[start:start + chunk], x, x_sq)
        d2.diagonal(offset=start).zero_()  # the reference zeroes the self-distance exactly, as sklearn does
        # The (k+1)-th smallest, self included; sqrt is monotone, so take it on the k+1 values only.
        radii[start:start + chunk] = d2.topk(k + 1, dim=1, largest=False, sorted=False).values.amax(dim=1).sqrt_()
    return radii


def _distance_kind(distance: str) -> str:
    if distance not in DISTANCES:
        raise ValueError(f"unknown PRDC distance {distance!r}; choices: {', '.join(DISTANCES)}")
    return distance


@contextmanager
def _ieee_float32() -> Iterator[None]:
    """Full float32 matmuls for the call: TF32 (torch.set_float32_matmul_precision("high"), which training code
    often sets) keeps ~10 mantissa bits, enough to move distances across the radii."""
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(before)


def _check_k(k: int, n_real: int, n_fake: int) -> None:
    if k < 1 or k >= min(n_real, n_fake):
        raise ValueError(f"PRDC needs 1 <= k < number of samples, got k={k} with {n_real} real and {n_fake} fake")


def _default_device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def prdc(real: np.ndarray | torch.Tensor, fake: np.ndarray | torch.Tensor, k: int = 5, chunk: int = 4096,
         device: str | torch.device | None = None, dtype: torch.dtype | None = None,
         distance: str = "euclidean") -> dict[str, float]:
    """Precision, recall, density and coverage of `fake` (M, D) against `real` (N, D), numpy or torch.

    device: cuda when available, else cpu. dtype: float64 on cpu (matches `prdc.compute_prdc` on float64
    features to rounding, and the study's cosine variant), float32 on cuda (fast; near-ties may resolve
    differently, pass torch.float64 for the exact figures; TF32 is switched off for the call). distance:
    euclidean | cosine. Peak memory is a few (chunk, max(N, M)) buffers on top of the inputs. Raises ValueError
    unless 1 <= k < min(N, M), or for an unknown distance.
    """
    cosine = _distance_kind(distance) == "cosine"
    _check_k(k, len(real), len(fake))
    device = _default_device(device)
    dtype = dtype or (torch.float32 if device.type == "cuda" else torch.float64)
    with torch.inference_mode(), _ieee_float32():
        r = _as_tensor(real, device, dtype, "real")
        f = _as_tensor(fake, device, dtype, "fake")
        if r.shape[1] != f.shape[1]:
            raise ValueError(f"real and fake features differ in width: {r.shape[1]} vs {f.shape[1]}")
        if cosine:  # angles are not shift-invariant: normalise, never centre
            r, f = unit_rows(r), unit_rows(f)
        else:
            # Distances ignore a common shift; centring on the real mean shrinks ||a||^2 + ||b||^2 next to 2 a.b, and
            # with it the cancellation of the expansion (network features often sit far from the origin).
            center = r.mean(dim=0, dtype=torch.float64).to(dtype)
            r, f = r - center, f - center
        real_radii = knn_radii(r, k, chunk, distance)
        fake_radii = knn_radii(f, k, chunk, distance)
        r_sq, f_sq = (r * r).sum(dim=1), (f * f).sum(dim=1)
        precise = torch.zeros((), dtype=torch.int64, device=device)  # fakes inside some real ball
        inside = torch.zeros((), dtype=torch.int64, device=device)   # (fake, real ball) memberships, for density
        covered = torch.zeros(len(r), dtype=torch.bool, device=device)   # real balls holding some fake
        recalled = torch.zeros(len(r), dtype=torch.bool, device=device)  # reals inside some fake ball
        for start in range(0, len(f), chunk):
            if cosine:
                dist = _cos_distances(f[start:start + chunk], r)
            else:
                dist = _sq_distances(f[start:start + chunk], f_sq[start:start + chunk], r, r_sq).sqrt_()
            # Compare distances, not squares: the reference does, and sqrt can round distinct squares together.
            in_real = dist < real_radii[None, :]  # (chunk, N): fake j inside the ball of real i
            precise += in_real.any(dim=1).sum()
            inside += in_real.sum()
            covered |= in_real.any(dim=0)
            del in_real
            recalled |= (dist < fake_radii[start:start + chunk, None]).any(dim=0)
        n, m = len(r), len(f)
        return {"precision": precise.item() / m, "recall": recalled.sum().item() / n,
                "density": inside.item() / (k * m), "coverage": covered.sum().item() / n}


def _numpy(labels: np.ndarray | torch.Tensor) -> np.ndarray:
    return labels.cpu().numpy() if torch.is_tensor(labels) else np.asarray(labels)


def _rows(x: np.ndarray | torch.Tensor, mask: np.ndarray) -> np.ndarray | torch.Tensor:
    return x[torch.from_numpy(mask).to(x.device)] if torch.is_tensor(x) else np.asarray(x)[mask]


def prdc_per_class(real: np.ndarray | torch.Tensor, real_labels: np.ndarray | torch.Tensor,
                   fake: np.ndarray | torch.Tensor, fake_labels: np.ndarray | torch.Tensor, k: int = 5,
                   **kw) -> dict[str, dict]:
    """PRDC within each class: real (N, D) with real_labels (N,), fake (M, D) with fake_labels (M,).

    Returns {"precision": {class: value}, "recall": {...}, "density": {...}, "coverage": {...},
    "macro": {"precision": mean, ...}}. Classes run over the labels of either set, in sorted order; a class with
    <= k samples on either side (absent included) gets None, and the macro mean is over the classes that have a
    value (None when none has). `kw` goes to `prdc` (chunk, device, dtype, distance).
    """
    real_labels, fake_labels = _numpy(real_labels), _numpy(fake_labels)
    if len(real_labels) != len(real) or len(fake_labels) != len(fake):
        raise ValueError("each label array must have one label per feature row")
    out: dict[str, dict] = {name: {} for name in METRICS}
    for c in np.union1d(real_labels, fake_labels):
        in_real, in_fake = real_labels == c, fake_labels == c
        key = c.item()  # a plain int/str key, so the result serialises to JSON
        if min(in_real.sum(), in_fake.sum()) <= k:
            values = dict.fromkeys(METRICS)
        else:
            values = prdc(_rows(real, in_real), _rows(fake, in_fake), k=k, **kw)
        for name in METRICS:
            out[name][key] = values[name]
    out["macro"] = {}
    for name in METRICS:
        present = [v for v in out[name].values() if v is not None]
        out["macro"][name] = float(np.mean(present)) if present else None
    return out
