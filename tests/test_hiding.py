"""Hiding which items a client touched: dense uploads aggregate like sparse ones; pseudo-items add
exactly n untouched rows per client whose values are a per-coordinate bootstrap of its real rows."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedrec.errors import FedrecError
from fedrec.federated.aggregation import ROW_WEIGHTINGS, CohortUpdate, aggregate
from fedrec.models.mf import BiasedMF, MFConfig
from fedrec.federated.cohort import ClientData
from fedrec.federated.local import LocalTraining
from fedrec.federated.server import full_upload_bytes
from fedrec.federated.vectorized import train_cohort_vectorized
from fedrec.privacy.hiding import (HidingSettings, add_pseudo_items, apply_hiding, dense_upload,
                                   hidden_upload_bytes, select_clients, virtual_example_values)


def make_update(touched: list[list[int]], dim: int = 3, seed: int = 0) -> CohortUpdate:
    """A sparse MF-shaped upload: client k sends rows for the items in ``touched[k]``."""
    gen = torch.Generator().manual_seed(seed)
    items = torch.tensor([i for rows in touched for i in rows], dtype=torch.int64)
    clients = torch.tensor([k for k, rows in enumerate(touched) for _ in rows], dtype=torch.int64)
    count = len(items)
    return CohortUpdate(
        row_items=items, row_clients=clients,
        row_counts=torch.randint(1, 4, (count,), generator=gen).float(),
        row_deltas={"item_vec": torch.randn(count, dim, generator=gen), "item_bias": torch.randn(count, 1, generator=gen)},
        dense_deltas={"global_bias": torch.randn(len(touched), 1, generator=gen)},
        client_sizes=torch.randint(1, 20, (len(touched),), generator=gen).float(),
    )


touched_sets = st.lists(st.lists(st.integers(0, 7), min_size=1, max_size=8, unique=True), min_size=1, max_size=5)


@settings(max_examples=40, deadline=None)
@given(touched=touched_sets, seed=st.integers(0, 1000), weighting=st.sampled_from(ROW_WEIGHTINGS))
def test_dense_upload_aggregates_like_sparse(touched, seed, weighting):
    update = make_update(touched, seed=seed)
    dense, dense_weighting = dense_upload(update, 8, weighting)
    assert dense.row_items.shape[0] == len(touched) * 8  # one row per (client, item)
    expected = aggregate(update, 8, weighting)
    got = aggregate(dense, 8, dense_weighting)
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-5, atol=1e-6)


def test_dense_upload_rows_are_zero_where_untouched_and_bytes_count_every_row():
    update = make_update([[1, 4], [0]])
    dense, _ = dense_upload(update, 5, "row_count")
    vec = dense.row_deltas["item_vec"].reshape(2, 5, 3)
    assert torch.equal(vec[0, 1], update.row_deltas["item_vec"][0]) and torch.equal(vec[1, 0], update.row_deltas["item_vec"][2])
    nonzero = vec.abs().sum(-1) > 0
    assert nonzero.tolist() == [[False, True, False, False, True], [True, False, False, False, False]]
    model = BiasedMF(MFConfig(dim=3), num_users=2, num_items=5)
    # every client: 5 rows x (3 + 1) floats + the global bias, 4 bytes each; no row indices
    assert hidden_upload_bytes(model, dense, "dense") == full_upload_bytes(model, 2) == 2 * (5 * 4 + 1) * 4
    assert hidden_upload_bytes(model, update, "none") == 3 * (4 + 4 * 4) + 2 * 4


def test_pseudo_items_add_exactly_n_untouched_rows_per_client():
    touched = [[0, 3, 5], [2], [1, 2, 3, 4, 6]]
    update = make_update(touched)
    hidden = add_pseudo_items(update, 10, HidingSettings("pseudo", pseudo_items=4), seed=7, round_index=2,
                              clients=np.array([10, 20, 30]))
    for k, real in enumerate(touched):
        rows = hidden.row_clients == k
        items = hidden.row_items[rows].tolist()
        assert len(items) == len(real) + 4 and len(set(items)) == len(items)
        assert set(real) <= set(items)
    # the real rows are unchanged
    for r in range(len(update.row_items)):
        k, i = int(update.row_clients[r]), int(update.row_items[r])
        match = (hidden.row_clients == k) & (hidden.row_items == i)
        assert torch.equal(hidden.row_deltas["item_vec"][match][0], update.row_deltas["item_vec"][r])
        assert float(hidden.row_counts[match]) == float(update.row_counts[r])


def test_pseudo_ratio_is_relative_to_real_rows_and_capped_at_untouched_items():
    setting = HidingSettings("pseudo", pseudo_ratio=1.5)
    assert setting.pseudo_count(np.array([2, 4, 9]), 10).tolist() == [3, 6, 1]
    assert HidingSettings("pseudo", pseudo_items=5).pseudo_count(np.array([1, 8]), 10).tolist() == [5, 2]


def test_bootstrap_pseudo_values_are_a_per_coordinate_bootstrap_of_the_clients_real_rows():
    # one client with two real rows: every fake coordinate is one of the two real values of that
    # coordinate, each with probability 1/2; fake counts are drawn from the real counts.
    update = make_update([[0, 1]], dim=4, seed=3)
    update.row_counts = torch.tensor([1.0, 3.0])
    hidden = add_pseudo_items(update, 2002, HidingSettings("pseudo", pseudo_items=2000), 0, 0, np.array([5]))
    fake = ~torch.isin(hidden.row_items, torch.tensor([0, 1]))
    assert int(fake.sum()) == 2000
    real_vec, fake_vec = update.row_deltas["item_vec"], hidden.row_deltas["item_vec"][fake]
    is_first = fake_vec == real_vec[0]
    assert torch.all(is_first | (fake_vec == real_vec[1]))
    share = is_first.double().mean(0)  # per coordinate; binomial(2000, 1/2) has sd 0.011
    assert torch.all((share - 0.5).abs() < 0.05)
    counts = hidden.row_counts[fake]
    assert set(counts.tolist()) == {1.0, 3.0} and abs(float((counts == 1).double().mean()) - 0.5) < 0.05
    # the fakes' norms match the real rows' norms on average (same per-coordinate second moments)
    assert abs(float(fake_vec.pow(2).sum(1).mean()) / float(real_vec.pow(2).sum(1).mean()) - 1) < 0.1


def test_pseudo_items_are_seeded_by_seed_round_and_client_not_by_the_cohort():
    touched = [[0, 1], [2, 3], [4]]
    update = make_update(touched)
    setting = HidingSettings("pseudo", pseudo_items=3)
    whole = add_pseudo_items(update, 12, setting, 1, 4, np.array([3, 8, 9]))
    alone = add_pseudo_items(select_clients(update, np.array([1])), 12, setting, 1, 4, np.array([8]))
    mine = whole.row_clients == 1
    assert torch.equal(whole.row_items[mine], alone.row_items)
    assert torch.equal(whole.row_deltas["item_vec"][mine], alone.row_deltas["item_vec"])
    later = add_pseudo_items(update, 12, setting, 1, 5, np.array([3, 8, 9]))
    assert torch.equal(later.row_items, whole.row_items)  # one fixed pseudo-item set per client ...
    assert not torch.equal(later.row_deltas["item_vec"], whole.row_deltas["item_vec"])  # ... with fresh values
    fresh = HidingSettings("pseudo", pseudo_items=3, per_round=True)
    rounds = [add_pseudo_items(update, 12, fresh, 1, r, np.array([3, 8, 9])).row_items for r in range(4)]
    assert any(not torch.equal(rounds[0], other) for other in rounds[1:])
    other_seed = add_pseudo_items(update, 12, setting, 2, 4, np.array([3, 8, 9]))
    assert not torch.equal(other_seed.row_items, whole.row_items)


def test_pseudo_items_change_the_aggregate_only_on_the_fake_rows():
    update = make_update([[0, 1], [1, 2]])
    hidden, weighting = apply_hiding(update, 6, HidingSettings("pseudo", pseudo_items=2, pseudo_values="bootstrap"),
                                     "row_count", 0, 0, np.array([0, 1]))
    before, after = aggregate(update, 6, "row_count"), aggregate(hidden, 6, weighting)
    fake_items = set(hidden.row_items.tolist()) - {0, 1, 2}
    changed = {i for i in range(6) if not torch.allclose(before["item_vec"][i], after["item_vec"][i])}
    assert changed and changed <= fake_items | {0, 1, 2}
    assert changed & fake_items  # a row nobody touched now moves: the accuracy cost


def test_none_returns_the_upload_unchanged():
    update = make_update([[0, 1]])
    same, weighting = apply_hiding(update, 4, HidingSettings(), "client_size", 0, 0, np.array([0]))
    assert same is update and weighting == "client_size"


def test_virtual_pseudo_items_are_one_sgd_step_on_a_rating_with_a_real_error():
    # two clients of biased MF, one local step each (batch 8 >= their sizes): every real row and
    # every fake row is -lr/B (2 e p_u + 2 l2 q_i) for the item vector, -lr/B (2 e + 2 l2 b_i) for the bias,
    # and each fake's error e is one of its client's real errors.
    data = ClientData(offsets=np.array([0, 3, 5]), users=np.array([0, 0, 0, 1, 1]), items=np.array([0, 2, 3, 1, 2]),
                      targets=np.array([5, 3, 4, 2, 5], dtype=np.float32))
    model = BiasedMF(MFConfig(dim=3, l2=0.05, global_mean=3.5), num_users=2, num_items=8)
    params = model.init_params(torch.Generator().manual_seed(0))
    local = LocalTraining(epochs=1, lr=0.1, batch_size=8)
    cohort = np.array([0, 1])
    result = train_cohort_vectorized(model, params, data, cohort, local, 0, 0)
    values = virtual_example_values(model, params, data, cohort, local, seed=3, round_index=0)
    hidden, _ = apply_hiding(result.update, 8, HidingSettings("pseudo", pseudo_items=4), "row_count", 3, 0, cohort, values)
    assert hidden.row_items.shape[0] == 5 + 8
    l2, lr = 0.05, 0.1
    q = params["item_vec"][hidden.row_items]
    b = params["item_bias"][hidden.row_items, 0]
    size = torch.tensor([3.0, 2.0])[hidden.row_clients]
    error = -size / (2 * lr) * hidden.row_deltas["item_bias"][:, 0] - l2 * b
    p_u = params["user_vec"][hidden.row_clients]  # user k is client k
    expected_dq = -lr / size[:, None] * (2 * error[:, None] * p_u + 2 * l2 * q)
    torch.testing.assert_close(hidden.row_deltas["item_vec"], expected_dq, atol=1e-6, rtol=1e-4)
    mu, b_u = params["global_bias"][0], params["user_bias"][:, 0]
    real_errors = {k: np.array([float(mu + b_u[k] + params["item_bias"][i, 0] + params["user_vec"][k] @ params["item_vec"][i] - r)
                                for i, r in zip(data.items[data.client_slice(k)], data.targets[data.client_slice(k)])])
                   for k in (0, 1)}
    touched = {0: {0, 2, 3}, 1: {1, 2}}
    for r in range(len(hidden.row_items)):
        k, i = int(hidden.row_clients[r]), int(hidden.row_items[r])
        if i not in touched[k]:
            assert np.abs(real_errors[k] - float(error[r])).min() < 1e-4


def _multi_step_mf_cohort():
    """Two clients of biased MF trained one example per step (4 and 3 steps), with the path recorded."""
    data = ClientData(offsets=np.array([0, 4, 7]), users=np.array([0, 0, 0, 0, 1, 1, 1]),
                      items=np.array([0, 2, 3, 5, 1, 2, 6]), targets=np.array([5, 3, 4, 1, 2, 5, 4], dtype=np.float32))
    model = BiasedMF(MFConfig(dim=3, l2=0.05, global_mean=3.5), num_users=2, num_items=10)
    params = model.init_params(torch.Generator().manual_seed(1))
    local = LocalTraining(epochs=1, lr=0.2, batch_size=1)
    return data, model, params, local, np.array([0, 1])


@pytest.mark.parametrize("backend", ["vectorized", "reference"])
def test_recorded_private_path_is_the_rows_before_each_local_step(backend):
    from fedrec.federated.server import BACKENDS

    data, model, params, local, cohort = _multi_step_mf_cohort()
    result = BACKENDS[backend](model, params, data, cohort, local, 0, 0, record_path=True)
    path = result.private_path["user_vec"]  # (T + 1, U, d)
    assert path.shape == (5, 2, 3)
    torch.testing.assert_close(path[0], params["user_vec"][result.users])  # before step 0: the start
    torch.testing.assert_close(path[-1], result.private_rows["user_vec"])  # after the last step: the end
    torch.testing.assert_close(path[3, 1], path[4, 1])  # client 1 has 3 steps: its rows then stay
    assert not torch.allclose(path[1], path[2])  # every step moves the user vector
    other = BACKENDS["reference" if backend == "vectorized" else "vectorized"](
        model, params, data, cohort, local, 0, 0, record_path=True)
    torch.testing.assert_close(other.private_path["user_vec"], path, atol=1e-6, rtol=1e-5)
    assert BACKENDS[backend](model, params, data, cohort, local, 0, 0).private_path is None


def test_virtual_fakes_use_a_user_vector_from_the_clients_own_sgd_path():
    # Every real item-vector row is -lr/B_k (2 e p_u(k) + 2 l2 q_i), p_u(k) the user vector before the client's
    # step k and B_k that step's batch length (batches of 2: client 1's last batch has 1 example); so is every
    # fake row, with p_u(k) read from the recorded path (not an interpolation between the start and the end,
    # which the audit's direction scorer separates) and the B_k of its step.
    data, model, params, _, cohort = _multi_step_mf_cohort()
    local = LocalTraining(epochs=1, lr=0.2, batch_size=2)
    result = train_cohort_vectorized(model, params, data, cohort, local, 0, 0, record_path=True)
    values = virtual_example_values(model, params, data, cohort, local, seed=3, round_index=0, trained=result)
    hidden, _ = apply_hiding(result.update, 10, HidingSettings("pseudo", pseudo_items=6), "row_count", 3, 0, cohort,
                             values)
    l2, lr = 0.05, 0.2
    path = result.private_path["user_vec"]
    batch_lengths = {0: [2, 2], 1: [2, 1]}
    touched = {0: {0, 2, 3, 5}, 1: {1, 2, 6}}
    fake_steps = {0: set(), 1: set()}
    for r in range(len(hidden.row_items)):
        k, i = int(hidden.row_clients[r]), int(hidden.row_items[r])
        q, b = params["item_vec"][i], params["item_bias"][i, 0]
        fits = []
        for step, length in enumerate(batch_lengths[k]):
            error = -length * hidden.row_deltas["item_bias"][r, 0] / (2 * lr) - l2 * b
            implied_user = (-length * hidden.row_deltas["item_vec"][r] / lr - 2 * l2 * q) / (2 * error)
            if float((implied_user - path[step, k]).norm()) < 1e-3:
                fits.append(step)
        assert fits, (k, i)  # the row is one SGD step from the client's real state at one of its steps
        if i not in touched[k]:
            fake_steps[k].update(fits)
    assert fake_steps[1] == {0, 1}  # fakes at both steps, the short last batch included


def test_virtual_values_need_a_rating_model():
    from fedrec.models.bpr import BPRConfig, BPRMF

    model = BPRMF(BPRConfig(dim=2), num_users=2, num_items=4)
    data = ClientData(np.array([0, 1]), np.array([0]), np.array([1]), np.array([1.0], dtype=np.float32))
    with pytest.raises(FedrecError, match="bootstrap"):
        virtual_example_values(model, {}, data, np.array([0]), LocalTraining(), 0, 0)


@pytest.mark.parametrize("kwargs", [dict(mode="pseudo"), dict(mode="hidden"), dict(mode="pseudo", pseudo_items=-1),
                                    dict(mode="pseudo", pseudo_items=1, pseudo_values="made-up"),
                                    dict(mode="pseudo", pseudo_ratio=float("nan"))])
def test_bad_hiding_settings_are_one_line_errors(kwargs):
    with pytest.raises(FedrecError):
        HidingSettings(**kwargs)
