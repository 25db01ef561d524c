"""The pure math of the feature-space image metrics: FID, KID and k-NN precision/recall on (N, D) matrices.

These functions know nothing about Inception or images: they take features (from `data.inception` for the
standard metrics) and return numbers, so each is tested against a closed form on small random data.

- FID (Heusel et al. 2017): the Fréchet distance between Gaussians fitted to two feature sets,
  ||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2)).
- KID (Binkowski et al. 2018): the unbiased estimate of MMD^2 with the kernel k(x, y) = (x.y / d + 1)^3, averaged
  over random subsets (the protocol of stylegan2-ada and torch-fidelity: 100 subsets of 1000).
- Precision/recall (Kynkäänniemi et al. 2019): the fraction of one set inside the k-NN manifold of the other.
"""
from __future__ import annotations

import logging

import numpy as np
import torch
from torch import Tensor

from genforge.errors import UserError

log = logging.getLogger(__name__)

# Rows of the distance matrix computed at once in precision_recall: 1024 x 10,000 float32 = 41 MB, so 10k x 10k
# features never need the full 400 MB matrix.
PR_ROW_BATCH = 1024


def _as_float64(features: np.ndarray | Tensor, name: str) -> np.ndarray:
    if isinstance(features, Tensor):
        features = features.detach().cpu().numpy()
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"{name}: expected a (N, D) feature matrix, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError(f"{name}: features contain NaN or inf")
    return x


# --------------------------------------------------------------------------------------------------------------
# FID


