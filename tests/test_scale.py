"""The population-scale fast paths compute exactly what the plain versions compute, and the large synthetic generator."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedrec.data.synthetic import synthetic_population
from fedrec.errors import FedrecError
from fedrec.federated import rng
from fedrec.federated.cohort import (CohortExamples, cohort_examples, local_schedule, order_within_groups,
                                     sample_cohort, shuffle_keys, smallest_keys)
from fedrec.federated.local import LocalTraining
from fedrec.federated.server import FedAvgSettings, ServerState, run_round
from fedrec.federated.server_opt import ServerOptimizer
from fedrec.models.mf import BiasedMF, MFConfig


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 5), min_size=1, max_size=60), st.integers(0, 70))
def test_smallest_keys_is_the_head_of_a_stable_argsort(values, count):
    keys = np.asarray(values, dtype=np.uint64)  # few distinct values: many ties at the threshold
    expected = np.sort(np.argsort(keys, kind="stable")[:count])
    np.testing.assert_array_equal(smallest_keys(keys, count), expected)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 40), st.integers(0, 2**64 - 1)), min_size=0, max_size=80),
       st.booleans())
def test_order_within_groups_is_lexsort(pairs, few_keys):
    groups = np.asarray([g for g, _ in pairs], dtype=np.int64)
    keys = np.asarray([k % 3 if few_keys else k for _, k in pairs], dtype=np.uint64)  # few_keys: ties, fallback
    np.testing.assert_array_equal(order_within_groups(groups, keys), np.lexsort((keys, groups)))


def _sample_cohort_by_sorting(num_clients, fraction, seed, round_index, eligible=None):
    """sample_cohort as first written: a full stable argsort of every candidate's key."""
    candidates = np.arange(num_clients) if eligible is None else np.flatnonzero(eligible)
    if fraction >= 1.0:
        return candidates
    size = max(1, int(round(fraction * num_clients)))
    keys = rng.hash64(seed, rng.STREAM_COHORT, round_index, candidates)
    return np.sort(candidates[np.argsort(keys, kind="stable")[:size]])


@pytest.mark.parametrize("num_clients,fraction", [(1, 0.5), (7, 0.3), (1000, 0.01), (1000, 0.1), (20_000, 0.05)])
def test_sample_cohort_unchanged(num_clients, fraction):
    eligible = np.random.default_rng(num_clients).random(num_clients) < 0.7
    for round_index in range(3):
        np.testing.assert_array_equal(sample_cohort(num_clients, fraction, 5, round_index),
                                      _sample_cohort_by_sorting(num_clients, fraction, 5, round_index))
        np.testing.assert_array_equal(sample_cohort(num_clients, fraction, 5, round_index, eligible),
                                      _sample_cohort_by_sorting(num_clients, fraction, 5, round_index, eligible))


