"""FedProx on the recommender runtime: local loss + mu/2 ||w - w_global||^2 over the shared parameters."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedrec.data.partition import random_silos
from fedrec.data.synthetic import make_synthetic
from fedrec.federated.cohort import ClientData
from fedrec.federated.local import LocalTraining
from fedrec.federated.reference import train_cohort_reference
from fedrec.federated.server import FedAvgSettings, ServerState, run_round
from fedrec.federated.vectorized import train_cohort_vectorized
from fedrec.models.mf import BiasedMF, MFConfig
from fedrec.models.registry import build_model


def _one_client_two_steps():
    """User 0 rates item 0 twice (1.5): two local steps of batch 1, whatever the shuffle order."""
    data = ClientData(offsets=np.array([0, 2]), users=np.array([0, 0]), items=np.array([0, 0]),
                      targets=np.array([1.5, 1.5], dtype=np.float32))
    model = BiasedMF(MFConfig(dim=1, l2=0.0), num_users=1, num_items=2)
    params = {"user_vec": torch.tensor([[1.0]]), "user_bias": torch.tensor([[0.0]]),
              "item_vec": torch.tensor([[0.5], [0.3]]), "item_bias": torch.tensor([[0.0], [0.0]]),
              "global_bias": torch.tensor([0.0])}
    return model, data, params


@pytest.mark.parametrize("train", [train_cohort_reference, train_cohort_vectorized])
def test_two_local_steps_match_the_hand_computed_values(train):
    # Step 1 starts at w0, where the proximal gradient is 0: error -1, so q 0.7, p 1.1, biases 0.2.
    # Step 2: prediction 0.6 + 1.1 * 0.7 = 1.37, error -0.13; shared parameters add mu (w1 - w0):
    # q = 0.7 - 0.1 (2 (-0.13) 1.1 + 2 (0.7 - 0.5)) = 0.6886; item and global bias 0.2 - 0.1 (-0.26 + 0.4) = 0.186;
    # private rows have no proximal term: p = 1.1 + 0.1 * 0.26 * 0.7 = 1.1182, user bias 0.2 + 0.026 = 0.226.
    model, data, params = _one_client_two_steps()
    result = train(model, params, data, np.array([0]), LocalTraining(1, 0.1, 1, prox_mu=2.0), 0, 0)
    update = result.update
    assert update.row_items.tolist() == [0]  # only the item the client trained is uploaded
    assert update.row_deltas["item_vec"][0].item() == pytest.approx(0.6886 - 0.5, abs=1e-6)
    assert update.row_deltas["item_bias"][0].item() == pytest.approx(0.186, abs=1e-6)
    assert update.dense_deltas["global_bias"][0].item() == pytest.approx(0.186, abs=1e-6)
    assert result.private_rows["user_vec"].item() == pytest.approx(1.1182, abs=1e-6)
    assert result.private_rows["user_bias"].item() == pytest.approx(0.226, abs=1e-6)
    plain = train(model, params, data, np.array([0]), LocalTraining(1, 0.1, 1), 0, 0)
    # without the proximal term: q = 0.7 + 0.1 * 0.26 * 1.1 = 0.7286
    assert plain.update.row_deltas["item_vec"][0].item() == pytest.approx(0.7286 - 0.5, abs=1e-6)


def _run(model, data, settings, rounds=3):
    state = ServerState(0, model.init_params(torch.Generator().manual_seed(5)))
    for _ in range(rounds):
        state, _ = run_round(model, state, data, settings, seed=11)
    return state


@pytest.mark.parametrize("name, options, silos, local", [
    ("mf", dict(dim=6, l2=0.05), None, LocalTraining(epochs=2, lr=0.05, batch_size=4, prox_mu=0.5)),
    ("mf", dict(dim=6, l2=0.05), 4, LocalTraining(epochs=2, lr=0.05, batch_size=8, prox_mu=1.0, private_lr=0.02)),
    ("ncf", dict(variant="neumf", dim=4, layers=(8, 4), negatives=2), None,
     LocalTraining(epochs=2, lr=0.1, batch_size=5, prox_mu=0.3)),
])
def test_backends_agree_with_fedprox(name, options, silos, local):
    dataset = make_synthetic(num_users=30, num_items=30, mean_interactions=8, seed=3)
    owner = random_silos(30, silos, seed=1).client_of_user if silos else np.arange(30)
    data = ClientData.from_interactions(dataset.interactions, owner, int(owner.max()) + 1, num_items=30)
    model = build_model(name, options, 30, 30)
    ref = _run(model, data, FedAvgSettings(local=local, client_fraction=0.5, backend="reference"), rounds=2)
    vec = _run(model, data, FedAvgSettings(local=local, client_fraction=0.5, backend="vectorized"), rounds=2)
    for param in ref.params:
        torch.testing.assert_close(vec.params[param], ref.params[param], atol=1e-5, rtol=0)


def test_proximal_term_keeps_local_models_closer_and_mu_zero_is_plain_fedavg():
    dataset = make_synthetic(num_users=30, num_items=25, mean_interactions=10, seed=2)
    data = ClientData.from_interactions(dataset.interactions, np.zeros(30, dtype=np.int64), 1, num_items=25)
    model = build_model("mf", dict(dim=4), 30, 25)
    params = model.init_params(torch.Generator().manual_seed(0))
    cohort = np.array([0])

    def drift(mu: float) -> float:
        update = train_cohort_vectorized(model, params, data, cohort, LocalTraining(2, 0.05, 8, prox_mu=mu), 1, 0).update
        return float(sum(d.pow(2).sum() for d in [*update.row_deltas.values(), *update.dense_deltas.values()]))

    assert drift(5.0) < drift(1.0) < drift(0.0)
    plain = train_cohort_vectorized(model, params, data, cohort, LocalTraining(2, 0.05, 8), 1, 0)
    zero = train_cohort_vectorized(model, params, data, cohort, LocalTraining(2, 0.05, 8, prox_mu=0.0), 1, 0)
    for name in plain.update.row_deltas:
        assert torch.equal(plain.update.row_deltas[name], zero.update.row_deltas[name])
