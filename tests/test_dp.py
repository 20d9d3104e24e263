"""Central DP-FedAvg: joint clipping, dense noise, fixed denominator, adaptive clipping, Poisson cohorts."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedrec.data.synthetic import make_synthetic
from fedrec.errors import FedrecError
from fedrec.federated.aggregation import CohortUpdate
from fedrec.federated.cohort import ClientData, sample_cohort
from fedrec.federated.server import FedAvgSettings, ServerState, empty_update, run_round, shared_shapes
from fedrec.federated.server_opt import ServerOptimizer
from fedrec.models.mf import BiasedMF, MFConfig
from fedrec.privacy.dp import (CentralDP, SharedShapes, adaptive_clip_norm, clip_update, noise_generator, private_mean,
                               sum_update, update_noise_multiplier, update_norms)
from fedrec.privacy.ldp import LocalDP

SHAPES = SharedShapes(rows={"q": (5, 2)}, dense={"w": (3,)})


def hand_update() -> CohortUpdate:
    # client 0 sends rows of items 0 and 3 and dense [0, 0, 1]; client 1 sends item 3 and dense [2, 0, 0]
    return CohortUpdate(
        row_items=torch.tensor([0, 3, 3]), row_clients=torch.tensor([0, 0, 1]), row_counts=torch.ones(3),
        row_deltas={"q": torch.tensor([[3.0, 0.0], [0.0, 4.0], [1.0, 1.0]])},
        dense_deltas={"w": torch.tensor([[0.0, 0.0, 1.0], [2.0, 0.0, 0.0]])}, client_sizes=torch.tensor([4.0, 2.0]),
    )


def test_norms_cover_the_whole_upload() -> None:
    # client 0: sqrt(9 + 16 + 1) ; client 1: sqrt(1 + 1 + 4)
    assert update_norms(hand_update()).tolist() == pytest.approx([math.sqrt(26), math.sqrt(6)])


def test_clipping_scales_each_client_jointly() -> None:
    clipped, norms = clip_update(hand_update(), clip_norm=2.0)
    scale0, scale1 = 2.0 / math.sqrt(26), 2.0 / math.sqrt(6)
    expected_rows = torch.tensor([[3 * scale0, 0], [0, 4 * scale0], [scale1, scale1]])
    torch.testing.assert_close(clipped.row_deltas["q"], expected_rows)
    torch.testing.assert_close(clipped.dense_deltas["w"], torch.tensor([[0, 0, scale0], [2 * scale1, 0, 0]]))
    assert update_norms(clipped).tolist() == pytest.approx([2.0, 2.0])
    unchanged, _ = clip_update(hand_update(), clip_norm=10.0)
    assert torch.equal(unchanged.row_deltas["q"], hand_update().row_deltas["q"])


def test_sum_is_dense_and_unweighted() -> None:
    sums = sum_update(hand_update(), SHAPES)
    assert sums["q"].tolist() == [[3.0, 0.0], [0.0, 0.0], [0.0, 0.0], [1.0, 5.0], [0.0, 0.0]]
    assert sums["w"].tolist() == [2.0, 0.0, 1.0]


def test_noiseless_mean_divides_by_the_expected_cohort_size() -> None:
    dp = CentralDP(noise_multiplier=0.0, clip_norm=100.0, expected_clients=8.0)
    deltas, clip = private_mean(hand_update(), SHAPES, dp, 100.0, noise_generator(0, 0))
    assert deltas["q"][3].tolist() == pytest.approx([1 / 8, 5 / 8])  # not / 2 clients: the cohort size is private
    assert deltas["w"].tolist() == pytest.approx([2 / 8, 0.0, 1 / 8])
    assert clip == 100.0


@st.composite
def random_updates(draw):
    num_clients = draw(st.integers(1, 5))
    num_rows, dim = draw(st.integers(1, 6)), draw(st.integers(1, 3))
    items, clients = [], []
    for client in range(num_clients):
        rows = draw(st.lists(st.integers(0, num_rows - 1), min_size=0, max_size=num_rows, unique=True))
        items += sorted(rows)
        clients += [client] * len(rows)
    floats = st.floats(-1e3, 1e3, allow_nan=False, width=32)
    rows = np.array(draw(st.lists(floats, min_size=len(items) * dim, max_size=len(items) * dim)), dtype=np.float32)
    dense = np.array(draw(st.lists(floats, min_size=num_clients * 2, max_size=num_clients * 2)), dtype=np.float32)
    update = CohortUpdate(
        row_items=torch.tensor(items, dtype=torch.int64), row_clients=torch.tensor(clients, dtype=torch.int64),
        row_counts=torch.ones(len(items)), row_deltas={"q": torch.from_numpy(rows).reshape(len(items), dim)},
        dense_deltas={"w": torch.from_numpy(dense).reshape(num_clients, 2)}, client_sizes=torch.ones(num_clients),
    )
    return update, draw(st.floats(1e-3, 1e3))


@settings(max_examples=80, deadline=None)
@given(random_updates())
def test_clipped_norms_never_exceed_the_bound(case) -> None:
    update, clip_norm = case
    clipped, norms = clip_update(update, clip_norm)
    after = update_norms(clipped)
    assert bool((after <= clip_norm * (1 + 1e-5)).all())
    # clipping only shrinks: clients already within the bound are untouched, the others land on it
    within = norms <= clip_norm
    torch.testing.assert_close(after[within], norms[within], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(after[~within], torch.full_like(after[~within], clip_norm), rtol=1e-5, atol=0.0)


def test_noise_stddev_on_zero_updates_chi_square() -> None:
    """Zero uploads: the mean is pure noise N(0, (zC/m)^2) on every coordinate (chi-square test)."""
    shapes = SharedShapes(rows={"q": (2000, 8)}, dense={"w": (50,), "b": (1,)})
    update = empty_update(shapes)  # zero uploads
    z, clip, m = 1.7, 0.3, 40.0
    deltas, _ = private_mean(update, shapes, CentralDP(z, clip, m), clip, noise_generator(3, 9))
    values = torch.cat([d.reshape(-1) for d in deltas.values()]).double()
    sigma = z * clip / m
    n = values.numel()
    statistic = float((values / sigma).square().sum())  # ~ chi2(n): mean n, sd sqrt(2n)
    assert abs(statistic - n) < 5 * math.sqrt(2 * n), (statistic, n)
    assert abs(float(values.mean())) < 5 * sigma / math.sqrt(n)


def test_noise_touches_every_coordinate() -> None:
    dp = CentralDP(noise_multiplier=1.0, clip_norm=1.0, expected_clients=2.0)
    deltas, _ = private_mean(hand_update(), SHAPES, dp, 1.0, noise_generator(0, 0))
    assert set(deltas) == {"q", "w"}
    assert deltas["q"].shape == (5, 2) and deltas["w"].shape == (3,)
    assert bool((deltas["q"] != 0).all()) and bool((deltas["w"] != 0).all())  # rows nobody sent are noised too


def test_noise_is_a_function_of_seed_and_round() -> None:
    dp = CentralDP(noise_multiplier=1.0, clip_norm=1.0, expected_clients=2.0)
    first, _ = private_mean(hand_update(), SHAPES, dp, 1.0, noise_generator(7, 3))
    again, _ = private_mean(hand_update(), SHAPES, dp, 1.0, noise_generator(7, 3))
    other, _ = private_mean(hand_update(), SHAPES, dp, 1.0, noise_generator(7, 4))
    assert torch.equal(first["q"], again["q"]) and not torch.equal(first["q"], other["q"])


def test_adaptive_clip_geometric_step() -> None:
    norms = torch.tensor([0.1, 0.2, 0.3, 5.0])  # 3 of 4 at or below C = 1
    generator = torch.Generator().manual_seed(0)
    noise = float(torch.randn((), generator=torch.Generator().manual_seed(0), dtype=torch.float64))
    new = adaptive_clip_norm(1.0, norms, target_quantile=0.5, clip_lr=0.2, count_stddev=0.1, expected_clients=4.0,
                             generator=generator)
    assert new == pytest.approx(math.exp(-0.2 * ((3 + 0.1 * noise) / 4 - 0.5)))
    # all below: shrink; none below: grow
    assert adaptive_clip_norm(1.0, torch.zeros(10), 0.5, 0.2, 1e-9, 10.0, torch.Generator()) == pytest.approx(math.exp(-0.1))
    assert adaptive_clip_norm(1.0, torch.full((10,), 9.0), 0.5, 0.2, 1e-9, 10.0, torch.Generator()) == pytest.approx(math.exp(0.1))


def test_adaptive_clip_tracks_the_target_quantile() -> None:
    norms = torch.from_numpy(np.random.default_rng(0).lognormal(0.0, 0.5, size=2000))
    clip = 0.05
    generator = torch.Generator().manual_seed(1)
    for _ in range(300):
        clip = adaptive_clip_norm(clip, norms, 0.3, 0.2, 100.0, 2000.0, generator)
    assert float((norms <= clip).double().mean()) == pytest.approx(0.3, abs=0.05)


def test_update_noise_split_of_andrew_et_al() -> None:
    # z_update^-2 + (2 sigma_b)^-2 = z^-2
    z, sigma_b = 1.0, 5.0
    z_update = update_noise_multiplier(z, sigma_b)
    assert z_update ** -2 + (2 * sigma_b) ** -2 == pytest.approx(z ** -2)
    assert CentralDP(z, 1.0, 100.0, adaptive=True).update_noise == pytest.approx(z_update)  # sigma_b = 100 / 20
    with pytest.raises(FedrecError, match="clip_count_stddev"):
        update_noise_multiplier(2.0, 0.9)


def test_poisson_sampling_frequency_and_determinism() -> None:
    n, q = 20_000, 0.3
    cohort = sample_cohort(n, q, seed=5, round_index=2, sampling="poisson")
    assert abs(len(cohort) - q * n) < 5 * math.sqrt(n * q * (1 - q))
    assert np.array_equal(cohort, sample_cohort(n, q, seed=5, round_index=2, sampling="poisson"))
    other = sample_cohort(n, q, seed=5, round_index=3, sampling="poisson")
    overlap = len(np.intersect1d(cohort, other)) / n  # independent rounds: P(both) = q^2
    assert overlap == pytest.approx(q * q, abs=0.02)
    eligible = np.arange(n) % 2 == 0
    assert set(sample_cohort(n, q, 5, 2, eligible, sampling="poisson")) <= set(np.flatnonzero(eligible))
    assert len(sample_cohort(10, 1.0, 0, 0, sampling="poisson")) == 10


def _setup():
    dataset = make_synthetic(num_users=50, num_items=30, mean_interactions=10, seed=3)
    train = dataset.interactions
    data = ClientData.from_interactions(train, np.arange(50), 50)
    model = BiasedMF(MFConfig(dim=4, l2=0.05, global_mean=float(train.ratings.mean())), 50, 30)
    return model, data


@pytest.mark.parametrize("privacy", [
    CentralDP(noise_multiplier=1.0, clip_norm=0.5, expected_clients=30.0, adaptive=True),
    LocalDP(epsilon=4.0, delta=1e-5, clip_norm=0.5),
])
def test_backends_agree_under_dp(privacy) -> None:
    """The DP path (Poisson cohort, clipping, noise, adaptive clip state) is the same for both backends."""
    model, data = _setup()
    sampling = "poisson" if isinstance(privacy, CentralDP) else "fixed"
    states = []
    for backend in ("reference", "vectorized"):
        settings = FedAvgSettings(backend=backend, client_fraction=0.6, sampling=sampling, privacy=privacy,
                                  server=ServerOptimizer("adam", 0.05))
        state = ServerState(0, model.init_params(torch.Generator().manual_seed(1)))
        for _ in range(3):
            state, stats = run_round(model, state, data, settings, seed=4)
        states.append(state)
    for name in states[0].params:
        torch.testing.assert_close(states[0].params[name], states[1].params[name], atol=1e-5, rtol=0)
    if isinstance(privacy, CentralDP):
        assert float(states[0].privacy_state["clip_norm"]) == pytest.approx(float(states[1].privacy_state["clip_norm"]))
        assert float(states[0].privacy_state["clip_norm"]) != 0.5  # it adapted


def test_empty_poisson_cohort_still_adds_noise() -> None:
    model, data = _setup()
    settings = FedAvgSettings(client_fraction=1e-6, sampling="poisson",
                              privacy=CentralDP(noise_multiplier=1.0, clip_norm=0.5, expected_clients=0.01))
    before = model.init_params(torch.Generator().manual_seed(1))
    state, stats = run_round(model, ServerState(0, before), data, settings, seed=0)
    assert stats.clients == 0
    for name in shared_shapes(model).rows:
        assert bool((state.params[name] != before[name]).all())
    assert torch.equal(state.params["user_vec"], before["user_vec"])
