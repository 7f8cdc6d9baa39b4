"""Blenders on imbalanced and rare-class data (the estimator protocol is tested in
test_ensemble.py)."""

import numpy as np
import pytest

from comp.blend.blenders import create_blender
from comp.core.metrics import score


def _members(y, noises, seed=0):
    """(n, M, 2) binary probabilities: the positive column tracks y plus member noise."""
    rng = np.random.default_rng(seed)
    out = []
    for noise in noises:
        s = np.clip(0.1 + 0.8 * y + rng.normal(0, noise, len(y)), 0.01, 0.99)
        out.append(np.column_stack([1 - s, s]))
    return np.stack(out, 1)


def test_rank_blend_keeps_the_cut_on_imbalanced_binary_data():
    # regression: ranks scaled to [0, 1] cut a binary task at the median row, so on 10 %-
    # positive data half the rows were called positive (accuracy ~0.59 vs ~0.99 for the mean)
    rng = np.random.default_rng(1)
    y = (rng.random(2000) < 0.1).astype(int)
    X = _members(y, [0.15, 0.2, 0.25])
    mean = create_blender("mean").fit(X, y).predict_proba(X)
    rank = create_blender("rank").fit(X, y).predict_proba(X)
    acc_mean, acc_rank = score("accuracy", y, mean), score("accuracy", y, rank)
    assert acc_mean > 0.95
    assert acc_rank > acc_mean - 0.02
    np.testing.assert_allclose(rank.sum(1), 1.0)
    # and the rank average still orders the rows (its reason to exist)
    assert score("auc", y, rank) > 0.95


def test_rank_blend_orders_rows_by_mean_rank_and_ties_get_equal_values():
    X = np.array([[[0.9, 0.1], [0.6, 0.4]],
                  [[0.9, 0.1], [0.6, 0.4]],   # a copy of row 0
                  [[0.2, 0.8], [0.7, 0.3]],
                  [[0.5, 0.5], [0.1, 0.9]]])
    p = create_blender("rank").fit(X).predict_proba(X)
    np.testing.assert_allclose(p[0], p[1])
    # values come from the mean blend's column, reordered
    np.testing.assert_allclose(np.sort(p[:, 1]), np.sort(X.mean(1)[:, 1]))


@pytest.mark.parametrize("name", ["mean", "rank", "weights", "hill", "stack"])
def test_blenders_handle_classes_absent_from_the_fit_rows(name):
    # a rare class: present in the columns, absent from the rows a nested fold fits on
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 120)
    p = np.eye(4)[y] * 0.7 + 0.075
    noisy = 0.6 * p + 0.4 * rng.dirichlet(np.ones(4), 120)
    X = np.stack([p, noisy], 1)  # (n, 2, 4): class 3 never true
    est = create_blender(name).fit(X, y)
    out = est.predict_proba(X)
    assert out.shape == (120, 4) and np.all(np.isfinite(out))
    assert score("accuracy", y, out) > 0.9
