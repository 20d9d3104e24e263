"""bench/bench_peers.py's own formulas: the interaction matrix and EASE against a column-by-column ridge solve."""

from __future__ import annotations

import numpy as np
import pytest

from fedrec.data.dataset import Interactions


@pytest.fixture(scope="module")
def bench(load_bench):
    return load_bench("bench_peers")


def test_interaction_matrix_is_binary_with_duplicates_once(bench):
    part = Interactions(np.array([0, 0, 1, 1]), np.array([2, 2, 0, 1]), np.array([5, 3, 1, 1], np.float32),
                        np.zeros(4, np.int64))
    assert bench.interaction_matrix(part, 3, 4).toarray().tolist() == [[0, 0, 1, 0], [1, 1, 0, 0], [0, 0, 0, 0]]


def test_ease_equals_a_ridge_regression_of_each_item_on_the_others(bench):
    from scipy.sparse import csr_matrix

    rng = np.random.default_rng(0)
    dense = (rng.random((12, 5)) < 0.4).astype(np.float64)
    l2 = 3.0
    # EASE's B: column j regresses item j on every other item with ridge l2, and B[j, j] = 0
    weights = np.zeros((5, 5))
    for j in range(5):
        others = [k for k in range(5) if k != j]
        x = dense[:, others]
        weights[others, j] = np.linalg.solve(x.T @ x + l2 * np.eye(4), x.T @ dense[:, j])
    expected = dense @ weights
    np.testing.assert_allclose(bench.ease_scores(csr_matrix(dense.astype(np.float32)), l2), expected, rtol=1e-4,
                               atol=1e-5)
