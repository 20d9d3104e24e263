"""Stragglers, dropouts and client reweighting (fedrec/federated/participation.py, aggregation.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedrec.data.synthetic import make_synthetic
from fedrec.federated.aggregation import CohortUpdate, aggregate, client_factors, weigh_clients
from fedrec.federated.cohort import ClientData, sample_cohort
from fedrec.federated.local import LocalTraining
from fedrec.federated.participation import Participation, client_speeds, decide_arrivals
from fedrec.federated.reference import train_cohort_reference
from fedrec.federated.server import FedAvgSettings, ServerState, run_round, server_update
from fedrec.models.mf import BiasedMF, MFConfig

SEED = 11


def test_deadline_drops_or_downweights_the_late_clients():
    cohort, examples = np.array([3, 5, 8, 9]), np.array([10, 20, 30, 40])
    # equal speeds, 0.1 s per example: times 1, 2, 3, 4 s; deadline 2.5 s (also the median of those times)
    for deadline in (dict(deadline_seconds=2.5), dict(deadline_quantile=0.5)):
        dropped = decide_arrivals(cohort, examples, Participation(seconds_per_example=0.1, **deadline), 1, SEED, 0)
        assert dropped.late.tolist() == [False, False, True, True] and not dropped.dropped.any()
        assert dropped.weights.tolist() == [1.0, 1.0, 0.0, 0.0]
        assert dropped.deadline == pytest.approx(2.5)
        weighted = decide_arrivals(cohort, examples, Participation(seconds_per_example=0.1, late="downweight", **deadline),
                                   1, SEED, 0)
        np.testing.assert_allclose(weighted.weights, [1.0, 1.0, 2.5 / 3, 2.5 / 4])
    # two local epochs double every time: with a fixed deadline of 2.5 s only the first client makes it
    two_epochs = decide_arrivals(cohort, examples, Participation(seconds_per_example=0.1, deadline_seconds=2.5), 2, SEED, 0)
    assert two_epochs.weights.tolist() == [1.0, 0.0, 0.0, 0.0]


def test_dropout_rate_and_determinism():
    cohort = np.arange(20_000)
    examples = np.ones(len(cohort))
    first = decide_arrivals(cohort, examples, Participation(dropout=0.3), 1, SEED, 4)
    assert abs(first.dropped.mean() - 0.3) < 0.015
    again = decide_arrivals(cohort, examples, Participation(dropout=0.3), 1, SEED, 4)
    assert np.array_equal(first.dropped, again.dropped)  # a pure function of (seed, round, client)
    other_round = decide_arrivals(cohort, examples, Participation(dropout=0.3), 1, SEED, 5)
    assert not np.array_equal(first.dropped, other_round.dropped)
    assert np.array_equal(first.weights == 0, first.dropped)  # no deadline: only dropouts are lost
    assert not decide_arrivals(cohort, examples, Participation(), 1, SEED, 4).dropped.any()


def test_speeds_are_drawn_once_per_client_from_a_log_normal():
    clients = np.arange(50_000)
    speeds = client_speeds(clients, 0.7, SEED)
    assert abs(np.log(speeds).mean()) < 0.02 and abs(np.log(speeds).std() - 0.7) < 0.02
    np.testing.assert_array_equal(client_speeds(clients[::7], 0.7, SEED), speeds[::7])  # the same in any cohort
    assert np.all(client_speeds(clients[:10], 0.0, SEED) == 1.0)
    assert not np.array_equal(client_speeds(clients[:10], 0.7, SEED + 1), speeds[:10])


def test_client_factors_and_weighted_aggregate_by_hand():
    sizes = torch.tensor([1.0, 4.0, 9.0])
    torch.testing.assert_close(client_factors(sizes, "uniform"), torch.tensor([1.0, 1 / 4, 1 / 9]))
    torch.testing.assert_close(client_factors(sizes, "sqrt"), torch.tensor([1.0, 1 / 2, 1 / 3]))
    torch.testing.assert_close(client_factors(sizes, "examples"), torch.ones(3))
    # item 0 updated by clients 0 (2 of its examples) and 1 (3 of its examples); dense by all three
    update = CohortUpdate(row_items=torch.tensor([0, 0]), row_clients=torch.tensor([0, 1]),
                          row_counts=torch.tensor([1.0, 3.0]), row_deltas={"v": torch.tensor([[1.0], [3.0]])},
                          dense_deltas={"d": torch.tensor([[1.0], [2.0], [6.0]])}, client_sizes=sizes)
    plain = aggregate(update, 1)
    assert plain["v"].item() == pytest.approx((1 * 1 + 3 * 3) / 4)
    assert plain["d"].item() == pytest.approx((1 * 1 + 4 * 2 + 9 * 6) / 14)
    uniform = aggregate(weigh_clients(update, "uniform"), 1)
    assert uniform["v"].item() == pytest.approx((1 * 1 + 3 / 4 * 3) / (1 + 3 / 4))  # each client's share of its examples
    assert uniform["d"].item() == pytest.approx((1 + 2 + 6) / 3)
    sqrt = aggregate(weigh_clients(update, "sqrt"), 1)
    assert sqrt["d"].item() == pytest.approx((1 * 1 + 2 * 2 + 3 * 6) / 6)
    late = aggregate(weigh_clients(update, "examples", torch.tensor([1.0, 0.5, 1.0])), 1)  # client 1 half-weighted
    assert late["v"].item() == pytest.approx((1 * 1 + 1.5 * 3) / 2.5)
    assert late["d"].item() == pytest.approx((1 + 2 * 2 + 9 * 6) / 12)
    assert weigh_clients(update) is update  # the default leaves the upload untouched


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(1.0, 500.0), min_size=1, max_size=8), st.integers(0, 2**31 - 1))
def test_uniform_weighting_averages_dense_deltas_equally(sizes, seed):
    gen = torch.Generator().manual_seed(seed)
    clients = len(sizes)
    update = CohortUpdate(row_items=torch.tensor([1]), row_clients=torch.tensor([0]),
                          row_counts=torch.ones(1), row_deltas={"v": torch.ones(1, 2)},
                          dense_deltas={"d": torch.randn(clients, 3, generator=gen)}, client_sizes=torch.tensor(sizes))
    uniform = aggregate(weigh_clients(update, "uniform"), 4)
    torch.testing.assert_close(uniform["d"], update.dense_deltas["d"].mean(0), atol=1e-5, rtol=1e-5)
    extra = torch.rand(clients, generator=gen) + 0.1
    weighted = aggregate(weigh_clients(update, "examples", extra), 4)
    w = torch.tensor(sizes) * extra
    torch.testing.assert_close(weighted["d"], (w[:, None] * update.dense_deltas["d"]).sum(0) / w.sum(), atol=1e-5, rtol=1e-5)


def _setup():
    dataset = make_synthetic(num_users=40, num_items=30, mean_interactions=10, seed=3)
    data = ClientData.from_interactions(dataset.interactions, np.arange(40), 40)
    model = BiasedMF(MFConfig(dim=4, l2=0.05, global_mean=float(dataset.interactions.ratings.mean())), 40, 30)
    return model, data


def test_round_aggregates_exactly_the_clients_that_arrive():
    model, data = _setup()
    participation = Participation(dropout=0.25, speed_sigma=0.5, deadline_quantile=0.7)
    local = LocalTraining(1, 0.05, 4)
    settings = FedAvgSettings(local=local, client_fraction=0.5, participation=participation, backend="reference")
    start = ServerState(0, model.init_params(torch.Generator().manual_seed(0)))
    after, stats = run_round(model, start, data, settings, SEED)

    cohort = sample_cohort(data.num_clients, 0.5, SEED, 0)
    arrivals = decide_arrivals(cohort, data.sizes[cohort], participation, 1, SEED, 0)
    assert stats.dropped == arrivals.dropped.sum() > 0 and stats.late == arrivals.late.sum() > 0
    assert stats.clients == len(cohort) and stats.examples == data.sizes[cohort].sum()
    # the same round with only the arrived clients in the cohort: identical shared parameters
    arrived = cohort[arrivals.used]
    alone = train_cohort_reference(model, start.params, data, arrived, local, SEED, 0)
    expected, _ = server_update(model, start, alone.update, FedAvgSettings(local=local), SEED)
    for name in ("item_vec", "item_bias", "global_bias"):
        torch.testing.assert_close(after.params[name], expected.params[name], atol=1e-6, rtol=0)
    # private rows: dropped clients keep their old rows, late ones (they did train) keep their new rows
    changed = (after.params["user_vec"] != start.params["user_vec"]).any(1).numpy()
    late = cohort[arrivals.late]
    assert not changed[cohort[arrivals.dropped]].any()
    assert changed[late].all() and changed[arrived].all()
    assert changed.sum() == len(arrived) + len(late)


def test_backends_agree_under_stragglers_and_dropouts():
    model, data = _setup()
    participation = Participation(dropout=0.2, speed_sigma=1.0, deadline_quantile=0.8, late="downweight")
    states = {}
    for backend in ("reference", "vectorized"):
        settings = FedAvgSettings(local=LocalTraining(2, 0.05, 4), client_fraction=0.6, participation=participation,
                                  client_weighting="sqrt", backend=backend)
        state = ServerState(0, model.init_params(torch.Generator().manual_seed(5)))
        for _ in range(3):
            state, _ = run_round(model, state, data, settings, SEED)
        states[backend] = state
    for name, value in states["reference"].params.items():
        torch.testing.assert_close(states["vectorized"].params[name], value, atol=1e-5, rtol=0)
