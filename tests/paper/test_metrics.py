import math

import numpy as np
import pytest
import torch

from flowcond.paper.metrics import (
    FID_NAME,
    accuracy,
    amp_variance,
    attribute_accuracy,
    attribute_mean_probability,
    cumulative_interference,
    frechet_distance,
    interference,
)


# ------------------------------------------------------------------ accuracy
def test_accuracy_of_labels_scores_and_attribute_bits():
    assert accuracy(torch.tensor([0, 1, 2, 2]), torch.tensor([0, 1, 1, 2])) == 0.75
    logits = torch.tensor([[5.0, 0.0], [0.0, 1.0], [2.0, 1.0]])
    assert accuracy(logits, [0, 1, 1]) == pytest.approx(2 / 3)
    bits = np.array([[1, 0], [1, 1]])
    assert accuracy(bits, np.array([[1, 1], [1, 1]])) == 0.75
    with pytest.raises(ValueError):
        accuracy([0, 1], [0, 1, 2])


def test_attribute_accuracy_per_attribute():
    probs = np.array([[0.9, 0.2], [0.4, 0.6], [0.7, 0.1]])
    target = np.array([[1, 0], [1, 1], [1, 1]])
    np.testing.assert_allclose(attribute_accuracy(probs, target), [2 / 3, 2 / 3])


# ------------------------------------------------------------------ FID (evaluator features)
def test_fid_name_is_never_plain_fid():
    assert FID_NAME == "FID (evaluator features)"
    assert "Inception" not in FID_NAME


def test_frechet_distance_of_a_set_with_itself_is_zero():
    x = np.random.default_rng(0).normal(size=(500, 6))
    assert frechet_distance(x, x) == pytest.approx(0.0, abs=1e-6)


def test_frechet_distance_of_shifted_gaussians_is_the_squared_mean_difference():
    x = np.random.default_rng(1).normal(size=(1000, 4))
    shift = np.array([1.0, -2.0, 0.5, 0.0])
    # same covariance -> trace term vanishes exactly
    assert frechet_distance(x, x + shift) == pytest.approx(float(shift @ shift), rel=1e-6)


def test_frechet_distance_closed_form_with_scaled_covariance():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(800, 3)) @ np.array([[1.0, 0.3, 0.0], [0.0, 2.0, 0.5], [0.0, 0.0, 0.7]])
    y = 2.0 * x + np.array([1.0, 0.0, -1.0])
    # cov_y = 4 S, so tr(S + 4S - 2 (4 S^2)^(1/2)) = tr(S); means differ by mu_x + shift
    cov = np.cov(x, rowvar=False)
    dmu = y.mean(0) - x.mean(0)
    expected = float(dmu @ dmu + np.trace(cov))
    assert frechet_distance(torch.from_numpy(x), torch.from_numpy(y)) == pytest.approx(expected, rel=1e-6)


def _closed_form(a: np.ndarray, b: np.ndarray) -> float:
    """||mu_a - mu_b||^2 + tr(S_a + S_b - 2 (S_a S_b)^1/2); the trace of the root is the sum of the
    square roots of the eigenvalues of S_a S_b (real and >= 0 for covariances)."""
    sa, sb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = np.sqrt(np.clip(np.linalg.eigvals(sa @ sb).real, 0, None)).sum()
    d = a.mean(0) - b.mean(0)
    return float(d @ d + np.trace(sa) + np.trace(sb) - 2 * root)


def test_frechet_distance_closed_form_with_unrelated_covariances():
    rng = np.random.default_rng(4)
    # covariances that do not commute: the root term is not tr(S_a^1/2 S_b^1/2)
    a = rng.normal(size=(600, 4)) @ rng.normal(size=(4, 4))
    b = rng.normal(size=(400, 4)) @ rng.normal(size=(4, 4)) + np.array([0.5, 0.0, -1.0, 2.0])
    expected = _closed_form(a, b)
    assert expected > 1.0  # far from the clip at 0
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-6)
    assert frechet_distance(b, a) == pytest.approx(expected, rel=1e-6)


