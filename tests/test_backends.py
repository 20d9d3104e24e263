"""The vectorised backend computes exactly what the reference backend computes client by client."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedrec.data.dataset import Interactions
from fedrec.data.synthetic import make_synthetic
from fedrec.data.partition import random_silos
from fedrec.federated.cohort import ClientData, cohort_examples, local_schedule, sample_cohort
from fedrec.federated.local import LocalTraining
from fedrec.federated.server import FedAvgSettings, ServerState, run_round
from fedrec.federated.server_opt import ServerOptimizer
from fedrec.models.mf import BiasedMF, MFConfig


def _setup(num_users=60, num_items=40, silos=None):
    dataset = make_synthetic(num_users=num_users, num_items=num_items, mean_interactions=12, seed=3)
    train = dataset.interactions
    if silos:
        partition = random_silos(num_users, silos, seed=1)
        data = ClientData.from_interactions(train, partition.client_of_user, partition.num_clients)
    else:
        data = ClientData.from_interactions(train, np.arange(num_users), num_users)
    model = BiasedMF(MFConfig(dim=6, l2=0.05, global_mean=float(train.ratings.mean())), num_users, num_items)
    return model, data


def _run(model, data, backend, rounds=3, **kwargs):
    settings = FedAvgSettings(backend=backend, **kwargs)
    state = ServerState(0, model.init_params(torch.Generator().manual_seed(5)))
    for _ in range(rounds):
        state, _ = run_round(model, state, data, settings, seed=11)
    return state


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(local=LocalTraining(epochs=2, lr=0.05, batch_size=4), client_fraction=0.5),
        dict(local=LocalTraining(epochs=1, lr=0.1, batch_size=1, private_lr=0.03), row_weighting="client_size"),
        dict(local=LocalTraining(epochs=3, lr=0.05, batch_size=7), row_weighting="fedavg",
             server=ServerOptimizer("adam", lr=0.05)),
    ],
)
def test_vectorized_equals_reference_per_user(kwargs):
    model, data = _setup()
    ref = _run(model, data, "reference", **kwargs)
    vec = _run(model, data, "vectorized", **kwargs)
    assert ref.round == vec.round == 3
    for name in ref.params:
        torch.testing.assert_close(vec.params[name], ref.params[name], atol=1e-5, rtol=0)
    for name in ref.optimizer_state:
        torch.testing.assert_close(vec.optimizer_state[name], ref.optimizer_state[name], atol=1e-5, rtol=1e-4)


def test_vectorized_equals_reference_cross_silo():
    model, data = _setup(silos=5)
    kwargs = dict(local=LocalTraining(epochs=1, lr=0.05, batch_size=16))
    ref = _run(model, data, "reference", **kwargs)
    vec = _run(model, data, "vectorized", **kwargs)
    for name in ref.params:
        torch.testing.assert_close(vec.params[name], ref.params[name], atol=1e-5, rtol=0)


def test_training_moves_only_sampled_users_and_touched_items():
    model, data = _setup()
    settings = FedAvgSettings(local=LocalTraining(1, 0.05, 8), client_fraction=0.25)
    start = ServerState(0, model.init_params(torch.Generator().manual_seed(0)))
    before = {k: v.clone() for k, v in start.params.items()}
    after, stats = run_round(model, start, data, settings, seed=2)
    cohort = sample_cohort(data.num_clients, 0.25, 2, 0)
    assert stats.clients == len(cohort) == 15
    changed_users = torch.nonzero((after.params["user_vec"] != before["user_vec"]).any(1)).flatten().numpy()
    assert set(changed_users) <= set(cohort.tolist())
    touched = np.unique(data.items[np.concatenate([np.arange(data.offsets[c], data.offsets[c + 1]) for c in cohort])])
    changed_items = torch.nonzero((after.params["item_vec"] != before["item_vec"]).any(1)).flatten().numpy()
    assert set(changed_items) == set(touched.tolist())


def test_schedule_covers_every_example_once_per_epoch_in_batches():
    _, data = _setup()
    cohort = np.array([1, 4, 9, 30])
    examples = cohort_examples(data, cohort)
    schedule = local_schedule(examples, cohort, epochs=2, batch_size=3, seed=0, round_index=0)
    assert len(schedule.example) == 2 * len(examples.example_index)
    for epoch in range(2):
        chosen = schedule.example[schedule.epoch == epoch]
        assert sorted(chosen.tolist()) == list(range(len(examples.example_index)))
    for step in range(len(schedule.step_bounds) - 1):
        part = slice(schedule.step_bounds[step], schedule.step_bounds[step + 1])
        clients = examples.cohort_position[schedule.example[part]]
        for client in np.unique(clients):
            in_batch = int((clients == client).sum())
            assert in_batch <= 3
            np.testing.assert_allclose(schedule.weight[part][clients == client], 1.0 / in_batch)


def test_cohort_sampling_is_deterministic_fixed_size_and_varies_by_round():
    a = sample_cohort(100, 0.1, seed=4, round_index=0)
    assert len(a) == 10 and np.array_equal(a, np.sort(a))
    assert np.array_equal(a, sample_cohort(100, 0.1, seed=4, round_index=0))
    assert not np.array_equal(a, sample_cohort(100, 0.1, seed=4, round_index=1))
    eligible = np.zeros(100, dtype=bool)
    eligible[:20] = True
    assert set(sample_cohort(100, 0.1, 4, 0, eligible).tolist()) <= set(range(20))


@pytest.mark.parametrize(
    "name, options",
    [
        ("bpr", dict(dim=6, negatives=2)),
        ("bpr", dict(dim=6, negatives=3, loss="softmax")),
        ("ncf", dict(variant="neumf", dim=4, layers=(8, 4), negatives=3)),
        ("ncf", dict(variant="gmf", dim=4, negatives=1, private_head=True)),
    ],
)
def test_vectorized_equals_reference_implicit_models(name, options):
    """Negatives sampled on the client and per-client copies of dense layers agree across backends."""
    from fedrec.models.registry import build_model

    dataset = make_synthetic(num_users=40, num_items=30, mean_interactions=10, seed=3)
    data = ClientData.from_interactions(dataset.interactions, np.arange(40), 40, num_items=30)
    model = build_model(name, options, 40, 30)
    kwargs = dict(local=LocalTraining(epochs=2, lr=0.1, batch_size=4), client_fraction=0.5,
                  server=ServerOptimizer("adam", lr=0.01))
    ref = _run(model, data, "reference", rounds=2, **kwargs)
    vec = _run(model, data, "vectorized", rounds=2, **kwargs)
    for key in ref.params:
        torch.testing.assert_close(vec.params[key], ref.params[key], atol=1e-5, rtol=0)


# -- per-step gradient clipping (train.local_clip_norm) -------------------------------------------------------


@pytest.mark.parametrize("clip", [0.05, 0.5, 100.0])
def test_clipped_steps_agree_across_backends_per_user_and_cross_silo(clip):
    for silos in (None, 4):  # cross-silo: a client's step holds several users' private rows
        model, data = _setup(silos=silos)
        kwargs = dict(local=LocalTraining(epochs=2, lr=0.2, batch_size=5, clip_norm=clip), client_fraction=0.5)
        ref = _run(model, data, "reference", **kwargs)
        vec = _run(model, data, "vectorized", **kwargs)
        for name in ref.params:
            torch.testing.assert_close(vec.params[name], ref.params[name], atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    "name, options, prox_mu",
    [
        ("bpr", dict(dim=6, negatives=4), 0.0),  # several copies of one item row in a step (repeated negatives)
        ("ncf", dict(variant="neumf", dim=4, layers=(8, 4), negatives=3), 0.0),
        ("ncf", dict(variant="neumf", dim=4, layers=(8, 4), negatives=2), 0.5),  # FedProx's pull after clipping
        ("ncf", dict(variant="gmf", dim=4, negatives=2, private_head=True), 0.0),  # a private dense head per user
    ],
)
def test_clipped_steps_agree_across_backends_implicit_models(name, options, prox_mu):
    from fedrec.models.registry import build_model

    dataset = make_synthetic(num_users=40, num_items=12, mean_interactions=6, seed=3)
    data = ClientData.from_interactions(dataset.interactions, np.arange(40), 40, num_items=12)
    model = build_model(name, options, 40, 12)
    kwargs = dict(local=LocalTraining(epochs=2, lr=0.5, batch_size=4, clip_norm=0.1, prox_mu=prox_mu),
                  client_fraction=0.5, server=ServerOptimizer("adam", lr=0.01))
    ref = _run(model, data, "reference", rounds=2, **kwargs)
    vec = _run(model, data, "vectorized", rounds=2, **kwargs)
    unclipped = _run(model, data, "vectorized", rounds=2, **{**kwargs, "local": LocalTraining(
        epochs=2, lr=0.5, batch_size=4, prox_mu=prox_mu)})
    for key in ref.params:
        torch.testing.assert_close(vec.params[key], ref.params[key], atol=1e-5, rtol=0)
    assert any(not torch.allclose(unclipped.params[k], vec.params[k], atol=1e-4) for k in ref.params)  # it clipped


def test_clip_factors_match_a_brute_force_norm_per_client():
    from fedrec.federated.local import clip_factors
    from fedrec.models.base import ParamKind

    gen = torch.Generator().manual_seed(0)
    groups, width, slots = 3, 4, 2
    real = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1]], dtype=torch.bool)
    user_index = torch.tensor([[0, 0, 0, 0], [1, 1, 0, 0], [2, 2, 2, 2]]).reshape(-1)  # padding points at row 0
    item_index = torch.randint(0, 3, (groups, width, slots), generator=gen) + 3 * torch.arange(groups).view(-1, 1, 1)
    item_index[~real] = 0  # padding: row 0, which belongs to client 0
    user_grad = torch.randn(groups, width, 5, generator=gen) * real.unsqueeze(-1)
    item_grad = torch.randn(groups, width, slots, 5, generator=gen) * real.view(groups, width, 1, 1)
    dense_grad = torch.randn(groups, 2, 3, generator=gen)
    factor = clip_factors([user_grad, item_grad, dense_grad],
                          [ParamKind.PRIVATE_ROWS, ParamKind.SHARED_ROWS, ParamKind.SHARED_DENSE],
                          {ParamKind.PRIVATE_ROWS: user_index, ParamKind.SHARED_ROWS: item_index.reshape(-1)}, real,
                          clip_norm=2.0)
    for g in range(groups):  # sum each row's entries into a table, then take the client's norm
        users = torch.zeros(3, 5).index_add_(0, user_index.view(groups, width)[g], user_grad[g])
        items = torch.zeros(9, 5).index_add_(0, item_index[g].reshape(-1), item_grad[g].reshape(-1, 5))
        norm = torch.cat([users.reshape(-1), items.reshape(-1), dense_grad[g].reshape(-1)]).norm()
        assert float(factor[g]) == pytest.approx(min(1.0, 2.0 / (float(norm) + 1e-6)), rel=1e-5)


def test_local_clip_norm_is_a_federated_setting():
    from fedrec.config import load_config
    from fedrec.errors import FedrecError

    with pytest.raises((FedrecError, ValueError), match="train.local_clip_norm bounds the clients' local SGD steps"):
        load_config(None, ["train.mode=centralized", "train.local_clip_norm=1.0"])
    with pytest.raises((FedrecError, ValueError), match="local_clip_norm"):
        load_config(None, ["train.local_clip_norm=0"])


def test_fedrec_train_clips_local_steps(tmp_path):
    from fedrec.config import load_config
    from fedrec.runtime.trainer import train

    base = ["data.num_users=60", "data.num_items=40", "model.dim=4", "train.rounds=2", "eval.finetune_epochs=1"]
    plain = train(load_config(None, base), tmp_path / "plain")
    clipped = train(load_config(None, [*base, "train.local_clip_norm=0.01"]), tmp_path / "clipped")
    loose = train(load_config(None, [*base, "train.local_clip_norm=1e6"]), tmp_path / "loose")
    assert clipped["rmse"] != plain["rmse"] and clipped["finetuned_rmse"] != plain["finetuned_rmse"]
    assert loose["rmse"] == pytest.approx(plain["rmse"], abs=1e-6)  # a bound never reached changes nothing
