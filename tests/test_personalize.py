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