def feature_stats(features: np.ndarray | Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(N, D) features -> mean (D,) and covariance (D, D), both float64.

    The covariance is the unbiased one (divides by N - 1), as numpy's `np.cov` in pytorch-fid, clean-fid and
    torch-fidelity. (stylegan2-ada divides by N; the FIDs differ by a factor of about 1/N in the trace terms, e.g.
    1e-4 relative at N = 10,000.)
    """
    x = _as_float64(features, "features")
    n = x.shape[0]
    if n < 2:
        raise UserError(f"FID statistics need at least 2 images, got {n}; evaluate more samples (e.g. --n 2000)")
    mu = x.mean(axis=0)
    centered = x - mu
    sigma = centered.T @ centered / (n - 1)  # (D, D)
    return mu, sigma


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2): ||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2)).

    tr((S1 S2)^(1/2)) is the sum of the square roots of the eigenvalues of S1 S2, and those equal the eigenvalues of
    the symmetric PSD matrix M = S1^(1/2) S2 S1^(1/2) (the nonzero eigenvalues of AB and BA agree; take A = S1^(1/2),
    B = S1^(1/2) S2). Two symmetric eigendecompositions therefore give the trace without a general matrix square
    root: no complex intermediate values, no failure on the singular covariances of fewer images than feature
    dimensions (pytorch-fid's scipy `sqrtm` needs an eps fallback there), and a few times faster at D = 2048.
    Tiny negative eigenvalues from rounding are clipped to 0.
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    d = mu1.shape[0]
    if mu1.shape != (d,) or mu2.shape != (d,) or s1.shape != (d, d) or s2.shape != (d, d):
        raise ValueError(f"frechet_distance: shapes do not match: mu1 {mu1.shape}, sigma1 {s1.shape}, "
                         f"mu2 {mu2.shape}, sigma2 {s2.shape}")

    # 1. S1^(1/2) from the eigendecomposition S1 = V diag(w) V^T.
    w, v = np.linalg.eigh((s1 + s1.T) / 2)
    root1 = (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T  # (D, D)
    # 2. Eigenvalues of M = S1^(1/2) S2 S1^(1/2), symmetrized against rounding.
    m = root1 @ s2 @ root1
    eig = np.linalg.eigvalsh((m + m.T) / 2)
    tr_covmean = np.sqrt(np.clip(eig, 0.0, None)).sum()
    # 3. The distance.
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * tr_covmean)


def fid_from_features(features1: np.ndarray | Tensor, features2: np.ndarray | Tensor) -> float:
    """FID between two (N, D) feature sets."""
    return frechet_distance(*feature_stats(features1), *feature_stats(features2))


# --------------------------------------------------------------------------------------------------------------
# KID


def _polynomial_kernel_sums(x: Tensor, y: Tensor) -> tuple[float, float, float]:
    """For float32 (m, d) subsets x (fake) and y (real): off-diagonal sums of k(x, x) and k(y, y), full sum of
    k(x, y), with k(a, b) = (a.b / d + 1)^3. The Gram matrices are float32 matmuls (the cost); the kernel and the
    sums are float64, because MMD^2 is a small difference of sums of about m^2 values near 1."""
    d = x.shape[1]

    def k(a: Tensor, b: Tensor) -> Tensor:
        return (a @ b.T).double().div_(d).add_(1.0).pow_(3)  # (m, m)

    kxx, kyy, kxy = k(x, x), k(y, y), k(x, y)
    off_xx = float(kxx.sum() - kxx.diagonal().sum())
    off_yy = float(kyy.sum() - kyy.diagonal().sum())
    return off_xx, off_yy, float(kxy.sum())


def kid(
    feat_real: np.ndarray | Tensor,
    feat_fake: np.ndarray | Tensor,
    subsets: int = 100,
    subset_size: int = 1000,
    seed: int = 0,
) -> tuple[float, float]:
    """Kernel Inception Distance: mean and standard deviation over `subsets` random subsets of the unbiased MMD^2.

    Each subset draws m = min(subset_size, N_real, N_fake) rows of each set without replacement (stylegan2-ada's
    rule, so that small evaluations still run), from `np.random.default_rng(seed)`: fake indices first, then real.
    With kernel k, the unbiased estimate (Binkowski et al. 2018, eq. 4; Gretton et al. 2012) is

        MMD^2 = sum_{i != j} [k(x_i, x_j) + k(y_i, y_j)] / (m (m - 1)) - 2 sum_{i, j} k(x_i, y_j) / m^2.

    The std is over subsets (ddof 0, as torch-fidelity). KID is often reported x 1000.
    """
    real = torch.from_numpy(_as_float64(feat_real, "feat_real").astype(np.float32))
    fake = torch.from_numpy(_as_float64(feat_fake, "feat_fake").astype(np.float32))
    if real.shape[1] != fake.shape[1]:
        raise ValueError(f"kid: feature sizes differ: real {tuple(real.shape)}, fake {tuple(fake.shape)}")
    if subsets < 1:
        raise UserError(f"KID `subsets` ({subsets}) must be at least 1")
    m = min(subset_size, real.shape[0], fake.shape[0])
    if m < 2:
        raise UserError(f"KID needs at least 2 real and 2 generated images, got {real.shape[0]} real and "
                        f"{fake.shape[0]} generated")
    if m < subset_size:
        log.info("KID: subsets of %d (fewer images than subset_size=%d)", m, subset_size)

    rng = np.random.default_rng(seed)
    values = np.empty(subsets, dtype=np.float64)
    with torch.inference_mode():
        for s in range(subsets):
            x = fake[torch.from_numpy(rng.choice(fake.shape[0], m, replace=False))]  # (m, d)
            y = real[torch.from_numpy(rng.choice(real.shape[0], m, replace=False))]  # (m, d)
            off_xx, off_yy, sum_xy = _polynomial_kernel_sums(x, y)
            values[s] = (off_xx + off_yy) / (m * (m - 1)) - 2.0 * sum_xy / (m * m)
    return float(values.mean()), float(values.std())


# --------------------------------------------------------------------------------------------------------------
# Precision and recall


def _squared_distances(rows: Tensor, cols: Tensor, cols_sq: Tensor) -> Tensor:
    """||r - c||^2 for float32 (R, d) rows and (C, d) cols (with cols_sq = ||c||^2 precomputed) -> (R, C) >= 0."""
    rows_sq = rows.pow(2).sum(dim=1, keepdim=True)  # (R, 1)
    return (rows_sq + cols_sq[None, :] - 2.0 * rows @ cols.T).clamp_(min=0.0)


def _knn_radii_sq(manifold: Tensor, k: int, row_batch: int) -> Tensor:
    """Squared distance from each manifold point to its k-th nearest other point: the (k+1)-th smallest distance in
    its row, since the row includes the point itself at distance 0."""
    sq = manifold.pow(2).sum(dim=1)
    radii = [_squared_distances(block, manifold, sq).kthvalue(k + 1, dim=1).values
             for block in manifold.split(row_batch)]
    return torch.cat(radii)  # (N,)


def _fraction_inside(probes: Tensor, manifold: Tensor, radii_sq: Tensor, row_batch: int) -> float:
    """Fraction of probes within the k-NN ball of at least one manifold point: ||p - m_j||^2 <= r_j^2."""
    sq = manifold.pow(2).sum(dim=1)
    inside = [(_squared_distances(block, manifold, sq) <= radii_sq[None, :]).any(dim=1)
              for block in probes.split(row_batch)]
    return float(torch.cat(inside).double().mean())


def precision_recall(
    real: np.ndarray | Tensor,
    fake: np.ndarray | Tensor,
    k: int = 3,
    row_batch: int = PR_ROW_BATCH,
) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019, eq. 1-2) with k-NN radii in feature space.

    The manifold of a set is the union of balls around its points, each with the radius of the distance to its
    k-th nearest neighbour in the same set. Precision = fraction of fake samples inside the real manifold (quality);
    recall = fraction of real samples inside the fake manifold (coverage). Distances are computed `row_batch` rows
    at a time (float32, after centering both sets on the real mean so that the ||a||^2 + ||b||^2 - 2 a.b form loses
    little precision), so 10k x 10k sets need about 40 MB at once rather than the full matrix.
    """
    real64 = _as_float64(real, "real")
    fake64 = _as_float64(fake, "fake")
    if real64.shape[1] != fake64.shape[1]:
        raise ValueError(f"precision_recall: feature sizes differ: real {real64.shape}, fake {fake64.shape}")
    smallest = min(real64.shape[0], fake64.shape[0])
    if k < 1 or k >= smallest:
        raise UserError(f"precision/recall neighbourhood k={k} needs 1 <= k < the smaller set size ({smallest} "
                        "images); evaluate more images or lower k")
    center = real64.mean(axis=0)  # distances do not change under a common shift
    real_t = torch.from_numpy((real64 - center).astype(np.float32))
    fake_t = torch.from_numpy((fake64 - center).astype(np.float32))
    with torch.inference_mode():
        precision = _fraction_inside(fake_t, real_t, _knn_radii_sq(real_t, k, row_batch), row_batch)
        recall = _fraction_inside(real_t, fake_t, _knn_radii_sq(fake_t, k, row_batch), row_batch)
    return precision, recall
