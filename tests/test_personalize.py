"""Personalisation by local fine-tuning: each user's copy is exactly its own client's local training."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedrec.data.synthetic import make_synthetic
from fedrec.federated.cohort import ClientData
from fedrec.federated.local import LocalTraining
from fedrec.federated.personalize import FINETUNE_ROUND, finetune, personal_rows, personal_scores
from fedrec.federated.reference import train_client
from fedrec.models.base import gather_rows
from fedrec.models.registry import build_model


@pytest.mark.parametrize("name, options", [("mf", dict(dim=4)), ("ncf", dict(variant="neumf", dim=4, layers=(8, 4), negatives=2))])
def test_finetuned_copy_equals_the_clients_own_training(name, options):
    dataset = make_synthetic(num_users=30, num_items=25, mean_interactions=8, seed=1)
    data = ClientData.from_interactions(dataset.interactions, np.arange(30), 30, num_items=25)
    model = build_model(name, options, 30, 25)
    params = model.init_params(torch.Generator().manual_seed(0))
    local = LocalTraining(epochs=2, lr=0.1, batch_size=3)
    personal = finetune(model, params, data, np.arange(30), local, seed=7)
    user = 4
    own = train_client(model, params, data, user, local, seed=7, round_index=FINETUNE_ROUND)
    items = torch.arange(25).reshape(1, -1)
    rows = personal_rows(model, params, personal, torch.tensor([user]), items)
    expected = gather_rows(model, params, torch.tensor([user]), items)  # one group of one user: (1, 1, ...)
    for k, item in enumerate(own.update.row_items.tolist()):
        for table, delta in own.update.row_deltas.items():
            expected[table][0, 0, item] = expected[table][0, 0, item] + delta[k]
    for table, delta in own.update.dense_deltas.items():
        expected[table] = params[table].unsqueeze(0) + delta
    for table, value in own.private_rows.items():
        expected[table] = value.unsqueeze(0)
    for table in rows:
        torch.testing.assert_close(rows[table], expected[table], atol=1e-5, rtol=0)
    scores = personal_scores(model, params, personal, torch.tensor([user]))
    torch.testing.assert_close(scores, model.predict(expected)[0], atol=1e-5, rtol=0)
    # fine-tuning changed this user's scores
    assert not torch.equal(scores, model.predict(gather_rows(model, params, torch.tensor([user]), items))[0])


def test_refit_private_rows_is_sgd_on_the_private_rows_only():
    # one client, one rating, one epoch: the refit is one SGD step on (p_u, b_u) with the item rows frozen
    from fedrec.federated.personalize import refit_private_rows
    from fedrec.models.mf import BiasedMF, MFConfig

    data = ClientData(offsets=np.array([0, 0, 1]), users=np.array([1]), items=np.array([2]),
                      targets=np.array([4.0], dtype=np.float32))
    model = BiasedMF(MFConfig(dim=3, l2=0.1, global_mean=3.0), num_users=2, num_items=4)
    params = model.init_params(torch.Generator().manual_seed(0))
    params["item_bias"] = torch.tensor([[0.0], [0.0], [0.3], [0.0]])
    lr = 0.05
    start = {name: value.clone() for name, value in params.items()}
    refitted = refit_private_rows(model, params, data, epochs=1, lr=lr, batch_size=8, seed=0)
    p, q, b_u = params["user_vec"][1], params["item_vec"][2], params["user_bias"][1, 0]
    error = 3.0 + b_u + 0.3 + p @ q - 4.0
    torch.testing.assert_close(refitted["user_vec"][1], p - lr * (2 * error * q + 2 * 0.1 * p))
    torch.testing.assert_close(refitted["user_bias"][1, 0], b_u - lr * (2 * error + 2 * 0.1 * b_u))
    torch.testing.assert_close(refitted["user_vec"][0], params["user_vec"][0])  # user 0 has no data: untouched
    for name in ("item_vec", "item_bias", "global_bias"):
        assert torch.equal(refitted[name], params[name])  # the shared model is not changed
    for name, value in start.items():
        assert torch.equal(params[name], value)  # the input is left as it was