def test_frechet_distance_of_singular_covariances_matches_the_closed_form():
    rng = np.random.default_rng(3)
    a = np.concatenate([rng.normal(size=(20, 2)), np.zeros((20, 3))], axis=1)  # rank 2 of 5
    b = np.concatenate([rng.normal(size=(5, 2)) + 1.0, np.zeros((5, 3))], axis=1)  # fewer samples than dims
    expected = _closed_form(a, b)
    assert expected > 1.0
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-4)


def test_frechet_distance_clips_only_round_off_below_zero():
    x = np.random.default_rng(5).normal(size=(50, 3))
    assert 0.0 <= frechet_distance(x, x) < 1e-9
    assert frechet_distance(x, x + 1e-3) == pytest.approx(3e-6, rel=1e-3)


def test_frechet_distance_rejects_bad_shapes():
    with pytest.raises(ValueError):
        frechet_distance(np.zeros((10, 3)), np.zeros((10, 4)))
    with pytest.raises(ValueError):
        frechet_distance(np.zeros((1, 3)), np.zeros((10, 3)))


# ------------------------------------------------------------------ AMP
def test_amp_per_identity_and_variance_across_identities():
    probs = np.array([[1.0, 0.0], [0.5, 0.0], [0.0, 1.0], [0.0, 1.0]])
    ids = np.array([7, 7, 3, 3])
    res = attribute_mean_probability(probs, ids)
    np.testing.assert_array_equal(res.identities, [3, 7])
    np.testing.assert_array_equal(res.counts, [2, 2])
    np.testing.assert_allclose(res.amp, [[0.0, 1.0], [0.75, 0.0]])
    # population variance of {0, 0.75} and of {1, 0}
    np.testing.assert_allclose(res.variance, [0.140625, 0.25])
    assert res.mean_variance == pytest.approx(0.1953125)
    np.testing.assert_allclose(amp_variance(torch.tensor(probs), torch.tensor(ids)), [0.140625, 0.25])


def test_amp_variance_is_zero_when_every_identity_agrees():
    probs = np.tile([[0.2, 0.9]], (6, 1))
    np.testing.assert_allclose(amp_variance(probs, [0, 0, 1, 1, 2, 2]), [0.0, 0.0], atol=1e-12)


# ------------------------------------------------------------------ interference
def test_interference_ignores_the_edited_attribute():
    before = np.array([0.2, 0.5, 0.9])
    after = np.array([0.9, 0.4, 0.7])
    assert interference(before, after, 0) == pytest.approx((0.1 + 0.2) / 2)
    assert interference(before, after, [0, 2]) == pytest.approx(0.1)
    assert math.isnan(interference(before, after, [0, 1, 2]))
    # per-identity AMPs (K, A): averaged over identities too
    b2 = np.array([[0.0, 0.0], [0.0, 0.0]])
    a2 = np.array([[1.0, 0.2], [1.0, 0.4]])
    assert interference(b2, a2, 0) == pytest.approx(0.3)
    with pytest.raises(ValueError):
        interference(before, after, 3)


def test_cumulative_interference_after_each_edit():
    amps = [
        np.array([0.1, 0.1, 0.1, 0.1]),
        np.array([0.9, 0.2, 0.1, 0.1]),  # edit 0
        np.array([0.9, 0.9, 0.3, 0.1]),  # edit 1
        np.array([0.9, 0.9, 0.9, 0.5]),  # edit 2
        np.array([0.9, 0.9, 0.9, 0.9]),  # edit 3
    ]
    out = cumulative_interference(amps, [0, 1, 2, 3])
    assert out[:3] == pytest.approx([(0.1 + 0 + 0) / 3, (0.2 + 0) / 2, 0.4])
    assert math.isnan(out[3])
    prev = cumulative_interference(amps[:3], [0, 1], relative_to="previous")
    assert prev == pytest.approx([0.1 / 3, 0.2 / 2])
    with pytest.raises(ValueError):
        cumulative_interference(amps, [0, 1])
