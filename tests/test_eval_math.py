"""FID, KID and precision/recall against closed forms and independent reference computations (small random data)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from genforge.errors import UserError
from genforge.evaluation.stats import feature_stats, fid_from_features, frechet_distance, kid, precision_recall

scipy_linalg = pytest.importorskip("scipy.linalg")


def pytorch_fid_formula(mu1, s1, mu2, s2, eps=1e-6):
    """The formula of pytorch-fid's calculate_frechet_distance: scipy sqrtm of the product, eps on a failure."""
    covmean = scipy_linalg.sqrtm(s1 @ s2)
    if not np.isfinite(covmean).all():
        offset = np.eye(s1.shape[0]) * eps
        covmean = scipy_linalg.sqrtm((s1 + offset) @ (s2 + offset))
    covmean = np.real(covmean)
    diff = mu1 - mu2
    return diff @ diff + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean)


def random_features(rng, n, d, shift=0.0, scale=1.0):
    # correlated, non-negative-ish features like Inception pool features
    mix = rng.normal(size=(d, d)) / np.sqrt(d)
    return np.abs(rng.normal(size=(n, d)) @ mix * scale + shift)


# --------------------------------------------------------------------------------------------------------------
# FID


def test_feature_stats_match_numpy_and_accept_tensors():
    x = np.random.default_rng(0).normal(size=(50, 6)).astype(np.float32)
    mu, sigma = feature_stats(torch.from_numpy(x))
    assert mu.dtype == np.float64 and sigma.dtype == np.float64
    np.testing.assert_allclose(mu, x.astype(np.float64).mean(0), rtol=1e-12)
    np.testing.assert_allclose(sigma, np.cov(x.astype(np.float64), rowvar=False), rtol=1e-10, atol=1e-14)


def test_frechet_distance_matches_scipy_sqrtm_formula():
    rng = np.random.default_rng(1)
    a = random_features(rng, 400, 32)
    b = random_features(rng, 300, 32, shift=0.3, scale=1.2)
    stats = (*feature_stats(a), *feature_stats(b))
    expected = pytorch_fid_formula(*stats)
    assert expected > 0.1
    assert frechet_distance(*stats) == pytest.approx(expected, rel=1e-6)
    assert fid_from_features(a, b) == pytest.approx(expected, rel=1e-6)


def test_frechet_distance_of_diagonal_gaussians_is_analytic():
    rng = np.random.default_rng(2)
    mu1, mu2 = rng.normal(size=10), rng.normal(size=10)
    d1, d2 = rng.uniform(0.1, 3.0, size=10), rng.uniform(0.1, 3.0, size=10)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum(d1 + d2 - 2 * np.sqrt(d1 * d2))
    assert frechet_distance(mu1, np.diag(d1), mu2, np.diag(d2)) == pytest.approx(expected, rel=1e-12)
    # a rotation of both covariances changes nothing
    q, _ = np.linalg.qr(rng.normal(size=(10, 10)))
    got = frechet_distance(q @ mu1, q @ np.diag(d1) @ q.T, q @ mu2, q @ np.diag(d2) @ q.T)
    assert got == pytest.approx(expected, rel=1e-10)


def test_frechet_distance_of_identical_sets_is_zero():
    x = random_features(np.random.default_rng(3), 200, 16)
    assert abs(fid_from_features(x, x.copy())) < 1e-6


def test_frechet_distance_with_singular_covariances():
    # fewer samples than dimensions: both covariances are singular; scipy needs its eps fallback, this does not
    rng = np.random.default_rng(4)
    a, b = random_features(rng, 20, 64), random_features(rng, 25, 64, shift=0.2)
    stats = (*feature_stats(a), *feature_stats(b))
    got = frechet_distance(*stats)
    assert np.isfinite(got) and got > 0
    assert got == pytest.approx(pytorch_fid_formula(*stats), rel=1e-4)


def test_frechet_distance_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="shapes do not match"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


def test_feature_stats_needs_two_images():
    with pytest.raises(UserError, match="at least 2 images"):
        feature_stats(np.zeros((1, 8)))


# --------------------------------------------------------------------------------------------------------------
# KID


def reference_mmd2(x, y):
    """Unbiased MMD^2 with k(a, b) = (a.b/d + 1)^3 by explicit double loops over pairs (slow, obviously right)."""
    m, d = x.shape

    def k(a, b):
        return (float(np.dot(a, b)) / d + 1.0) ** 3

    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j)
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j)
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m))
    return xx / (m * (m - 1)) + yy / (m * (m - 1)) - 2 * xy / (m * m)