def _schedule_by_lexsort(examples: CohortExamples, cohort, epochs, batch_size, seed, round_index):
    """local_schedule as first written (lexsort per epoch, stable int64 argsort of the steps)."""
    sizes = examples.client_sizes
    steps_per_epoch = -(-sizes // batch_size)
    pos = examples.cohort_position
    first = np.zeros(len(sizes), dtype=np.int64)
    np.cumsum(sizes[:-1], out=first[1:])
    parts_step, parts_weight = [], []
    for epoch in range(epochs):
        keys = shuffle_keys(seed, round_index, cohort[pos], epoch, examples.position_in_client)
        order = np.lexsort((keys, pos))
        rank = np.empty_like(order)
        rank[order] = np.arange(len(order)) - first[pos[order]]
        batch = rank // batch_size
        parts_step.append(epoch * steps_per_epoch[pos] + batch)
        parts_weight.append(1.0 / np.minimum(batch_size, sizes[pos] - batch * batch_size))
    step = np.concatenate(parts_step)
    order = np.argsort(step, kind="stable")
    return order % len(pos), order // len(pos), np.concatenate(parts_weight)[order].astype(np.float32), step[order]


@pytest.mark.parametrize("epochs,batch_size", [(1, 8), (3, 2)])
def test_local_schedule_unchanged(epochs, batch_size):
    data = synthetic_population(300, num_items=60, mean_interactions=12, seed=4)
    cohort = sample_cohort(data.num_clients, 0.3, 1, 2)
    examples = cohort_examples(data, cohort)
    schedule = local_schedule(examples, cohort, epochs, batch_size, 1, 2)
    example, epoch, weight, step = _schedule_by_lexsort(examples, cohort, epochs, batch_size, 1, 2)
    np.testing.assert_array_equal(schedule.example, example)
    np.testing.assert_array_equal(schedule.epoch, epoch)
    np.testing.assert_array_equal(schedule.weight, weight)
    np.testing.assert_array_equal(schedule.step_bounds, np.searchsorted(step, np.arange(step[-1] + 2)))


def _rounds(in_place: bool, rounds: int = 3):
    data = synthetic_population(500, num_items=50, mean_interactions=10, seed=2)
    model = BiasedMF(MFConfig(dim=8, global_mean=float(data.targets.mean())), 500, 50)
    settings = FedAvgSettings(local=LocalTraining(1, 0.05, 4), client_fraction=0.2,
                              server=ServerOptimizer("adam", 0.03), private_rows_in_place=in_place)
    start = model.init_params(torch.Generator().manual_seed(0))
    state = ServerState(0, {name: value.clone() for name, value in start.items()})
    first_user_table = state.params["user_vec"]
    for _ in range(rounds):
        state, _ = run_round(model, state, data, settings, seed=3)
    return start, first_user_table, state.params


def test_private_rows_in_place_gives_the_same_model():
    start, copied_from, copied = _rounds(in_place=False)
    _, written_into, in_place = _rounds(in_place=True)
    for name in copied:
        torch.testing.assert_close(in_place[name], copied[name], rtol=0, atol=0)
    assert not torch.equal(copied["user_vec"], start["user_vec"])  # the rounds trained user vectors
    torch.testing.assert_close(copied_from, start["user_vec"], rtol=0, atol=0)  # default: input left alone
    assert in_place["user_vec"].data_ptr() == written_into.data_ptr()  # in place: no new user table


def test_synthetic_population_shape_and_statistics():
    data = synthetic_population(4000, num_items=200, mean_interactions=30, seed=7, min_per_user=5)
    again = synthetic_population(4000, num_items=200, mean_interactions=30, seed=7, min_per_user=5)
    other = synthetic_population(4000, num_items=200, mean_interactions=30, seed=8, min_per_user=5)
    for name in ("offsets", "users", "items", "targets"):
        np.testing.assert_array_equal(getattr(data, name), getattr(again, name))  # deterministic for a seed
    assert not np.array_equal(data.items, other.items)
    sizes = data.sizes
    assert data.num_clients == 4000 and sizes.min() >= 5 and sizes.max() <= 100  # within [min, items // 2]
    assert (sizes == 100).any()  # heavy users (the exact draw over the catalogue) are covered
    assert abs(sizes.mean() - 30) < 3
    np.testing.assert_array_equal(data.users, np.repeat(np.arange(4000), sizes))  # one client per user, in order
    pairs = data.users * 200 + data.items
    assert len(np.unique(pairs)) == len(pairs)  # a user rates an item at most once
    assert set(np.unique(data.targets)) <= {1.0, 2.0, 3.0, 4.0, 5.0}
    counts = np.sort(np.bincount(data.items, minlength=200))[::-1]
    assert counts[:20].sum() > 4 * counts[-20:].sum()  # popularity skew


@pytest.mark.parametrize("kwargs,message", [({"num_users": 0}, "num_users"), ({"min_per_user": 60}, "min_per_user")])
def test_synthetic_population_bad_input(kwargs, message):
    with pytest.raises(FedrecError, match=message):
        synthetic_population(**{"num_users": 10, "num_items": 100, **kwargs})
