"""Aggregation: a hand-computed case, brute-force agreement and properties (hypothesis)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedrec.federated.aggregation import CohortUpdate, aggregate, aggregate_dense, aggregate_rows


def _update(row_items, row_clients, row_counts, deltas, client_sizes, dense=None) -> CohortUpdate:
    return CohortUpdate(
        row_items=torch.tensor(row_items, dtype=torch.int64),
        row_clients=torch.tensor(row_clients, dtype=torch.int64),
        row_counts=torch.tensor(row_counts, dtype=torch.float32),
        row_deltas={"item_vec": torch.tensor(deltas, dtype=torch.float32)},
        dense_deltas={"bias": torch.tensor(dense if dense is not None else [[0.0]] * len(client_sizes))},
        client_sizes=torch.tensor(client_sizes, dtype=torch.float32),
    )


def test_hand_computed_row_means():
    # client 0 (10 examples) updates items 0 and 2; client 1 (30 examples) updates items 0 and 1.
    update = _update(
        row_items=[0, 2, 0, 1], row_clients=[0, 0, 1, 1], row_counts=[1, 2, 1, 1],
        deltas=[[1.0], [4.0], [3.0], [-2.0]], client_sizes=[10, 30], dense=[[1.0], [5.0]],
    )
    by_count = aggregate(update, num_rows=4, weighting="row_count")
    # item 0: (1*1 + 1*3) / 2 = 2; item 1: -2; item 2: 4 (one client); item 3: untouched -> 0
    assert by_count["item_vec"][:, 0].tolist() == pytest.approx([2.0, -2.0, 4.0, 0.0])
    by_size = aggregate(update, num_rows=4, weighting="client_size")
    # item 0: (10*1 + 30*3) / 40 = 2.5
    assert by_size["item_vec"][:, 0].tolist() == pytest.approx([2.5, -2.0, 4.0, 0.0])
    fedavg = aggregate(update, num_rows=4, weighting="fedavg")
    # plain FedAvg divides by the whole cohort's weight 40: item 1: 30*-2/40, item 2: 10*4/40
    assert fedavg["item_vec"][:, 0].tolist() == pytest.approx([2.5, -1.5, 1.0, 0.0])
    # dense: (10*1 + 30*5) / 40 = 4
    assert float(by_count["bias"][0]) == pytest.approx(4.0)


@st.composite
def cohorts(draw):
    num_clients = draw(st.integers(1, 6))
    num_rows = draw(st.integers(1, 8))
    dim = draw(st.integers(1, 3))
    entries = []
    for client in range(num_clients):
        rows = draw(st.lists(st.integers(0, num_rows - 1), min_size=1, max_size=num_rows, unique=True))
        for row in sorted(rows):
            entries.append((client, row, draw(st.integers(1, 5))))
    sizes = [draw(st.integers(1, 50)) for _ in range(num_clients)]
    values = draw(st.lists(st.floats(-10, 10, allow_nan=False, width=32), min_size=len(entries) * dim,
                           max_size=len(entries) * dim))
    deltas = np.array(values, dtype=np.float32).reshape(len(entries), dim)
    update = CohortUpdate(
        row_items=torch.tensor([e[1] for e in entries]),
        row_clients=torch.tensor([e[0] for e in entries]),
        row_counts=torch.tensor([float(e[2]) for e in entries]),
        row_deltas={"q": torch.from_numpy(deltas)},
        dense_deltas={},
        client_sizes=torch.tensor(sizes, dtype=torch.float32),
    )
    return update, num_rows


@settings(max_examples=60, deadline=None)
@given(cohorts(), st.sampled_from(["row_count", "client_size", "fedavg"]))
def test_matches_brute_force(case, weighting):
    update, num_rows = case
    result = aggregate(update, num_rows, weighting)["q"].double().numpy()
    items = update.row_items.numpy()
    clients = update.row_clients.numpy()
    deltas = update.row_deltas["q"].double().numpy()
    sizes = update.client_sizes.double().numpy()
    for row in range(num_rows):
        numerator, denominator = np.zeros(deltas.shape[1]), 0.0
        for r in range(len(items)):
            if items[r] != row:
                continue
            w = float(update.row_counts[r]) if weighting == "row_count" else sizes[clients[r]]
            numerator += w * deltas[r]
            denominator += w
        if weighting == "fedavg":
            denominator = sizes.sum()
        expected = numerator / denominator if denominator else numerator
        np.testing.assert_allclose(result[row], expected, rtol=1e-4, atol=1e-4)


@settings(max_examples=40, deadline=None)
@given(cohorts())
def test_identical_deltas_are_a_fixed_point_and_untouched_rows_stay(case):
    update, num_rows = case
    constant = torch.full_like(update.row_deltas["q"], 0.75)
    update.row_deltas["q"] = constant
    result = aggregate(update, num_rows, "row_count")["q"]
    touched = torch.zeros(num_rows, dtype=torch.bool)
    touched[update.row_items] = True
    assert torch.allclose(result[touched], torch.tensor(0.75), atol=1e-6)
    assert torch.all(result[~touched] == 0)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(-100, 100, allow_nan=False, width=32), min_size=1, max_size=20),
       st.lists(st.floats(0.5, 100, width=32), min_size=20, max_size=20))
def test_dense_mean_is_a_convex_combination(values, weights):
    deltas = torch.tensor(values).reshape(-1, 1)
    w = torch.tensor(weights[: len(values)])
    mean = float(aggregate_dense(deltas, w)[0])
    assert min(values) - 1e-3 <= mean <= max(values) + 1e-3


def test_aggregate_rows_with_denominator():
    out = aggregate_rows(torch.tensor([[2.0], [4.0]]), torch.tensor([1, 1]), torch.tensor([1.0, 1.0]), 3, denominator=4.0)
    assert out[:, 0].tolist() == pytest.approx([0.0, 1.5, 0.0])


def test_concat_shifts_client_positions():
    a = _update([0], [0], [1], [[1.0]], [5])
    b = _update([1, 2], [0, 0], [1, 1], [[2.0], [3.0]], [7])
    joined = CohortUpdate.concat([a, b])
    assert joined.row_clients.tolist() == [0, 1, 1]
    assert joined.client_sizes.tolist() == [5.0, 7.0]