def test_kid_single_full_subset_matches_pairwise_reference():
    rng = np.random.default_rng(5)
    real = rng.normal(size=(30, 8))
    fake = rng.normal(loc=0.4, size=(30, 8))
    mean, std = kid(real, fake, subsets=1, subset_size=30, seed=0)  # one subset = all rows (MMD ignores order)
    assert mean == pytest.approx(reference_mmd2(fake, real), rel=1e-5)
    assert std == 0.0


def test_kid_subsets_follow_the_documented_draws():
    rng = np.random.default_rng(6)
    real = rng.normal(size=(40, 5))
    fake = rng.normal(loc=0.3, size=(35, 5))
    draws = np.random.default_rng(123)
    expected = []
    for _ in range(4):
        x = fake[draws.choice(35, 12, replace=False)]
        y = real[draws.choice(40, 12, replace=False)]
        expected.append(reference_mmd2(x, y))
    mean, std = kid(real, fake, subsets=4, subset_size=12, seed=123)
    assert mean == pytest.approx(np.mean(expected), rel=1e-5)
    assert std == pytest.approx(np.std(expected), rel=1e-4)


def test_kid_is_near_zero_for_one_distribution_and_positive_for_two():
    rng = np.random.default_rng(7)
    same, _ = kid(rng.normal(size=(300, 16)), rng.normal(size=(300, 16)), subsets=10, subset_size=100)
    different, _ = kid(rng.normal(size=(300, 16)), rng.normal(loc=1.0, size=(300, 16)), subsets=10, subset_size=100)
    assert abs(same) < 0.02 < different


def test_kid_subset_size_falls_back_to_the_smaller_set():
    rng = np.random.default_rng(8)
    real, fake = rng.normal(size=(20, 4)), rng.normal(size=(15, 4))
    mean, _ = kid(real, fake, subsets=1, subset_size=1000, seed=1)
    draws = np.random.default_rng(1)
    x, y = fake[draws.choice(15, 15, replace=False)], real[draws.choice(20, 15, replace=False)]
    assert mean == pytest.approx(reference_mmd2(x, y), rel=1e-5)


# --------------------------------------------------------------------------------------------------------------
# Precision and recall


def clusters(rng, centers, per_cluster, d, spread=0.1):
    return np.concatenate([c + spread * rng.normal(size=(per_cluster, d)) for c in centers])


def test_precision_recall_of_identical_sets_is_one():
    x = np.random.default_rng(9).normal(size=(100, 8))
    assert precision_recall(x, x.copy(), k=3) == (1.0, 1.0)


def test_precision_recall_of_far_apart_sets_is_zero():
    rng = np.random.default_rng(10)
    real = rng.normal(size=(80, 8))
    fake = rng.normal(size=(60, 8)) + 100.0
    assert precision_recall(real, fake, k=3) == (0.0, 0.0)


def test_fake_covering_one_of_two_real_clusters():
    # real = clusters A and B (100 points each), fake = the real points of cluster A: every fake image is realistic
    # (precision 1) but only the real images of A are covered (recall 0.5)
    rng = np.random.default_rng(11)
    real = clusters(rng, [np.zeros(4), np.full(4, 50.0)], 100, 4)
    assert precision_recall(real, real[:100], k=3) == (1.0, 0.5)


def test_fake_from_a_narrower_distribution():
    # fake drawn from the same center, 5x narrower: realistic (high precision), low diversity (low recall)
    rng = np.random.default_rng(13)
    real = rng.normal(size=(300, 4))
    fake = 0.2 * rng.normal(size=(300, 4))
    precision, recall = precision_recall(real, fake, k=3)
    assert precision > 0.95 and recall < 0.5


def test_precision_recall_hand_computed_1d():
    # real on a line at 0..9 (k=1 radii: 1 each), fake at 0.5 (inside), 20 (outside): precision 1/2.
    # fake radii (k=1): both 19.5, so the fake manifold covers [0.5 - 19.5, 20 + 19.5]: recall 1.
    real = np.arange(10.0)[:, None]
    fake = np.array([[0.5], [20.0]])
    assert precision_recall(real, fake, k=1) == (0.5, 1.0)


def test_precision_recall_does_not_depend_on_the_row_batch():
    rng = np.random.default_rng(12)
    real = rng.normal(size=(150, 6))
    fake = rng.normal(loc=0.5, scale=1.3, size=(130, 6))
    whole = precision_recall(real, fake, k=3, row_batch=10_000)
    assert 0.0 < whole[0] < 1.0 and 0.0 < whole[1] < 1.0
    assert precision_recall(real, fake, k=3, row_batch=7) == whole


def test_precision_recall_rejects_k_too_large():
    with pytest.raises(UserError, match="k=5"):
        precision_recall(np.zeros((5, 2)), np.zeros((9, 2)), k=5)
